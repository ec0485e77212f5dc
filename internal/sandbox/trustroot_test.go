package sandbox

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentproto"
	"github.com/stasis-sandbox/stasis/internal/images"
)

const testCA = "-----BEGIN CERTIFICATE-----\nTESTCA\n-----END CERTIFICATE-----\n"

// makeFiles writes files (path: content) under root.
func makeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A sandbox's root is the image's files, hard-linked (none copied), with
// the trust store written by stasisd; the image itself is not changed.
func TestTrustRootLinksImage(t *testing.T) {
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	const debian = "-----BEGIN CERTIFICATE-----\nDEBIAN\n-----END CERTIFICATE-----\n"
	makeFiles(t, rootfs, map[string]string{
		"/etc/passwd":                            "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n",
		"/usr/bin/python3":                       "an executable",
		"/usr/local/share/ca-certificates/.keep": "",
		agentproto.TrustBundlePath:               debian,
	})
	if err := os.Symlink("python3", filepath.Join(rootfs, "usr/bin/python")); err != nil {
		t.Fatal(err)
	}
	shared := filepath.Join(rootfs, "srv")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, os.ModeSetgid|0o775); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(shared, old, old); err != nil {
		t.Fatal(err)
	}
	img := &images.Image{Name: "test", RootFS: rootfs, User: "user"}
	tr := &trustRoots{dir: filepath.Join(t.TempDir(), "roots"), ca: []byte(testCA)}
	tree, err := tr.root(img)
	if err != nil {
		t.Fatal(err)
	}
	if tree == rootfs || !strings.HasPrefix(tree, tr.dir) {
		t.Fatalf("root %s, want a tree under %s", tree, tr.dir)
	}

	for _, p := range []string{"/usr/bin/python3", "/usr/bin/python", "/etc/passwd"} {
		a, err1 := os.Lstat(filepath.Join(rootfs, p))
		b, err2 := os.Lstat(filepath.Join(tree, p))
		if err1 != nil || err2 != nil || !os.SameFile(a, b) {
			t.Errorf("%s: not a hard link to the image's (%v, %v)", p, err1, err2)
		}
	}
	if fi, err := os.Stat(filepath.Join(tree, "srv")); err != nil || fi.Mode() != os.ModeDir|os.ModeSetgid|0o775 || !fi.ModTime().Equal(old) {
		t.Errorf("srv in the tree: %v (%v), want the image's mode and mtime", fi, err)
	}
	if b, err := os.ReadFile(filepath.Join(tree, agentproto.TrustBundlePath)); err != nil || string(b) != debian+testCA {
		t.Errorf("tree's bundle = %q (%v), want the image's with the CA", b, err)
	}
	if b, _ := os.ReadFile(filepath.Join(rootfs, agentproto.TrustBundlePath)); string(b) != debian {
		t.Errorf("the image's bundle became %q", b)
	}
	if _, err := os.Lstat(filepath.Join(rootfs, agentproto.EgressCAPath)); err == nil {
		t.Error("the CA was written into the image")
	}

	// Built once: a new process finds the tree on disk.
	again, err := (&trustRoots{dir: tr.dir, ca: []byte(testCA)}).root(img)
	if err != nil || again != tree {
		t.Errorf("second lookup: %s (%v), want %s", again, err, tree)
	}

	// A build a crash cut short is made again, not used.
	if err := os.Rename(tree, tree+".tmp"); err != nil {
		t.Fatal(err)
	}
	makeFiles(t, tree+".tmp", map[string]string{"/half-built": ""})
	if again, err := (&trustRoots{dir: tr.dir, ca: []byte(testCA)}).root(img); err != nil || again != tree {
		t.Fatalf("after a crash: %s (%v), want %s", again, err, tree)
	}
	if _, err := os.Lstat(filepath.Join(tree, "half-built")); err == nil {
		t.Error("the half-built tree was used")
	}
	if left, _ := filepath.Glob(filepath.Join(tr.dir, "*.tmp")); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// Without a tree (here: no place for it) sandboxes use the image itself,
// and keep doing so for the life of the process.
func TestTrustRootFallsBackToImage(t *testing.T) {
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	makeFiles(t, rootfs, map[string]string{"/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n"})
	notDir := filepath.Join(t.TempDir(), "file")
	makeFiles(t, filepath.Dir(notDir), map[string]string{filepath.Base(notDir): ""})
	tr := &trustRoots{dir: filepath.Join(notDir, "roots"), ca: []byte(testCA)}
	img := &images.Image{Name: "test", RootFS: rootfs}
	if p, err := tr.root(img); err == nil || p != rootfs {
		t.Errorf("root = %s, %v; want the image and an error", p, err)
	}
	if p, err := tr.root(img); err != nil || p != rootfs {
		t.Errorf("second lookup: %s, %v; want the image, no error", p, err)
	}
	gone := &images.Image{Name: "gone", RootFS: filepath.Join(rootfs, "missing")}
	if p, err := tr.root(gone); err == nil || p != gone.RootFS {
		t.Errorf("missing image: %s, %v; want its path, for the driver to report, and an error", p, err)
	}
}

// Sandboxes of one image created at once share one tree, built once.
func TestTrustRootConcurrentCreates(t *testing.T) {
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	makeFiles(t, rootfs, map[string]string{"/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n", "/bin/sh": "a shell"})
	tr := &trustRoots{dir: filepath.Join(t.TempDir(), "roots"), ca: []byte(testCA)}
	img := &images.Image{Name: "test", RootFS: rootfs}
	paths := make([]string, 8)
	var wg sync.WaitGroup
	for i := range paths {
		wg.Go(func() {
			p, err := tr.root(img)
			if err != nil {
				t.Error(err)
			}
			paths[i] = p
		})
	}
	wg.Wait()
	for _, p := range paths {
		if p != paths[0] || p == rootfs {
			t.Fatalf("roots %v, want one tree", paths)
		}
	}
	if trees, _ := os.ReadDir(tr.dir); len(trees) != 1 {
		t.Errorf("%d entries in %s, want one tree", len(trees), tr.dir)
	}
}

// prune removes the trees of images no longer in use, which keep the
// image's files alive through their links, and a crash's leftovers; it
// keeps the trees handed out by this process and those keep claims (a
// running sandbox's). A pruned tree is built anew when its image is used
// again.
func TestTrustRootPrune(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "roots")
	image := func(name string) *images.Image {
		rootfs := filepath.Join(base, name, "rootfs")
		makeFiles(t, rootfs, map[string]string{"/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n", "/bin/sh": name})
		return &images.Image{Name: name, RootFS: rootfs}
	}
	inUse, running, replaced := image("in-use"), image("running"), image("replaced")
	// Trees of the process before a restart.
	before := &trustRoots{dir: dir, ca: []byte(testCA)}
	for _, img := range []*images.Image{running, replaced} {
		if _, err := before.root(img); err != nil {
			t.Fatal(err)
		}
	}
	runningKey, _ := before.key(running)
	replacedKey, _ := before.key(replaced)
	// A crash's leftovers: a half-removed tree of the same name the prune
	// renames replaced's to, and a half-built one.
	makeFiles(t, dir, map[string]string{replacedKey + goneSuffix + "/bin/sh": "half removed", "0123456789abcdef0123.tmp/bin/sh": "half built"})

	tr := &trustRoots{dir: dir, ca: []byte(testCA)}
	inUseTree, err := tr.root(inUse)
	if err != nil {
		t.Fatal(err)
	}
	removed, err := tr.prune(func(key string) bool { return key == runningKey })
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if want := []string{"0123456789abcdef0123.tmp", replacedKey}; !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if want := []string{filepath.Base(inUseTree), runningKey}; !slices.Equal(left, slices.Sorted(slices.Values(want))) {
		t.Errorf("left %v, want %v", left, want)
	}
	// The replaced image's files are linked from nowhere else now.
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(replaced.RootFS, "bin/sh"), &st); err != nil || st.Nlink != 1 {
		t.Errorf("replaced image's file: %d links (%v), want 1", st.Nlink, err)
	}
	tree, err := tr.root(replaced)
	if err != nil || tree != filepath.Join(dir, replacedKey) {
		t.Fatalf("root of the pruned image: %s, %v", tree, err)
	}
	if b, err := os.ReadFile(filepath.Join(tree, "bin/sh")); err != nil || string(b) != "replaced" {
		t.Errorf("rebuilt tree's /bin/sh: %q, %v", b, err)
	}
}
