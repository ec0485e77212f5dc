package sandbox

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/images"
	"github.com/stasis-sandbox/stasis/internal/runtime"
)

// trustRoots gives sandboxes an image root with the egress CA already in
// its trust store: a tree of hard links to the image's files, one per
// (image, CA, default user), in which agent.PrepareTrust has written the
// files the agent would otherwise write at boot. The agent then finds
// nothing to write, and the system bundle (217 KB for stasis/base) stays on
// the overlay's read-only lower layer instead of being copied into its
// writable layer, whose pages are sandbox memory saved in every snapshot.
// The sandbox sees the same files with the same owners either way, and can
// still rewrite them (update-ca-certificates, an append by the default
// user): the overlay copies them up then.
//
// runsc lets a restore name another root path than the checkpoint's, so
// sandboxes and snapshots made before keep restoring (their copied-up
// bundle hides the tree's).
type trustRoots struct {
	dir string // one tree per key under it
	ca  []byte

	mu    sync.Mutex
	roots map[string]*imageRoot // by key
}

// imageRoot is the root of one key's sandboxes, settled once per process: a
// build (seconds for a large image) holds up only that image's sandboxes.
type imageRoot struct {
	once sync.Once
	path string
	err  error
}

// root returns the root for img's sandboxes: its tree, built the first
// time. If the tree cannot be made (an image on another file system than
// dir cannot be hard-linked) it returns the image itself and the error, once.
// The agent then installs the CA at boot, as it always did.
func (t *trustRoots) root(img *images.Image) (string, error) {
	key, err := t.key(img)
	if err != nil {
		return img.RootFS, err // the driver reports it
	}
	t.mu.Lock()
	r := t.roots[key]
	if r == nil {
		if t.roots == nil {
			t.roots = map[string]*imageRoot{}
		}
		r = &imageRoot{}
		t.roots[key] = r
	}
	t.mu.Unlock()
	first := false
	r.once.Do(func() {
		first = true
		tree := filepath.Join(t.dir, key)
		_, err := os.Stat(tree)
		if errors.Is(err, fs.ErrNotExist) {
			err = t.build(img, tree)
		}
		// On error, the image for the life of the process: its sandboxes
		// restore under the root they were created with.
		r.path, r.err = tree, err
		if err != nil {
			r.path = img.RootFS
		}
	})
	if !first {
		return r.path, nil
	}
	return r.path, r.err
}

// key names img's tree. The image's identity includes its root
// directory's inode and mtime, so an image rebuilt at the same path gets a
// new tree.
func (t *trustRoots) key(img *images.Image) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(img.RootFS, &st); err != nil {
		return "", err
	}
	h := sha256.New()
	for _, s := range []string{img.RootFS, strconv.FormatUint(st.Dev, 10), strconv.FormatUint(st.Ino, 10),
		strconv.FormatInt(st.Mtim.Nano(), 10), img.User, string(t.ca)} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:20], nil
}

// goneSuffix marks a tree being removed (prune).
const goneSuffix = ".gone"

// prune removes the trees that root has not handed out in this process and
// that keep (by key) does not claim: trees of images replaced or removed,
// or of an egress CA no longer used, which would keep the old image's
// files on disk through their links. A tree is first renamed away, under
// t.mu: root never hands out a tree being removed (it builds the tree
// anew), and one a crash left half-removed is never used, and is removed
// by the next prune. A build's leftover (.tmp) goes the same way. It
// returns the names of the trees removed.
func (t *trustRoots) prune(keep func(key string) bool) ([]string, error) {
	entries, err := os.ReadDir(t.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var errs []error
	// A crash's leftovers first, so that the renames below find their
	// names free.
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), goneSuffix) {
			errs = append(errs, os.RemoveAll(filepath.Join(t.dir, e.Name())))
		}
	}
	var gone []string
	t.mu.Lock()
	for _, e := range entries {
		name := e.Name()
		key := strings.TrimSuffix(name, ".tmp")
		if strings.HasSuffix(name, goneSuffix) || t.roots[key] != nil || keep(key) {
			continue
		}
		if err := os.Rename(filepath.Join(t.dir, name), filepath.Join(t.dir, name+goneSuffix)); err != nil {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, name)
	}
	t.mu.Unlock()
	for _, name := range gone {
		errs = append(errs, os.RemoveAll(filepath.Join(t.dir, name+goneSuffix)))
	}
	return gone, errors.Join(errs...)
}

// build makes tree: it is complete or absent, also after a crash (made
// under a temporary name, renamed when done).
func (t *trustRoots) build(img *images.Image, tree string) error {
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return err
	}
	tmp := tree + ".tmp"
	if err := os.RemoveAll(tmp); err != nil { // a leftover of a crash
		return err
	}
	err := linkImage(img.RootFS, tmp)
	if err == nil {
		err = agent.PrepareTrust(tmp, t.ca, img.User)
	}
	if err == nil {
		err = os.Rename(tmp, tree)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("image root with the egress CA: %w", err)
	}
	return nil
}

// linkImage makes dst a copy of the directory tree src whose directories
// are new (same mode, owner and times) and whose other entries are hard
// links to src's.
func linkImage(src, dst string) error {
	type dirTimes struct {
		path         string
		atime, mtime unix.Timespec
	}
	var dirs []dirTimes
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		if !d.IsDir() {
			return os.Link(p, to) // a symlink is linked, not followed
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if err := os.Mkdir(to, 0o700); err != nil {
			return err
		}
		if err := os.Lchown(to, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		// Chmod after chown: chown clears setuid and setgid bits.
		if err := unix.Chmod(to, st.Mode&^syscall.S_IFMT); err != nil {
			return err
		}
		dirs = append(dirs, dirTimes{to, st.Atim, st.Mtim})
		return nil
	})
	if err != nil {
		return err
	}
	// Deepest first: setting a directory's times is not undone by its
	// children's links then.
	for _, d := range slices.Backward(dirs) {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, d.path, []unix.Timespec{d.atime, d.mtime}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

// rootFS is the root a sandbox of img starts and restores with: the image's
// tree with the trust store in place, or the image itself if that tree
// cannot be made (the agent installs the CA at boot then). The answer for
// an image holds for the life of the process, so a sandbox restores under
// the root it was created with.
func (s *Service) rootFS(img *images.Image) string {
	if s.roots == nil {
		return img.RootFS
	}
	p, err := s.roots.root(img)
	if err != nil {
		s.log.Warn("sandboxes of this image get the egress CA from their agent, in their writable layer", "image", img.Name, "err", err)
	}
	return p
}

// pruneRoots removes the image roots (trustRoots.prune) that neither a
// sandbox in running (from the driver's List) nor an image on disk now (a
// built-in one as now built, a pulled OCI one) uses. A paused sandbox
// needs none: a restore runs on its image's current tree, built anew if it
// is gone.
func (s *Service) pruneRoots(running []runtime.Instance) {
	if s.roots == nil {
		return
	}
	keep := map[string]bool{}
	for _, inst := range running {
		if inst.RootFS == "" {
			s.log.Warn("image roots not pruned: the runtime does not tell which root a sandbox runs on", "sandbox", inst.ID)
			return
		}
		// By name only: the data dir's path may have changed since.
		keep[filepath.Base(inst.RootFS)] = true
	}
	var imgs []*images.Image
	for _, name := range images.Builtins() {
		if img, err := s.cfg.Images.Get(name); err == nil {
			imgs = append(imgs, img)
		}
	}
	if s.cfg.OCI != nil {
		for _, oi := range s.cfg.OCI.Cached() {
			imgs = append(imgs, ociImage("", oi))
		}
	}
	for _, img := range imgs {
		if key, err := s.roots.key(img); err == nil {
			keep[key] = true
		}
	}
	removed, err := s.roots.prune(func(key string) bool { return keep[key] })
	for _, name := range removed {
		s.log.Info("removed an image root no sandbox uses", "root", filepath.Join(s.roots.dir, name))
	}
	if err != nil {
		s.log.Warn("pruning image roots", "dir", s.roots.dir, "err", err)
	}
}
