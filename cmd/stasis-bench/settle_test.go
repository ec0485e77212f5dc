package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/runtime/gvisor"
)

// The raw side's wait ends when the sandbox process closes the memory file
// it restores from, not on the pages metadata file beside it.
func TestHoldsPagesFile(t *testing.T) {
	dir := t.TempDir()
	meta, err := os.Create(filepath.Join(dir, "pages_meta.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer meta.Close()
	if gvisor.HoldsPagesFile(os.Getpid()) {
		t.Fatal("pages_meta.img counted as the pages file")
	}
	pages, err := os.Create(filepath.Join(dir, "pages.img"))
	if err != nil {
		t.Fatal(err)
	}
	if !gvisor.HoldsPagesFile(os.Getpid()) {
		t.Fatal("open pages.img not seen")
	}
	// runsc goes on reading an image that was deleted meanwhile.
	if err := os.Remove(pages.Name()); err != nil {
		t.Fatal(err)
	}
	if !gvisor.HoldsPagesFile(os.Getpid()) {
		t.Fatal("open, deleted pages.img not seen")
	}
	pages.Close()
	if gvisor.HoldsPagesFile(os.Getpid()) {
		t.Fatal("closed pages.img still seen")
	}
}

// The stasis side's wait ends when stasisd has removed the snapshot the
// sandbox was resumed from.
func TestSnapshotGone(t *testing.T) {
	b := &box{s: &server{dataDir: t.TempDir()}, ID: "sb1"}
	if err := b.snapshotGone(); err != nil {
		t.Fatalf("no snapshots directory yet: %v", err)
	}
	snap := filepath.Join(b.s.dataDir, "snapshots", b.ID, "snap-1")
	if err := os.MkdirAll(snap, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := b.snapshotGone(); err == nil {
		t.Fatal("snapshot on disk, reported gone")
	}
	if err := os.RemoveAll(snap); err != nil {
		t.Fatal(err)
	}
	if err := b.snapshotGone(); err != nil {
		t.Fatalf("snapshot removed: %v", err)
	}
}
