package api

import (
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// appendJSONString appends s to dst as a JSON string, exactly as
// encoding/json does with HTML escaping off (invalid UTF-8 becomes U+FFFD;
// U+2028 and U+2029 are escaped). A command's large output is mostly ASCII,
// often many short lines: it is written byte by byte with a table lookup
// into dst's spare capacity (sized by jsonSizeHint), which for output like
// `y\n` costs a few times less than a copy call per run of plain bytes
// (BenchmarkExecResponse1MB); dst grows only when its capacity runs out.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := len(dst)
	out := dst[start:cap(dst)]
	n := 0
	for i := 0; i < len(s); {
		b := s[i]
		e := jsonEscape[b]
		if e == 0 && n < len(out) {
			out[n] = b
			n++
			i++
			continue
		}
		if e != 0 && e != 'u' && e != 'U' && n+2 <= len(out) { // a two-byte escape
			out[n], out[n+1] = '\\', e
			n += 2
			i++
			continue
		}
		if e == 'U' {
			// From a multi-byte character on, the run of bytes that need
			// no escape is copied whole.
			j := i
			for j < len(s) {
				if c := s[j]; c < utf8.RuneSelf {
					if jsonEscape[c] != 0 {
						break
					}
					j++
					continue
				}
				r, size := utf8.DecodeRuneInString(s[j:])
				if size == 1 || r == '\u2028' || r == '\u2029' {
					break
				}
				j += size
			}
			if j > i && n+(j-i) <= len(out) {
				n += copy(out[n:], s[i:j])
				i = j
				continue
			}
		}
		// The rest, and any write that needs more room.
		var esc [6]byte
		m, size := 0, 1
		switch e {
		case 0:
			esc[0], m = b, 1
		case 'u':
			esc, m = [6]byte{'\\', 'u', '0', '0', hex[b>>4], hex[b&0xf]}, 6
		case 'U':
			var r rune
			r, size = utf8.DecodeRuneInString(s[i:])
			switch {
			case r == utf8.RuneError && size == 1:
				m = copy(esc[:], `\ufffd`)
			case r == '\u2028' || r == '\u2029':
				esc, m = [6]byte{'\\', 'u', '2', '0', '2', hex[r&0xf]}, 6
			default:
				m = copy(esc[:], s[i:i+size])
			}
		default:
			esc[0], esc[1], m = '\\', e, 2
		}
		if n+m > len(out) {
			dst = slices.Grow(dst[:start+n], m+len(s)-i)
			out = dst[start:cap(dst)]
		}
		n += copy(out[n:], esc[:m])
		i += size
	}
	return append(dst[:start+n], '"')
}

// jsonEscape[b] is 0 for a byte that goes into a JSON string as it is, the
// letter of its two-character escape, 'u' for a \u00XX escape, and 'U' for
// the bytes from 0x80, which are checked as UTF-8.
var jsonEscape = func() (t [256]byte) {
	for b := 0; b < 0x20; b++ {
		t[b] = 'u'
	}
	t['"'], t['\\'] = '"', '\\'
	t['\n'], t['\r'], t['\t'], t['\b'], t['\f'] = 'n', 'r', 't', 'b', 'f'
	for b := utf8.RuneSelf; b < 256; b++ {
		t[b] = 'U'
	}
	return t
}()

// jsonSizeHint is about the length of r's JSON, to allocate it at once: a
// newline, the most common character to escape, takes two bytes (output of
// many short lines would otherwise make appendJSON copy it all once more).
func (r *execResponse) jsonSizeHint() int {
	n := 128
	for _, s := range []string{r.Stdout, r.Stderr, r.Error} {
		n += len(s) + strings.Count(s, "\n")
	}
	return n
}

// appendJSON is the JSON of an exec response, as encoding/json writes it
// (fields in order, empty optional ones left out), built with
// appendJSONString.
func (r *execResponse) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"stdout":`...)
	dst = appendJSONString(dst, r.Stdout)
	dst = append(dst, `,"stderr":`...)
	dst = appendJSONString(dst, r.Stderr)
	dst = append(dst, `,"exit_code":`...)
	dst = strconv.AppendInt(dst, int64(r.ExitCode), 10)
	if r.Error != "" {
		dst = append(dst, `,"error":`...)
		dst = appendJSONString(dst, r.Error)
	}
	if r.OutputEncoding != "" {
		dst = append(dst, `,"output_encoding":`...)
		dst = appendJSONString(dst, r.OutputEncoding)
	}
	if r.StdoutTruncatedBytes != 0 {
		dst = append(dst, `,"stdout_truncated_bytes":`...)
		dst = strconv.AppendInt(dst, r.StdoutTruncatedBytes, 10)
	}
	if r.StderrTruncatedBytes != 0 {
		dst = append(dst, `,"stderr_truncated_bytes":`...)
		dst = strconv.AppendInt(dst, r.StderrTruncatedBytes, 10)
	}
	return append(dst, '}', '\n')
}
