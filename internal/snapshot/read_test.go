package snapshot

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/fsutil"
)

// A large checkpoint file that is not in the page cache (as runsc leaves
// one written with O_DIRECT) is read back from the disk directly: its
// checksum must be the one of its bytes, whatever its size's alignment.
func TestSealLargeUncachedFile(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, directMinSize+3*directChunk+12345) // not a multiple of any block
	rand.Read(data)
	path := filepath.Join(dir, "pages.img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	evict(t, path)
	f, _ := os.Open(path)
	cached := fsutil.MostlyCached(f, int64(len(data)))
	f.Close()
	if cached {
		t.Fatal("the file is reported cached right after it was evicted")
	}
	size, err := Seal(dir)
	if err != nil {
		t.Fatal(err)
	}
	f, _ = os.Open(path)
	cached = fsutil.MostlyCached(f, int64(len(data)))
	f.Close()
	if cached {
		t.Fatal("sealing read the file through the page cache, not directly")
	}
	if size != int64(len(data)) {
		t.Fatalf("size = %d, want %d", size, len(data))
	}
	var m manifest
	b, _ := os.ReadFile(filepath.Join(dir, ManifestName))
	json.Unmarshal(b, &m)
	want := crc32.Checksum(data, castagnoli)
	wantHex := hex.EncodeToString([]byte{byte(want >> 24), byte(want >> 16), byte(want >> 8), byte(want)})
	if got := m.Files["pages.img"]; got.CRC32C != wantHex || got.Size != int64(len(data)) {
		t.Fatalf("manifest entry = %+v, want size %d crc %s", got, len(data), wantHex)
	}
	if err := Verify(dir); err != nil {
		t.Fatal(err)
	}
	// Damage on the disk, not in the cache, is caught too.
	data[len(data)-1] ^= 1
	os.WriteFile(path, data, 0o600)
	evict(t, path)
	if err := Verify(dir); err == nil {
		t.Fatal("a changed byte at the end went unnoticed")
	}
}

func evict(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Sync()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}
