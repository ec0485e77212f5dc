package oci

import (
	"archive/tar"
	"bytes"
	"github.com/stasis-sandbox/stasis/internal/testenv"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
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

// dockerRegistry is a real registry (Debian's docker-registry) serving
// plain HTTP on loopback, started by testenv.
type dockerRegistry struct {
	host string // 127.0.0.1:port
	stop func()
}

func startDockerRegistry(t *testing.T) *dockerRegistry {
	host, stop := testenv.StartRegistry(t)
	return &dockerRegistry{host: host, stop: stop}
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
