package objstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/objstore"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// sink records the states an uploader reports, as the store would.
type sink struct {
	mu     sync.Mutex
	states []string // "id epoch state: detail"
}

func (s *sink) SetSnapshotUpload(ctx context.Context, id string, epoch int64, state, detail string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.states = append(s.states, id+" "+state+": "+detail)
	return nil
}

func (s *sink) all() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.states, "\n")
}

// snapshotDir writes a snapshot-like directory: a big memory file (several
// multipart parts at 5 MiB), small files and a subdirectory.
func snapshotDir(t *testing.T, bigBytes int) string {
	t.Helper()
	dir := t.TempDir()
	big := make([]byte, bigBytes)
	rand.Read(big)
	files := map[string][]byte{
		"pages.img": big, "checkpoint.img": []byte("state"), "stasis-manifest.json": []byte("{}"),
		"rootfs/upper.tar": bytes.Repeat([]byte("x"), 4096),
	}
	for name, b := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func newUploader(t *testing.T, blobs objstore.Blobs, st objstore.StatusSink) *objstore.Uploader {
	u := objstore.NewUploader(objstore.UploaderConfig{Blobs: blobs, Status: st,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 400 * time.Millisecond})
	t.Cleanup(u.Close)
	return u
}

// waitState waits (without a time assertion: until the test's deadline)
// for kind/id's upload to reach state.
func waitState(t *testing.T, u *objstore.Uploader, kind, id, state string) objstore.Status {
	t.Helper()
	for {
		st, _ := u.State(kind, id)
		if st.State == state {
			return st
		}
		if st.State == objstore.StateFailed && !strings.Contains(st.Detail, "retrying") && state != objstore.StateFailed {
			t.Fatalf("upload failed for good: %s", st.Detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sameTree(t *testing.T, want, got string) {
	t.Helper()
	n := 0
	filepath.WalkDir(want, func(p string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		a, _ := os.ReadFile(p)
		b, err := os.ReadFile(filepath.Join(got, rel))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs after the round trip (err %v)", rel, err)
		}
		n++
		return nil
	})
	if n == 0 {
		t.Fatal("no files compared")
	}
}

func s3Blobs(t *testing.T) (*testenv.S3, *objstore.S3) {
	srv := testenv.StartS3(t)
	b := srv.Blobs(t, "cluster-a")
	b.PartSize = 5 << 20 // S3's smallest part: a 12 MiB file goes in 3 parts
	return srv, b
}

func TestUploadThenDownloadRoundTrip(t *testing.T) {
	_, s3b := s3Blobs(t)
	local, err := objstore.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for name, blobs := range map[string]objstore.Blobs{"s3": s3b, "local": local} {
		t.Run(name, func(t *testing.T) {
			dir := snapshotDir(t, 12<<20)
			st := &sink{}
			u := newUploader(t, blobs, st)
			ref := objstore.Ref{Kind: objstore.KindSandbox, ID: "sb1", Snap: "snap-1"}
			if err := u.Upload(ref, 7, dir); err != nil {
				t.Fatal(err)
			}
			waitState(t, u, ref.Kind, ref.ID, objstore.StatePortable)
			m, err := objstore.ReadManifest(context.Background(), blobs, ref)
			if err != nil {
				t.Fatalf("manifest not in the store once portable: %v", err)
			}
			if len(m.Files) != 4 || m.Bytes() < 12<<20 {
				t.Fatalf("manifest lists %d files, %d bytes", len(m.Files), m.Bytes())
			}
			if got := st.all(); !strings.Contains(got, "sb1 pending") || !strings.HasSuffix(got, "sb1 portable: ") {
				t.Fatalf("status reports:\n%s", got)
			}
			latest, err := objstore.Latest(context.Background(), blobs, ref.Kind, ref.ID)
			if err != nil || latest.Ref() != ref {
				t.Fatalf("Latest = %v, %v", latest, err)
			}
			cache, err := objstore.NewCache(blobs, t.TempDir(), 0)
			if err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(t.TempDir(), "restore")
			if err := cache.Materialize(context.Background(), ref, dst); err != nil {
				t.Fatal(err)
			}
			sameTree(t, dir, dst)
		})
	}
}

func TestNewerSnapshotReplacesOlderInStore(t *testing.T) {
	_, blobs := s3Blobs(t)
	u := newUploader(t, blobs, nil)
	ctx := context.Background()
	one := objstore.Ref{Kind: objstore.KindSandbox, ID: "sb2", Snap: "snap-1"}
	two := objstore.Ref{Kind: objstore.KindSandbox, ID: "sb2", Snap: "snap-2"}
	u.Upload(one, 1, snapshotDir(t, 1<<20))
	waitState(t, u, one.Kind, one.ID, objstore.StatePortable)
	u.Upload(two, 1, snapshotDir(t, 1<<20))
	waitState(t, u, two.Kind, two.ID, objstore.StatePortable)
	u.Wait(ctx, two.Kind, two.ID) // the old snapshot's clean-up follows the state
	keys, err := blobs.List(ctx, one.Prefix())
	if err != nil || len(keys) != 0 {
		t.Fatalf("old snapshot's objects left: %v %v", keys, err)
	}
	if m, err := objstore.Latest(ctx, blobs, two.Kind, two.ID); err != nil || m.Ref() != two {
		t.Fatalf("Latest = %v, %v", m, err)
	}
}

// stopAfterFirstPut stops the S3 server once the first object is in, so the
// upload is cut halfway.
type stopAfterFirstPut struct {
	objstore.Blobs
	once sync.Once
	stop func()
}

func (s *stopAfterFirstPut) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	err := s.Blobs.Put(ctx, key, r, size)
	s.once.Do(s.stop)
	return err
}

func TestUploadInterruptedRetriesUntilStoreReturns(t *testing.T) {
	srv, blobs := s3Blobs(t)
	st := &sink{}
	u := newUploader(t, &stopAfterFirstPut{Blobs: blobs, stop: srv.Stop}, st)
	ref := objstore.Ref{Kind: objstore.KindSandbox, ID: "sb3", Snap: "snap-1"}
	dir := snapshotDir(t, 12<<20)
	u.Upload(ref, 3, dir)

	failed := waitState(t, u, ref.Kind, ref.ID, objstore.StateFailed)
	if !strings.Contains(failed.Detail, "retrying in") {
		t.Fatalf("failed state does not say it retries: %q", failed.Detail)
	}
	// Wait for a second failed attempt: it backs off and tries again.
	for st, _ := u.State(ref.Kind, ref.ID); st.Attempts < 2; st, _ = u.State(ref.Kind, ref.ID) {
		time.Sleep(20 * time.Millisecond)
	}
	// Not portable meanwhile: the manifest never reached the bucket.
	if _, err := os.Stat(filepath.Join(srv.Dir(), srv.Bucket, "cluster-a", ref.String(), objstore.ManifestKey)); err == nil {
		t.Fatal("manifest is in the bucket although the upload was cut")
	}
	if !strings.Contains(st.all(), "sb3 failed: attempt 1 failed") {
		t.Fatalf("status sink not told of the failure:\n%s", st.all())
	}

	srv.Start()
	waitState(t, u, ref.Kind, ref.ID, objstore.StatePortable)
	cache, _ := objstore.NewCache(blobs, t.TempDir(), 0)
	got, err := cache.Fetch(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, dir, got)
}

func TestDownloadRefusesCorruptObject(t *testing.T) {
	srv, blobs := s3Blobs(t)
	u := newUploader(t, blobs, nil)
	ref := objstore.Ref{Kind: objstore.KindSaved, ID: "snapA", Snap: "snap-1"}
	u.Upload(ref, 0, snapshotDir(t, 1<<20))
	waitState(t, u, ref.Kind, ref.ID, objstore.StatePortable)

	// Flip bytes of the memory file where the S3 server keeps it.
	obj := filepath.Join(srv.Dir(), srv.Bucket, "cluster-a", ref.String(), "pages.img")
	f, err := os.OpenFile(obj, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("corrupted!"), 1000)
	f.Close()

	cacheDir := t.TempDir()
	cache, _ := objstore.NewCache(blobs, cacheDir, 0)
	_, err = cache.Fetch(context.Background(), ref)
	if !errors.Is(err, objstore.ErrCorrupt) || !strings.Contains(err.Error(), "pages.img") {
		t.Fatalf("Fetch of a corrupted snapshot: %v, want ErrCorrupt naming pages.img", err)
	}
	if err := cache.Materialize(context.Background(), ref, filepath.Join(t.TempDir(), "x")); !errors.Is(err, objstore.ErrCorrupt) {
		t.Fatalf("Materialize of a corrupted snapshot: %v", err)
	}
	if cache.Bytes() != 0 {
		t.Fatalf("cache keeps %d bytes of a refused snapshot", cache.Bytes())
	}
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	blobs, err := objstore.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	u := newUploader(t, blobs, nil)
	refs := map[string]objstore.Ref{}
	for _, id := range []string{"a", "b", "c"} {
		refs[id] = objstore.Ref{Kind: objstore.KindTemplate, ID: id, Snap: "snap-1"}
		u.Upload(refs[id], 0, snapshotDir(t, 1<<20))
		waitState(t, u, objstore.KindTemplate, id, objstore.StatePortable)
	}
	const limit = 2<<20 + 512<<10 // room for two snapshots of ~1 MiB
	cacheDir := t.TempDir()
	cache, _ := objstore.NewCache(blobs, cacheDir, limit)
	ctx := context.Background()
	fetch := func(id string) {
		if _, err := cache.Fetch(ctx, refs[id]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // distinct use times
	}
	fetch("a")
	fetch("b")
	fetch("a") // a is now more recent than b
	fetch("c") // over the limit: b goes
	cached := func(id string) bool {
		_, err := os.Stat(filepath.Join(cacheDir, objstore.KindTemplate, id, "snap-1", "pages.img"))
		return err == nil
	}
	if !cached("a") || cached("b") || !cached("c") {
		t.Fatalf("cached after a,b,a,c with room for two: a=%v b=%v c=%v, want a and c", cached("a"), cached("b"), cached("c"))
	}
	if n := cache.Bytes(); n > limit {
		t.Fatalf("cache holds %d bytes, limit %d", n, limit)
	}
	// A materialized copy survives eviction of its cache entry.
	dst := filepath.Join(t.TempDir(), "a")
	if err := cache.Materialize(ctx, refs["a"], dst); err != nil {
		t.Fatal(err)
	}
	fetch("b")
	fetch("c") // evicts a
	if cached("a") {
		t.Fatal("a should have been evicted")
	}
	if _, err := os.Stat(filepath.Join(dst, "pages.img")); err != nil {
		t.Fatalf("materialized copy lost with the cache entry: %v", err)
	}
}

func TestDeleteRemovesOwnersObjects(t *testing.T) {
	_, blobs := s3Blobs(t)
	u := newUploader(t, blobs, nil)
	ctx := context.Background()
	gone := objstore.Ref{Kind: objstore.KindSandbox, ID: "del", Snap: "snap-1"}
	kept := objstore.Ref{Kind: objstore.KindSandbox, ID: "keep", Snap: "snap-1"}
	for _, r := range []objstore.Ref{gone, kept} {
		u.Upload(r, 0, snapshotDir(t, 6<<20))
		waitState(t, u, r.Kind, r.ID, objstore.StatePortable)
	}
	u.Delete(gone.Kind, gone.ID)
	if err := u.Wait(ctx, gone.Kind, gone.ID); err != nil {
		t.Fatal(err)
	}
	if keys, err := blobs.List(ctx, "sandboxes/del/"); err != nil || len(keys) != 0 {
		t.Fatalf("objects left after delete: %v %v", keys, err)
	}
	if _, ok := u.State(gone.Kind, gone.ID); ok {
		t.Fatal("a deleted snapshot still has an upload state")
	}
	if _, err := objstore.ReadManifest(ctx, blobs, kept); err != nil {
		t.Fatalf("another sandbox's snapshot went too: %v", err)
	}
}

func TestOpenNamesWhatIsWrongWithTheURL(t *testing.T) {
	for url, want := range map[string]string{
		"ftp://bucket/x":  "unsupported scheme",
		"s3:///prefix":    "no bucket",
		"file://host/dir": "want file:///absolute/dir",
		"/plain/path":     "unsupported scheme",
	} {
		if _, err := objstore.Open(context.Background(), url); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q) = %v, want an error saying %q", url, err, want)
		}
	}
	dir := t.TempDir()
	b, err := objstore.Open(context.Background(), "file://"+dir)
	if err != nil || b.String() != "file://"+dir {
		t.Fatalf("Open(file://%s) = %v, %v", dir, b, err)
	}
}
