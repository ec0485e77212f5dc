package api

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// appendJSONString appends s to dst as a JSON string, exactly as
// encoding/json does with HTML escaping off (invalid UTF-8 becomes U+FFFD;
// U+2028 and U+2029 are escaped). It copies runs of plain ASCII whole, which
// makes a command's large output (mostly text, often many newlines) several
// times cheaper to encode than through encoding/json's reflection.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

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
