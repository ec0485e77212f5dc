package fsutil

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MostlyCached reports whether at least half of the first size bytes of f
// are in the page cache (mincore over a mapping that is never touched). It
// says true when it cannot tell, since reading through the page cache
// always works.
func MostlyCached(f *os.File, size int64) bool {
	frac, ok := CachedFraction(f, size)
	return !ok || frac >= 0.5
}

// CachedFraction is the share of the first size bytes of f that are in the
// page cache (mincore over a mapping that is never touched); ok is false
// when it cannot tell.
func CachedFraction(f *os.File, size int64) (frac float64, ok bool) {
	if size <= 0 {
		return 1, true
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, false
	}
	defer unix.Munmap(m)
	page := int64(os.Getpagesize())
	vec := make([]byte, (size+page-1)/page)
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return 0, false
	}
	resident := 0
	for _, v := range vec {
		resident += int(v & 1)
	}
	return float64(resident) / float64(len(vec)), true
}
