package fsutil

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// MostlyCached samples a large file instead of scanning all of it (see
// cachedSample): the sample must still tell a file mostly in the page cache
// from one mostly not, whichever part of it is cached.
func TestMostlyCachedSamplesLargeFile(t *testing.T) {
	size := int64(4*sampleWindows*sampleWindow + 12345) // sampled, not a multiple of a page
	path := filepath.Join(t.TempDir(), "pages.img")
	if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	evict := func() {
		f.Sync()
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
	}
	// No readahead: the cached part is exactly what was read.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	read := func(off, n int64) {
		for end := off + n; off < end; off += int64(len(buf)) {
			if _, err := f.ReadAt(buf[:min(int64(len(buf)), end-off)], off); err != nil && err != io.EOF {
				t.Fatal(err)
			}
		}
	}
	for _, c := range []struct {
		what    string
		off, n  int64
		want    bool
		minFrac float64
		maxFrac float64
	}{
		{"evicted", 0, 0, false, 0, 0.1},
		{"all read", 0, size, true, 0.9, 1},
		{"first quarter read", 0, size / 4, false, 0.15, 0.35},
		{"last three quarters read", size / 4, size - size/4, true, 0.65, 0.85},
	} {
		evict()
		read(c.off, c.n)
		if got := MostlyCached(f, size); got != c.want {
			t.Errorf("%s: MostlyCached = %v, want %v", c.what, got, c.want)
		}
		if frac, ok := cachedSample(f, size); !ok || frac < c.minFrac || frac > c.maxFrac {
			t.Errorf("%s: sampled fraction %.2f (ok %v), want %.2f-%.2f", c.what, frac, ok, c.minFrac, c.maxFrac)
		}
		if frac, ok := CachedFraction(f, size); !ok || frac < c.minFrac || frac > c.maxFrac {
			t.Errorf("%s: CachedFraction %.2f (ok %v), want %.2f-%.2f", c.what, frac, ok, c.minFrac, c.maxFrac)
		}
	}
}
