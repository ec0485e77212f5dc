package api

import (
	"strconv"
	"strings"
	"testing"
)

// text, which shares the buffer's memory, says what String says: the kept
// output, and the truncation note once output was dropped.
func TestCappedBufferText(t *testing.T) {
	for _, n := range []int{0, 1, 99, 100, 101, 250} {
		b := &cappedBuffer{limit: 100}
		for i := range n {
			b.Write([]byte{byte('a' + i%26)})
		}
		if got, want := b.text(), b.String(); got != want {
			t.Fatalf("%d bytes written: text %q, String %q", n, got, want)
		}
		if n > 100 && !strings.Contains(b.text(), "output truncated: "+strconv.Itoa(n-100)+" more bytes") {
			t.Fatalf("%d bytes written: no truncation note in %q", n, b.text())
		}
	}
}
