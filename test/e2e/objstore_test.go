package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/objstore"
	"github.com/stasis-sandbox/stasis/internal/snapshot"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// portableInfo is the part of a sandbox response about portable snapshots.
type portableInfo struct {
	Status string `json:"status"`
	Pause  *struct {
		Durable  bool  `json:"durable"`
		Portable *bool `json:"portable"`
		Upload   *struct {
			State  string `json:"state"`
			Detail string `json:"detail"`
		} `json:"upload"`
	} `json:"pause"`
}

func getPortable(t *testing.T, srv *testenv.Server, id string) portableInfo {
	t.Helper()
	var info portableInfo
	if err := srv.Do("GET", "/sandboxes/"+id, nil, &info); err != nil {
		t.Fatal(err)
	}
	if info.Status != "paused" || info.Pause == nil || info.Pause.Portable == nil || info.Pause.Upload == nil {
		t.Fatalf("paused sandbox with --snapshot-url lacks pause.portable/pause.upload: %+v", info)
	}
	return info
}

// waitUpload waits until the paused sandbox's upload state satisfies ok.
func waitUpload(t *testing.T, srv *testenv.Server, id, want string, ok func(portableInfo) bool) portableInfo {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		info := getPortable(t, srv, id)
		if ok(info) {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: upload stays %+v", want, *info.Pause.Upload)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func startWithObjectStore(t *testing.T) (*testenv.Server, *testenv.S3) {
	s3 := testenv.StartS3(t)
	srv := testenv.StartServer(t, testenv.WithEnv(s3.Env()...), testenv.WithArgs("--snapshot-url", s3.URL("e2e")))
	return srv, s3
}

func pauseOK(t *testing.T, srv *testenv.Server, id string) {
	t.Helper()
	var info sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+id+"/pause", nil, &info); err != nil || info.Status != "paused" {
		t.Fatalf("pause: %v %+v", err, info)
	}
}

// After a pause the snapshot goes to the object store: the sandbox becomes
// portable, the bucket holds a complete, checksummed copy that downloads
// into a valid checkpoint, and deleting the sandbox deletes its objects.
func TestSnapshotUploadedAfterPause(t *testing.T) {
	srv, s3 := startWithObjectStore(t)
	c, _ := createMinimal(t, srv, "portable")
	c.writeFile("/tmp/hello", []byte("from before the pause"))
	pauseOK(t, srv, c.id)

	info := waitUpload(t, srv, c.id, "portable", func(i portableInfo) bool { return *i.Pause.Portable })
	if info.Pause.Upload.State != "portable" || !info.Pause.Durable {
		t.Fatalf("portable, but %+v", info.Pause)
	}

	ctx := context.Background()
	blobs := s3.Blobs(t, "e2e")
	m, err := objstore.Latest(ctx, blobs, objstore.KindSandbox, c.id)
	if err != nil {
		t.Fatalf("no manifest in the bucket although portable: %v", err)
	}
	cache, err := objstore.NewCache(blobs, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "snap")
	if err := cache.Materialize(ctx, m.Ref(), dst); err != nil {
		t.Fatal(err)
	}
	// The downloaded copy passes the local snapshot's own checks, as a
	// restore on another node would require.
	if err := snapshot.Verify(dst); err != nil {
		t.Fatalf("downloaded snapshot is not a valid checkpoint: %v", err)
	}

	// A saved snapshot goes to the store the same way, and leaves it with
	// its deletion.
	var saved struct{ ID string }
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/snapshots", map[string]any{"name": "kept"}, &saved); err != nil || saved.ID == "" {
		t.Fatalf("save snapshot: %v %+v", err, saved)
	}
	waitObjects(t, blobs, objstore.KindSaved, saved.ID, true)
	if err := srv.Do("DELETE", "/snapshots/"+saved.ID, nil, nil); err != nil {
		t.Fatal(err)
	}
	waitObjects(t, blobs, objstore.KindSaved, saved.ID, false)

	var resumed sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/resume", nil, &resumed); err != nil || resumed.Status != "active" {
		t.Fatalf("resume: %v %+v", err, resumed)
	}
	c.token = resumed.AccessToken
	if got := string(c.readFile("/tmp/hello")); got != "from before the pause" {
		t.Fatalf("after resume /tmp/hello = %q", got)
	}

	if err := srv.Do("DELETE", "/sandboxes/"+c.id, nil, nil); err != nil {
		t.Fatal(err)
	}
	waitObjects(t, blobs, objstore.KindSandbox, c.id, false)
}

// waitObjects waits until kind/id has a complete snapshot in the store
// (present) or no objects at all (!present).
func waitObjects(t *testing.T, blobs objstore.Blobs, kind, id string, present bool) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := objstore.Latest(ctx, blobs, kind, id)
		keys, lerr := blobs.List(ctx, kind+"/"+id+"/")
		if present && err == nil || !present && lerr == nil && len(keys) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s: want present=%v, store has %v (%v, %v)", kind, id, present, keys, err, lerr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// With the object store down a pause still completes locally; the upload
// fails and says it retries, the sandbox is not portable but resumes on its
// own node; once the store is back the upload completes by itself.
func TestSnapshotUploadWhileStoreDown(t *testing.T) {
	srv, s3 := startWithObjectStore(t)
	c, _ := createMinimal(t, srv, "store-down")
	c.writeFile("/tmp/state", []byte("one"))
	s3.Stop()
	pauseOK(t, srv, c.id)
	info := waitUpload(t, srv, c.id, "a failed attempt", func(i portableInfo) bool { return i.Pause.Upload.State == "failed" })
	if *info.Pause.Portable || !info.Pause.Durable || !strings.Contains(info.Pause.Upload.Detail, "retrying in") {
		t.Fatalf("store down: %+v, upload %+v", info.Pause, *info.Pause.Upload)
	}

	// Not portable, yet it resumes where it is.
	var resumed sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/resume", nil, &resumed); err != nil || resumed.Status != "active" {
		t.Fatalf("resume on the owner while not portable: %v %+v", err, resumed)
	}
	c.token = resumed.AccessToken
	c.writeFile("/tmp/state", []byte("two"))
	pauseOK(t, srv, c.id)
	waitUpload(t, srv, c.id, "a failed attempt", func(i portableInfo) bool { return i.Pause.Upload.State == "failed" })

	s3.Start()
	info = waitUpload(t, srv, c.id, "portable", func(i portableInfo) bool { return *i.Pause.Portable })
	if info.Pause.Upload.State != "portable" {
		t.Fatalf("portable but upload %+v", *info.Pause.Upload)
	}
	// The bucket holds the second pause's snapshot, and only it.
	ctx := context.Background()
	blobs := s3.Blobs(t, "e2e")
	m, err := objstore.Latest(ctx, blobs, objstore.KindSandbox, c.id)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := blobs.List(ctx, objstore.KindSandbox+"/"+c.id+"/")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, m.Ref().Prefix()) {
			t.Errorf("object %s is not of the latest snapshot %s", k, m.Ref())
		}
	}
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/resume", nil, &resumed); err != nil || resumed.Status != "active" {
		t.Fatalf("resume: %v %+v", err, resumed)
	}
	c.token = resumed.AccessToken
	if got := string(c.readFile("/tmp/state")); got != "two" {
		t.Fatalf("after resume /tmp/state = %q, want two", got)
	}
}

// A paused sandbox whose local snapshot is gone (as on a node that did not
// pause it) resumes from the object store's copy: downloaded, verified,
// restored, and its processes carry on.
func TestResumeDownloadsSnapshotWhenLocalCopyIsGone(t *testing.T) {
	srv, _ := startWithObjectStore(t)
	c, _ := createMinimal(t, srv, "from-store")
	c.writeFile("/tmp/hello", []byte("kept in the bucket"))
	startCounter(c)
	before := waitCount(t, c, 3)
	pauseOK(t, srv, c.id)
	waitPauseState(t, srv, c.id, true, false)
	waitUpload(t, srv, c.id, "portable", func(i portableInfo) bool { return *i.Pause.Portable })

	local := filepath.Join(srv.DataDir(), "snapshots", c.id)
	snaps, err := filepath.Glob(filepath.Join(local, "snap-*"))
	if err != nil || len(snaps) != 1 {
		t.Fatalf("local snapshots: %v %v", snaps, err)
	}
	if err := os.RemoveAll(snaps[0]); err != nil {
		t.Fatal(err)
	}

	var resumed sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/resume", nil, &resumed); err != nil || resumed.Status != "active" {
		t.Fatalf("resume from the object store: %v %+v", err, resumed)
	}
	c.token = resumed.AccessToken
	if got := string(c.readFile("/tmp/hello")); got != "kept in the bucket" {
		t.Fatalf("after resume /tmp/hello = %q", got)
	}
	now := readCount(t, c)
	if now < before {
		t.Fatalf("counter went back from %d to %d", before, now)
	}
	waitCount(t, c, now+2) // the process runs on
	if !strings.Contains(srv.Logs(), "downloaded the snapshot from the object store") {
		t.Fatal("stasisd does not say it downloaded the snapshot")
	}
}
