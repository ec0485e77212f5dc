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
// often many short lines: it is written a block at a time into room made
// for the block's worst case, byte by byte with a table lookup, which for
// output like `y\n` is cheaper than a copy per run of plain bytes
// (BenchmarkExecResponse1MB).
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	const block = 4096
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		end := min(i+block, len(s))
		dst = slices.Grow(dst, 6*(end-i)+6)
		out := dst[len(dst):cap(dst)]
		n := 0
		for i < end {
			b := s[i]
			if e := jsonEscape[b]; e == 0 {
				out[n] = b
				n++
				i++
				continue
			} else if e != 'U' {
				if e == 'u' {
					out[n], out[n+1], out[n+2], out[n+3], out[n+4], out[n+5] = '\\', 'u', '0', '0', hex[b>>4], hex[b&0xf]
					n += 6
				} else {
					out[n], out[n+1] = '\\', e
					n += 2
				}
				i++
				continue
			}
			// From 0x80: a UTF-8 sequence, which may reach past end (the
			// room for a block of 6-byte escapes holds it).
			r, size := utf8.DecodeRuneInString(s[i:])
			switch {
			case r == utf8.RuneError && size == 1:
				n += copy(out[n:], `\ufffd`)
			case r == '\u2028' || r == '\u2029':
				out[n], out[n+1], out[n+2], out[n+3], out[n+4], out[n+5] = '\\', 'u', '2', '0', '2', hex[r&0xf]
				n += 6
			default:
				for k := range size {
					out[n+k] = s[i+k]
				}
				n += size
			}
			i += size
		}
		dst = dst[:len(dst)+n]
	}
	return append(dst, '"')
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
