package store

import "testing"

func TestIsIDAcceptsNewIDsOnly(t *testing.T) {
	for range 100 {
		if id := NewID(); !IsID(id) {
			t.Fatalf("IsID(%q) = false for a NewID", id)
		}
	}
	for _, bad := range []string{"", "x", "../../etc/passwd", "0123456789abcdef0123456789abcdef0123",
		"01234567-89ab-cdef-0123-456789ABCDEF", "01234567-89ab-cdef-0123_456789abcdef", "01234567-89ab-cdef-0123-456789abcdef0"} {
		if IsID(bad) {
			t.Errorf("IsID(%q) = true", bad)
		}
	}
}
