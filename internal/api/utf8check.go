package api

import (
	"strconv"
	"unicode/utf8"
)

// badUTF8 finds the first string in a syntactically valid JSON document
// that encoding/json would silently rewrite: raw bytes that are not UTF-8,
// or a \u escape of a lone UTF-16 surrogate (both become U+FFFD). It
// returns where that string is: a field path such as "metadata.env" or
// "build_spec.steps[2].run", and whether the string is an object key
// there rather than the value.
func badUTF8(doc []byte) (path string, isKey, found bool) {
	s := utf8Scanner{b: doc}
	path, isKey, found = s.value("")
	return path, isKey, found
}

type utf8Scanner struct {
	b []byte
	i int
}

func (s *utf8Scanner) skipSpace() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *utf8Scanner) value(path string) (string, bool, bool) {
	s.skipSpace()
	if s.i >= len(s.b) {
		return "", false, false
	}
	switch s.b[s.i] {
	case '{':
		s.i++
		for {
			s.skipSpace()
			if s.i >= len(s.b) || s.b[s.i] == '}' {
				s.i++
				return "", false, false
			}
			if s.b[s.i] == ',' {
				s.i++
				continue
			}
			key, ok := s.str()
			if !ok {
				return path, true, true
			}
			sub := key
			if path != "" {
				sub = path + "." + key
			}
			s.skipSpace()
			s.i++ // ':'
			if p, k, bad := s.value(sub); bad {
				return p, k, bad
			}
		}
	case '[':
		s.i++
		for n := 0; ; {
			s.skipSpace()
			if s.i >= len(s.b) || s.b[s.i] == ']' {
				s.i++
				return "", false, false
			}
			if s.b[s.i] == ',' {
				s.i++
				n++
				continue
			}
			if p, k, bad := s.value(path + "[" + strconv.Itoa(n) + "]"); bad {
				return p, k, bad
			}
		}
	case '"':
		if _, ok := s.str(); !ok {
			return path, false, true
		}
		return "", false, false
	default: // number, true, false, null
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return "", false, false
			}
			s.i++
		}
		return "", false, false
	}
}

// str consumes a JSON string and returns its raw contents, and false if
// they are not valid UTF-8 or escape a lone surrogate. The scan always ends
// after the closing quote.
func (s *utf8Scanner) str() (string, bool) {
	s.i++ // opening quote
	start, ok := s.i, true
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			raw := string(s.b[start:s.i])
			s.i++
			return raw, ok
		case c == '\\':
			if s.i+1 < len(s.b) && s.b[s.i+1] == 'u' {
				r := hex4(s.b[s.i+2:])
				s.i += 6
				switch {
				case r >= 0xD800 && r < 0xDC00: // must be followed by a low surrogate
					if s.i+1 < len(s.b) && s.b[s.i] == '\\' && s.b[s.i+1] == 'u' {
						if lo := hex4(s.b[s.i+2:]); lo >= 0xDC00 && lo < 0xE000 {
							s.i += 6
							continue
						}
					}
					ok = false
				case r >= 0xDC00 && r < 0xE000:
					ok = false
				}
				continue
			}
			s.i += 2
		case c < utf8.RuneSelf:
			s.i++
		default:
			r, size := utf8.DecodeRune(s.b[s.i:])
			if r == utf8.RuneError && size == 1 {
				ok = false
			}
			s.i += size
		}
	}
	return string(s.b[start:]), ok
}

// hex4 decodes four hex digits, or returns -1.
func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	n, err := strconv.ParseUint(string(b[:4]), 16, 32)
	if err != nil {
		return -1
	}
	return rune(n)
}
