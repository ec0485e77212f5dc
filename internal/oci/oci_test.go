package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

var appConfig = v1.Config{
	Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello world"},
	WorkingDir: "/data",
	User:       "1000:1001",
	Cmd:        []string{"/bin/sh", "-c", "echo hi"},
	Entrypoint: []string{"/bin/busybox"},
}

// appImage is the main test image: a busybox root, then a layer with
// whiteouts, an opaque directory, hardlinks and symlinks, then a small
// uncompressed layer.
func appImage(t *testing.T) v1.Image {
	t.Helper()
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("read /bin/busybox (run `make setup`, which installs busybox-static): %v", err)
	}
	owned := file("keep/owned", "mine")
	owned.uid, owned.gid, owned.mode = 1000, 1001, 0o640
	owned.mtime = time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	suid := file("bin/suid", "x")
	suid.mode = 0o4755
	bb := file("bin/busybox", string(busybox))
	bb.mode = 0o755
	tmp := dir("tmp")
	tmp.mode = 0o700
	sticky := dir("shared")
	sticky.mode = 0o1777
	l1 := gzLayer(t,
		dir("bin"), bb,
		symlink("bin/sh", "busybox"), symlink("bin/echo", "busybox"),
		symlink("bin/cat", "busybox"), symlink("bin/ls", "busybox"),
		suid,
		dir("etc"), file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/data:/bin/sh\n"),
		file("etc/gone.txt", "delete me"),
		dir("etc/gonedir"), file("etc/gonedir/f", "delete me too"),
		dir("opq"), file("opq/lower1", "hidden"), dir("opq/sub"), file("opq/sub/lower2", "hidden"),
		dir("keep"), file("keep/file", "v1"), owned,
		dir("replaced"), file("replaced/child", "x"),
		dir("run"), dir("var"), symlink("var/run", "/run"),
		dir("dev"), ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666},
		tmp, sticky,
	)
	newFile := file("keep/file", "v2")
	newFile.mode = 0o600
	l2 := zstdLayer(t,
		file("etc/.wh.gone.txt", ""),
		file("etc/.wh.gonedir", ""),
		dir("opq"),
		file("opq/before", "kept"), // same layer, before the marker
		file("opq/.wh..wh..opq", ""),
		file("opq/after", "kept"),
		dir("opq/sub"), file("opq/sub/new", "kept"),
		dir("data"), file("data/orig", "hello"),
		hardlink("data/hard", "data/orig"),
		hardlink("data/bb", "bin/busybox"), // to a lower layer's file
		symlink("data/rel", "orig"),
		symlink("data/abs", "/etc/passwd"),
		newFile,
		file("replaced", "now a file"),
		file("var/run/app.pid", "42"), // through the absolute symlink var/run -> /run
	)
	l3 := rawLayer(t, file("data/last", "uncompressed layer"))
	return buildImage(t, "amd64", appConfig, l1, l2, l3)
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func assertMissing(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: want it gone, got err=%v", p, err)
	}
}

func assertMode(t *testing.T, p string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode(); got != want {
		t.Errorf("%s: mode %v, want %v", p, got, want)
	}
}

// checkAppRoot checks an unpacked appImage.
func checkAppRoot(t *testing.T, img *Image, digest string) {
	t.Helper()
	root := img.RootFS
	if !filepath.IsAbs(root) {
		t.Errorf("RootFS %q is not absolute", root)
	}
	if img.Digest != digest {
		t.Errorf("Digest = %s, want %s", img.Digest, digest)
	}
	if !slices.Equal(img.Env, appConfig.Env) || img.Workdir != "/data" || img.User != "1000:1001" ||
		!slices.Equal(img.Cmd, appConfig.Cmd) || !slices.Equal(img.Entrypoint, appConfig.Entrypoint) {
		t.Errorf("config: got env=%q workdir=%q user=%q cmd=%q entrypoint=%q", img.Env, img.Workdir, img.User, img.Cmd, img.Entrypoint)
	}

	// Whiteouts.
	assertMissing(t, filepath.Join(root, "etc/gone.txt"))
	assertMissing(t, filepath.Join(root, "etc/gonedir"))
	assertMissing(t, filepath.Join(root, "etc/.wh.gone.txt"))
	if got := readFile(t, filepath.Join(root, "etc/passwd")); !strings.HasPrefix(got, "root:") {
		t.Errorf("etc/passwd = %q", got)
	}
	// Opaque directory: lower contents gone, this layer's kept wherever
	// they are in the tar relative to the marker.
	assertMissing(t, filepath.Join(root, "opq/lower1"))
	assertMissing(t, filepath.Join(root, "opq/sub/lower2"))
	assertMissing(t, filepath.Join(root, "opq/.wh..wh..opq"))
	for _, f := range []string{"opq/before", "opq/after", "opq/sub/new"} {
		if got := readFile(t, filepath.Join(root, f)); got != "kept" {
			t.Errorf("%s = %q", f, got)
		}
	}
	// Overwrites.
	if got := readFile(t, filepath.Join(root, "keep/file")); got != "v2" {
		t.Errorf("keep/file = %q, want v2", got)
	}
	assertMode(t, filepath.Join(root, "keep/file"), 0o600)
	if got := readFile(t, filepath.Join(root, "replaced")); got != "now a file" {
		t.Errorf("replaced = %q", got)
	}
	// Written through the absolute symlink var/run -> /run, inside the root.
	if got := readFile(t, filepath.Join(root, "run/app.pid")); got != "42" {
		t.Errorf("run/app.pid = %q", got)
	}
	if l, err := os.Readlink(filepath.Join(root, "var/run")); err != nil || l != "/run" {
		t.Errorf("var/run -> %q, %v", l, err)
	}
	// Hardlinks, within a layer and to a lower layer.
	fiOrig, _ := os.Stat(filepath.Join(root, "data/orig"))
	fiHard, _ := os.Stat(filepath.Join(root, "data/hard"))
	if fiOrig == nil || fiHard == nil || !os.SameFile(fiOrig, fiHard) {
		t.Errorf("data/hard is not a hardlink of data/orig")
	}
	fiBB, _ := os.Stat(filepath.Join(root, "bin/busybox"))
	fiBB2, _ := os.Stat(filepath.Join(root, "data/bb"))
	if fiBB == nil || fiBB2 == nil || !os.SameFile(fiBB, fiBB2) {
		t.Errorf("data/bb is not a hardlink of bin/busybox")
	}
	// Symlinks stored as is.
	for link, want := range map[string]string{"data/rel": "orig", "data/abs": "/etc/passwd", "bin/sh": "busybox"} {
		if got, err := os.Readlink(filepath.Join(root, link)); err != nil || got != want {
			t.Errorf("%s -> %q (%v), want %q", link, got, err, want)
		}
	}
	if got := readFile(t, filepath.Join(root, "data/last")); got != "uncompressed layer" {
		t.Errorf("data/last = %q", got)
	}
	// Modes, owners, times.
	assertMode(t, filepath.Join(root, "bin/busybox"), 0o755)
	assertMode(t, filepath.Join(root, "bin/suid"), 0o755|fs.ModeSetuid)
	assertMode(t, filepath.Join(root, "keep/owned"), 0o640)
	assertMode(t, filepath.Join(root, "shared"), 0o777|fs.ModeDir|fs.ModeSticky)
	fi, err := os.Lstat(filepath.Join(root, "keep/owned"))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if os.Geteuid() == 0 && (st.Uid != 1000 || st.Gid != 1001) {
		t.Errorf("keep/owned owned by %d:%d, want 1000:1001", st.Uid, st.Gid)
	}
	if want := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC); !fi.ModTime().Equal(want) {
		t.Errorf("keep/owned mtime %v, want %v", fi.ModTime(), want)
	}
	if fi, err := os.Lstat(filepath.Join(root, "bin")); err != nil || !fi.ModTime().Equal(defaultMtime) {
		t.Errorf("bin mtime: %v (%v), want %v", fi.ModTime(), err, defaultMtime)
	}
	// Device nodes skipped.
	assertMissing(t, filepath.Join(root, "dev/null"))
	// What the runtime needs.
	assertMode(t, filepath.Join(root, ".stasis"), 0o755|fs.ModeDir)
	assertMode(t, filepath.Join(root, AgentMountPoint), 0o755)
	if fi, err := os.Stat(filepath.Join(root, AgentMountPoint)); err != nil || fi.Size() != 0 {
		t.Errorf("agent mount point: %v %v", fi, err)
	}
	assertMode(t, filepath.Join(root, "tmp"), 0o777|fs.ModeDir|fs.ModeSticky)
	for _, d := range []string{"proc", "sys", "dev"} {
		if fi, err := os.Lstat(filepath.Join(root, d)); err != nil || !fi.IsDir() {
			t.Errorf("/%s: %v %v", d, fi, err)
		}
	}
	assertMode(t, root, 0o755|fs.ModeDir)
	// Metadata next to the root.
	var md metadata
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(filepath.Dir(root), "image.json"))), &md); err != nil {
		t.Fatal(err)
	}
	if md.Digest != digest || md.Workdir != "/data" || md.User != "1000:1001" || len(md.Layers) != 3 || md.Architecture != "amd64" {
		t.Errorf("image.json: %+v", md)
	}
	if filepath.Base(filepath.Dir(root)) != strings.Replace(digest, ":", "-", 1) {
		t.Errorf("cache dir %s not named after %s", filepath.Dir(root), digest)
	}
}

// TestPullDockerRegistry pushes the test image to a real registry
// (docker-registry) and pulls it: contents, metadata, running a shell in
// it, then the cache with the registry gone, and errors.
func TestPullDockerRegistry(t *testing.T) {
	testenv.RequireRoot(t)
	reg := startDockerRegistry(t)
	ref := reg.host + "/test/app:1"
	digest := push(t, ref, appImage(t))

	cache := t.TempDir()
	p := NewPuller(cache)
	var progress bytes.Buffer
	img, err := p.Pull(context.Background(), ref, &progress)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("progress:\n%s", progress.String())
	checkAppRoot(t, img, digest)
	if img.Ref != ref {
		t.Errorf("Ref = %q", img.Ref)
	}
	for _, want := range []string{
		fmt.Sprintf("pulling %s (%s)\n", ref, digest),
		"layer 1/3 (", "layer 2/3 (", "layer 3/3 (", " MB)\n",
	} {
		if !strings.Contains(progress.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, progress.String())
		}
	}

	out, err := exec.Command("chroot", img.RootFS, "/bin/sh", "-c", "echo ok").CombinedOutput()
	if err != nil || string(out) != "ok\n" {
		t.Fatalf("chroot %s /bin/sh -c 'echo ok': %q, %v", img.RootFS, out, err)
	}

	// A missing tag and a missing repository.
	for _, missing := range []string{reg.host + "/test/app:nope", reg.host + "/test/nope:1"} {
		_, err = p.Pull(context.Background(), missing, nil)
		if !errors.Is(err, ErrPullFailed) || !strings.HasPrefix(err.Error(), "pull "+missing+": ") ||
			!strings.Contains(err.Error(), "UNKNOWN") || !strings.Contains(err.Error(), "not found") {
			t.Errorf("pull %s: want ErrPullFailed, got %v", missing, err)
		} else {
			t.Logf("missing image: %v", err)
		}
	}

	// The registry goes away: both the tag and the digest are still
	// served from the cache, by another Puller of the same directory.
	reg.stop()
	progress.Reset()
	img2, err := NewPuller(cache).Pull(context.Background(), ref, &progress)
	if err != nil {
		t.Fatalf("pull from cache with the registry stopped: %v", err)
	}
	if img2.RootFS != img.RootFS || !strings.Contains(progress.String(), "using cached") {
		t.Errorf("second pull: %s, progress %q", img2.RootFS, progress.String())
	}
	byDigest := reg.host + "/test/app@" + digest
	if img3, err := NewPuller(cache).Pull(context.Background(), byDigest, nil); err != nil || img3.RootFS != img.RootFS || img3.Ref != byDigest {
		t.Errorf("pull by digest from cache: %v %v", img3, err)
	}
	// Not cached, registry gone.
	_, err = p.Pull(context.Background(), reg.host+"/test/other:1", nil)
	if !errors.Is(err, ErrPullFailed) || !strings.HasPrefix(err.Error(), "pull "+reg.host+"/test/other:1: ") ||
		!strings.Contains(err.Error(), "unreachable") {
		t.Errorf("pull from a stopped registry: want ErrPullFailed, got %v", err)
	} else {
		t.Logf("unreachable registry: %v", err)
	}
}

// TestPullCached checks that a cached image is not downloaded again: only
// its manifest is fetched.
func TestPullCached(t *testing.T) {
	testenv.RequireRoot(t)
	reg := startTestRegistry(t, nil)
	ref := reg.host + "/app:1"
	digest := push(t, ref, appImage(t))
	reg.reset()

	cache := t.TempDir()
	img, err := NewPuller(cache).Pull(context.Background(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkAppRoot(t, img, digest)
	blobs, _ := reg.counts()
	if len(blobs) != 4 { // config + 3 layers
		t.Errorf("first pull fetched blobs %v, want config and 3 layers once", blobs)
	}
	reg.reset()
	var progress bytes.Buffer
	img2, err := NewPuller(cache).Pull(context.Background(), ref, &progress)
	if err != nil {
		t.Fatal(err)
	}
	blobs, manifests := reg.counts()
	if len(blobs) != 0 || manifests == 0 {
		t.Errorf("second pull fetched blobs %v and %d manifests, want only the manifest", blobs, manifests)
	}
	if img2.RootFS != img.RootFS || img2.Digest != digest || !strings.Contains(progress.String(), "using cached") {
		t.Errorf("second pull: %+v, progress %q", img2, progress.String())
	}
	// The same image under another tag is the same cache entry.
	push(t, reg.host+"/other:latest", appImage(t))
	reg.reset()
	img3, err := NewPuller(cache).Pull(context.Background(), reg.host+"/other", nil)
	if err != nil {
		t.Fatal(err)
	}
	if blobs, _ := reg.counts(); img3.RootFS != img.RootFS || len(blobs) != 0 {
		t.Errorf("same image, other tag: %s, blobs %v", img3.RootFS, blobs)
	}
	if cached := NewPuller(cache).Cached(); len(cached) != 1 || cached[0].RootFS != img.RootFS || cached[0].Digest != digest || cached[0].User != img.User {
		t.Errorf("cached images %+v, want the one pulled", cached)
	}
}

// TestPullConcurrent pulls one image from many goroutines, each with its own
// Puller as if they were separate processes: it is downloaded and unpacked
// once.
func TestPullConcurrent(t *testing.T) {
	testenv.RequireRoot(t)
	reg := startTestRegistry(t, nil)
	ref := reg.host + "/app:1"
	digest := push(t, ref, appImage(t))
	reg.reset()
	reg.delay = 100 * time.Millisecond

	cache := t.TempDir()
	const n = 8
	var wg sync.WaitGroup
	imgs := make([]*Image, n)
	errs := make([]error, n)
	outs := make([]bytes.Buffer, n)
	for i := range n {
		wg.Go(func() {
			imgs[i], errs[i] = NewPuller(cache, WithProgress(&outs[i])).Pull(context.Background(), ref, nil)
		})
	}
	wg.Wait()
	pulling := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("pull %d: %v", i, errs[i])
		}
		if imgs[i].RootFS != imgs[0].RootFS {
			t.Errorf("pull %d: root %s, want %s", i, imgs[i].RootFS, imgs[0].RootFS)
		}
		pulling += strings.Count(outs[i].String(), "pulling ")
	}
	checkAppRoot(t, imgs[0], digest)
	if pulling != 1 {
		t.Errorf("%d pulls unpacked the image, want 1", pulling)
	}
	blobs, _ := reg.counts()
	for d, c := range blobs {
		if c != 1 {
			t.Errorf("blob %s fetched %d times, want once", d, c)
		}
	}
	// Nothing left over but the image, its lock and the ref record.
	ents, _ := os.ReadDir(cache)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("leftover %s", e.Name())
		}
	}
}

// TestPullIndex pulls a multi-platform image: the host's platform is picked,
// and a pull by the index digest is served from the cache once the registry
// is gone.
func TestPullIndex(t *testing.T) {
	reg := startTestRegistry(t, nil)
	mk := func(arch string) v1.Image {
		return buildImage(t, arch, v1.Config{Env: []string{"ARCH=" + arch}}, gzLayer(t, file("arch", arch)))
	}
	amd64, arm64 := mk("amd64"), mk("arm64")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm64, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd64, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	r, err := name.ParseReference(reg.host + "/multi:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}
	idxDigest, _ := idx.Digest()
	want := map[string]v1.Image{"amd64": amd64, "arm64": arm64}[runtime.GOARCH]
	if want == nil {
		t.Skipf("no test image for %s", runtime.GOARCH)
	}
	wantDigest, _ := want.Digest()

	cache := t.TempDir()
	byDigest := reg.host + "/multi@" + idxDigest.String()
	for _, ref := range []string{reg.host + "/multi:1", byDigest} {
		img, err := NewPuller(cache).Pull(context.Background(), ref, nil)
		if err != nil {
			t.Fatal(err)
		}
		if img.Digest != wantDigest.String() || readFile(t, filepath.Join(img.RootFS, "arch")) != runtime.GOARCH ||
			!slices.Equal(img.Env, []string{"ARCH=" + runtime.GOARCH}) || img.Workdir != "/" || img.User != "" {
			t.Errorf("pull %s: %+v", ref, img)
		}
	}
	reg.srv.Close()
	if _, err := NewPuller(cache).Pull(context.Background(), byDigest, nil); err != nil {
		t.Errorf("pull by index digest, registry gone: %v", err)
	}
}

// TestPullErrors checks that failures to fetch wrap ErrPullFailed with a
// message starting with the reference.
func TestPullErrors(t *testing.T) {
	reg := startTestRegistry(t, nil)
	push(t, reg.host+"/app:1", buildImage(t, "amd64", v1.Config{}, gzLayer(t, file("f", "x"))))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	p := NewPuller(t.TempDir())
	for _, tc := range []struct{ ref, want string }{
		{reg.host + "/app:2", "MANIFEST_UNKNOWN"},
		{reg.host + "/nope:1", "NAME_UNKNOWN"},
		{reg.host + "/app@sha256:" + strings.Repeat("0", 64), "not found"},
		{closed + "/app:1", "unreachable"},
		{"Not A Reference", "invalid image reference"},
		{"", "invalid image reference"},
	} {
		_, err := p.Pull(context.Background(), tc.ref, nil)
		if !errors.Is(err, ErrPullFailed) || !strings.HasPrefix(err.Error(), "pull "+tc.ref+": ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pull %q: want ErrPullFailed mentioning %q, got %v", tc.ref, tc.want, err)
		} else {
			t.Logf("%v", err)
		}
	}
	// A canceled pull is not a pull failure.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Pull(ctx, reg.host+"/app:1", nil); !errors.Is(err, context.Canceled) || errors.Is(err, ErrPullFailed) {
		t.Errorf("canceled pull: %v", err)
	}
}

// TestPullAuth pulls from a registry that wants basic auth, with and without
// credentials in the Docker config.
func TestPullAuth(t *testing.T) {
	reg := startTestRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, pw, ok := r.BasicAuth(); !ok || u != "alice" || pw != "s3cret" {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	cfgDir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.host, auth)
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", cfgDir)
	ref := reg.host + "/private:1"
	r, _ := name.ParseReference(ref)
	img := buildImage(t, "amd64", v1.Config{}, gzLayer(t, file("secret", "x")))
	if err := remote.Write(r, img, remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"})); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	if _, err := NewPuller(cache).Pull(context.Background(), ref, nil); err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	_, err := NewPuller(t.TempDir()).Pull(context.Background(), ref, nil)
	if !errors.Is(err, ErrPullFailed) || !strings.HasPrefix(err.Error(), "pull "+ref+": ") || !strings.Contains(err.Error(), "UNAUTHORIZED") ||
		!strings.Contains(err.Error(), "docker login") {
		t.Errorf("pull without credentials: want ErrPullFailed/UNAUTHORIZED, got %v", err)
	} else {
		t.Logf("%v", err)
	}
}

// TestPullPathTraversal pulls images whose layers try to write outside the
// root: everything lands inside it, or the pull fails, and nothing outside
// changes.
func TestPullPathTraversal(t *testing.T) {
	testenv.RequireRoot(t)
	reg := startTestRegistry(t, nil)
	base := t.TempDir()
	outside := filepath.Join(base, "outside") // a host directory the layers aim at
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	deep := strings.Repeat("../", 20)
	for _, tc := range []struct {
		name    string
		layers  [][]ent
		fail    string            // error wanted, "" for success
		inside  map[string]string // files wanted in the root: path -> content
		missing []string          // paths wanted absent from the root
	}{{
		name:   "dotdot",
		layers: [][]ent{{file("../evil", "1"), file(deep+"evil2", "2"), file("/abs", "3"), file("a/../../evil3", "4")}},
		inside: map[string]string{"evil": "1", "evil2": "2", "abs": "3", "evil3": "4"},
	}, {
		name: "symlink-relative",
		layers: [][]ent{
			{symlink("up", deep), symlink("updir", "../../../.."+outside)},
			{file("up/pwned", "1"), file("updir/pwned", "2")},
		},
		inside: map[string]string{"pwned": "1", strings.TrimPrefix(outside, "/") + "/pwned": "2"},
	}, {
		name: "symlink-absolute",
		layers: [][]ent{
			{symlink("abs", outside), dir("d"), symlink("d/chain", "/abs"), symlink("d/chain2", "../d/chain")},
			{file("abs/pwned", "1"), file("d/chain2/pwned2", "2")},
		},
		inside: map[string]string{strings.TrimPrefix(outside, "/") + "/pwned": "1", strings.TrimPrefix(outside, "/") + "/pwned2": "2"},
	}, {
		name:   "symlink-same-layer",
		layers: [][]ent{{symlink("x", outside), file("x/pwned", "1"), symlink("y", "/"), file("y/../../pwned", "2")}},
		inside: map[string]string{strings.TrimPrefix(outside, "/") + "/pwned": "1", "pwned": "2"},
	}, {
		name:   "overwrite-symlink",
		layers: [][]ent{{symlink("secret", secret)}, {file("secret", "replaced")}},
		inside: map[string]string{"secret": "replaced"},
	}, {
		name:   "whiteout-through-symlink",
		layers: [][]ent{{symlink("o", outside)}, {file("o/.wh.secret", "")}},
	}, {
		name:   "opaque-through-symlink",
		layers: [][]ent{{symlink("o", outside)}, {file("o/.wh..wh..opq", "")}},
	}, {
		name:   "hardlink-out",
		layers: [][]ent{{hardlink("hl", deep+strings.TrimPrefix(secret, "/"))}},
		fail:   "hardlink",
	}, {
		name:   "hardlink-through-symlink",
		layers: [][]ent{{symlink("o", outside), hardlink("hl", "o/secret")}},
		fail:   "hardlink",
	}, {
		name:   "whiteout-dot",
		layers: [][]ent{{dir("a"), file("a/.wh..", "")}},
		fail:   "invalid whiteout",
	}, {
		name:   "whiteout-dotdot",
		layers: [][]ent{{file("f", "")}, {file(".wh...", "")}},
		fail:   "invalid whiteout",
	}, {
		name:   "special-dirs-symlinks",
		layers: [][]ent{{symlink("tmp", outside), symlink(".stasis", outside), symlink("proc", outside), symlink("dev", "/")}},
	}, {
		name:   "symlink-loop",
		layers: [][]ent{{symlink("loop", "loop"), file("loop/x", "1")}},
		fail:   "too many levels of symbolic links",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var layers []v1.Layer
			for _, l := range tc.layers {
				layers = append(layers, gzLayer(t, l...))
			}
			ref := reg.host + "/evil/" + tc.name + ":1"
			push(t, ref, buildImage(t, "amd64", v1.Config{}, layers...))
			cache := filepath.Join(base, "cache-"+tc.name)
			img, err := NewPuller(cache).Pull(context.Background(), ref, nil)
			if tc.fail != "" {
				if !errors.Is(err, ErrPullFailed) || !strings.Contains(err.Error(), tc.fail) {
					t.Errorf("want ErrPullFailed mentioning %q, got %v", tc.fail, err)
				} else {
					t.Logf("%v", err)
				}
			} else if err != nil {
				t.Fatal(err)
			} else {
				for _, d := range []string{"tmp", ".stasis", "proc", "sys", "dev"} {
					if fi, err := os.Lstat(filepath.Join(img.RootFS, d)); err != nil || !fi.IsDir() {
						t.Errorf("/%s is not a directory: %v %v", d, fi, err)
					}
				}
				for f, want := range tc.inside {
					if got := readFile(t, filepath.Join(img.RootFS, f)); got != want {
						t.Errorf("%s = %q, want %q", f, got, want)
					}
				}
			}
			// Outside the roots nothing changed: base holds outside/secret
			// and the caches, and each cache only its own files.
			if got := readFile(t, secret); got != "host secret" {
				t.Errorf("host secret changed: %q", got)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Errorf("outside has %d entries, want only secret", len(ents))
			}
			ents, _ = os.ReadDir(base)
			for _, e := range ents {
				if e.Name() != "outside" && !strings.HasPrefix(e.Name(), "cache-") {
					t.Errorf("unexpected %s in %s", e.Name(), base)
				}
			}
			ents, _ = os.ReadDir(cache)
			for _, e := range ents {
				if n := e.Name(); !(strings.HasPrefix(n, "sha256-") || strings.HasPrefix(n, ".sha256-") || n == ".refs") {
					t.Errorf("unexpected %s in the cache", n)
				}
			}
		})
	}
}

// TestPullStale checks that leftovers of a crashed pull and an incomplete
// cache entry are replaced.
func TestPullStale(t *testing.T) {
	reg := startTestRegistry(t, nil)
	ref := reg.host + "/app:1"
	digest := push(t, ref, buildImage(t, "amd64", v1.Config{}, gzLayer(t, file("f", "x"))))
	cache := t.TempDir()
	slug := strings.Replace(digest, ":", "-", 1)
	stale := filepath.Join(cache, ".tmp-"+slug+"-123", "rootfs")
	incomplete := filepath.Join(cache, slug, "rootfs")
	for _, d := range []string{stale, incomplete} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var progress bytes.Buffer
	img, err := NewPuller(cache).Pull(context.Background(), ref, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if img.RootFS != incomplete || readFile(t, filepath.Join(img.RootFS, "f")) != "x" {
		t.Errorf("pulled %+v", img)
	}
	assertMissing(t, filepath.Dir(stale))
	if !strings.Contains(progress.String(), "removing leftover") {
		t.Errorf("progress: %q", progress.String())
	}
	ents, _ := os.ReadDir(cache)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("leftover %s", e.Name())
		}
	}
}

func TestResolve(t *testing.T) {
	root := t.TempDir()
	for _, l := range [][2]string{
		{"rel", "a/b"}, {"abs", "/a"}, {"up", "../../.."}, {"a", ""}, {"loop", "loop"},
	} {
		if l[1] == "" {
			os.Mkdir(filepath.Join(root, l[0]), 0o755)
			continue
		}
		if err := os.Symlink(l[1], filepath.Join(root, l[0])); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("../../x", filepath.Join(root, "a", "b"))
	u := newUnpacker(root)
	for in, want := range map[string]string{
		"/":              "/",
		"":               "/",
		"/..":            "/",
		"../../etc":      "/etc",
		"/abs/c":         "/a/c",
		"/rel":           "/x",
		"/rel/y":         "/x/y",
		"/up/etc/passwd": "/etc/passwd",
		"/a/../../b":     "/b",
		"/nope/../a":     "/a",
	} {
		got, err := u.resolve(in)
		if err != nil || got != want {
			t.Errorf("resolve(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := u.resolve("/loop/x"); !errors.Is(err, syscall.ELOOP) {
		t.Errorf("resolve(/loop/x): %v, want ELOOP", err)
	}
}

// TestPullCorruptBlob serves a layer whose bytes do not match its digest:
// the pull fails and nothing is cached.
func TestPullCorruptBlob(t *testing.T) {
	layer := rawLayer(t, file("f", "the real content"))
	bad, _ := layer.Digest()
	reg := startTestRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+bad.String()) {
				h.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			body := bytes.Replace(rec.Body.Bytes(), []byte("real"), []byte("fake"), 1)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(body)
		})
	})
	ref := reg.host + "/app:1"
	push(t, ref, buildImage(t, "amd64", v1.Config{}, layer))
	cache := t.TempDir()
	_, err := NewPuller(cache).Pull(context.Background(), ref, nil)
	if !errors.Is(err, ErrPullFailed) || !strings.Contains(err.Error(), bad.String()) {
		t.Fatalf("want ErrPullFailed naming the layer, got %v", err)
	}
	t.Logf("%v", err)
	ents, _ := os.ReadDir(cache)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "sha256-") || strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("left %s in the cache", e.Name())
		}
	}
}

func TestInsecureRegistries(t *testing.T) {
	p := NewPuller(t.TempDir(), WithInsecureRegistries("registry.internal:5000"))
	for ref, want := range map[string]string{
		"registry.internal:5000/app:1": "http",
		"registry.internal/app:1":      "https",
		"127.0.0.1:5000/app:1":         "http",
		"localhost:5000/app:1":         "http",
		"ghcr.io/org/app:1":            "https",
	} {
		r, err := p.parse(ref)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Context().Registry.Scheme(); got != want {
			t.Errorf("%s: scheme %s, want %s", ref, got, want)
		}
	}
}
