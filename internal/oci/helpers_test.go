package oci

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestMain(m *testing.M) {
	// Keep the host's registry credentials out of the tests.
	dir, err := os.MkdirTemp("", "oci-test-docker-config-")
	if err != nil {
		log.Fatal(err)
	}
	os.Setenv("DOCKER_CONFIG", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ent is one entry of a test layer.
type ent struct {
	name  string
	typ   byte // tar.TypeReg if 0
	mode  int64
	body  string
	link  string
	uid   int
	gid   int
	mtime time.Time
}

var defaultMtime = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)

func dir(name string) ent        { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
func file(name, body string) ent { return ent{name: name, mode: 0o644, body: body} }
func symlink(name, target string) ent {
	return ent{name: name, typ: tar.TypeSymlink, mode: 0o777, link: target}
}
func hardlink(name, target string) ent {
	return ent{name: name, typ: tar.TypeLink, mode: 0o644, link: target}
}

func tarBytes(t testing.TB, ents []ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mt := e.mtime
		if mt.IsZero() {
			mt = defaultMtime
		}
		h := &tar.Header{
			Name: e.name, Typeflag: typ, Mode: e.mode, Linkname: e.link,
			Uid: e.uid, Gid: e.gid, ModTime: mt, Format: tar.FormatPAX,
		}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if typ == tar.TypeChar {
			h.Devmajor, h.Devminor = 1, 3
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gzLayer, zstdLayer and rawLayer build a layer compressed with gzip, zstd,
// or not at all.
func gzLayer(t testing.TB, ents ...ent) v1.Layer {
	return tarLayer(t, ents, tarball.WithMediaType(types.OCILayer))
}

func zstdLayer(t testing.TB, ents ...ent) v1.Layer {
	return tarLayer(t, ents, tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
}

func rawLayer(t testing.TB, ents ...ent) v1.Layer {
	return static.NewLayer(tarBytes(t, ents), types.OCIUncompressedLayer)
}

func tarLayer(t testing.TB, ents []ent, opts ...tarball.LayerOption) v1.Layer {
	t.Helper()
	b := tarBytes(t, ents)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, append(opts, tarball.WithCompressedCaching)...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// buildImage makes an OCI image of layers with the given config.
func buildImage(t testing.TB, arch string, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", arch, cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.AppendLayers(img, layers...); err != nil {
		t.Fatal(err)
	}
	return img
}

func push(t testing.TB, ref string, img v1.Image) string {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// dockerRegistry is a real registry (Debian's docker-registry, i.e.
// github.com/docker/distribution) serving plain HTTP on loopback.
type dockerRegistry struct {
	host string // 127.0.0.1:port
	cmd  *exec.Cmd
	out  *syncBuffer
	once sync.Once
}

func startDockerRegistry(t *testing.T) *dockerRegistry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("docker-registry not found (%v): run `make setup`, which installs the docker-registry package", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	tmp := t.TempDir()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(tmp, "data"), host)
	cfgFile := filepath.Join(tmp, "config.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &dockerRegistry{host: host, out: &syncBuffer{}}
	r.cmd = exec.Command(bin, "serve", cfgFile)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { r.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		r.stop()
		<-exited
		if t.Failed() {
			t.Logf("docker-registry output:\n%s", r.out.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r
			}
		}
		select {
		case <-exited:
			t.Fatalf("docker-registry exited: %v\n%s", r.cmd.ProcessState, r.out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry not ready on %s: %v\n%s", host, err, r.out.String())
		}
	}
}

// stop kills the registry (our own child, by its pid).
func (r *dockerRegistry) stop() {
	r.once.Do(func() { r.cmd.Process.Kill() })
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testRegistry is an in-process registry (go-containerregistry's
// pkg/registry) on loopback that counts the requests it serves.
type testRegistry struct {
	host string
	srv  *httptest.Server

	mu        sync.Mutex
	blobGets  map[string]int // digest -> GETs
	manifests int            // manifest GETs and HEADs
	delay     time.Duration  // before serving a blob
}

var blobPath = regexp.MustCompile(`^/v2/.+/blobs/(sha256:[0-9a-f]{64})$`)

func startTestRegistry(t *testing.T, wrap func(http.Handler) http.Handler) *testRegistry {
	t.Helper()
	r := &testRegistry{blobGets: map[string]int{}}
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	inner := h
	h = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if m := blobPath.FindStringSubmatch(req.URL.Path); m != nil && req.Method == http.MethodGet {
			r.mu.Lock()
			r.blobGets[m[1]]++
			d := r.delay
			r.mu.Unlock()
			time.Sleep(d)
		}
		if strings.Contains(req.URL.Path, "/manifests/") && (req.Method == http.MethodGet || req.Method == http.MethodHead) {
			r.mu.Lock()
			r.manifests++
			r.mu.Unlock()
		}
		inner.ServeHTTP(w, req)
	})
	if wrap != nil {
		h = wrap(h)
	}
	r.srv = httptest.NewServer(h) // listens on 127.0.0.1
	r.host = strings.TrimPrefix(r.srv.URL, "http://")
	t.Cleanup(r.srv.Close)
	return r
}

func (r *testRegistry) counts() (blobs map[string]int, manifests int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	blobs = map[string]int{}
	for k, v := range r.blobGets {
		blobs[k] = v
	}
	return blobs, r.manifests
}

func (r *testRegistry) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.blobGets = map[string]int{}
	r.manifests = 0
}
