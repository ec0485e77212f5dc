package api

import (
	"bytes"
	"fmt"
	"unicode/utf8"
	"unsafe"
)

// cappedBuffer keeps the first limit bytes written to it and counts the
// rest, so a runaway command cannot make the server buffer without bound.
type cappedBuffer struct {
	limit   int
	buf     bytes.Buffer
	dropped int64
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	room := b.limit - b.buf.Len()
	if room >= len(p) {
		return b.buf.Write(p)
	}
	if room > 0 {
		b.buf.Write(p[:room])
	}
	b.dropped += int64(len(p) - max(room, 0))
	return len(p), nil
}

// text is String without a copy of the kept output when nothing was dropped
// (the usual case): it shares the buffer's memory, so b must not be written
// to again. The buffered exec answer is built from it once, at the end:
// one copy of a large output less.
func (b *cappedBuffer) text() string {
	if b.dropped != 0 || b.buf.Len() == 0 {
		return b.String()
	}
	kept := b.buf.Bytes()
	return unsafe.String(unsafe.SliceData(kept), len(kept))
}

func (b *cappedBuffer) String() string {
	if b.dropped == 0 {
		return b.buf.String()
	}
	return b.buf.String() + fmt.Sprintf("\n[stasis: output truncated: %d more bytes not shown; use /exec/stream for large output]\n", b.dropped)
}

// utf8Joiner turns a byte stream into JSON-safe text chunks without cutting
// a multi-byte character in half at a chunk boundary.
type utf8Joiner struct{ pending []byte }

func (j *utf8Joiner) push(p []byte) string {
	data := append(j.pending, p...)
	// Keep back an incomplete trailing rune (at most 3 bytes).
	cut := len(data)
	for i := len(data) - 1; i >= 0 && i >= len(data)-3; i-- {
		if utf8.RuneStart(data[i]) {
			if !utf8.FullRune(data[i:]) {
				cut = i
			}
			break
		}
	}
	j.pending = append([]byte(nil), data[cut:]...)
	return string(data[:cut])
}

func (j *utf8Joiner) flush() string {
	s := string(j.pending)
	j.pending = nil
	return s
}
