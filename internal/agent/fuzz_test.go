package agent

import (
	"path"
	"strings"
	"testing"
)

// FuzzCleanPath: whatever a client sends as a file path, the agent either
// rejects it or gets an absolute, clean path without "..".
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"/tmp/a", "tmp/a", "/tmp/../etc/passwd", "/", "//x//y/", "/a/./b", "", "/..", "/a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got, err := cleanPath(p)
		if err != nil {
			return
		}
		if !strings.HasPrefix(got, "/") || path.Clean(got) != got {
			t.Fatalf("cleanPath(%q) = %q: not absolute and clean", p, got)
		}
		for _, seg := range strings.Split(p, "/") {
			if seg == ".." {
				t.Fatalf("cleanPath(%q) accepted a path with ..", p)
			}
		}
		if strings.ContainsRune(got, 0) {
			t.Fatalf("cleanPath(%q) kept a NUL byte", p)
		}
	})
}
