package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// OCI whiteouts (image-spec layer.md): ".wh.NAME" deletes NAME from the
// lower layers, ".wh..wh..opq" hides everything the lower layers have in its
// directory. Other ".wh..wh." names (aufs hardlink dirs) are ignored.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	opaqueMarker   = ".wh..wh..opq"
)

// localError is a failure of the local machine (disk full, I/O error,
// permission), as opposed to a problem with the image or the registry.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

// classify marks file system errors that are the local machine's fault as
// localError; the others (ENOTDIR, ELOOP, EEXIST, ...) come from a malformed
// layer and stay plain, so that Pull reports them as ErrPullFailed.
func classify(err error) error {
	if err == nil {
		return nil
	}
	for _, e := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EIO,
		syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM, syscall.EACCES, syscall.EPERM} {
		if errors.Is(err, e) {
			return &localError{err}
		}
	}
	return err
}

// unpacker applies layers to a root directory. Paths inside the root are
// handled as "in-root" paths: absolute, cleaned, slash-separated, relative to
// the root ("/usr/bin/env"), and turned into host paths only once every
// symlink in them has been resolved inside the root, so that nothing in a
// layer (an entry named "../x", a symlink to "/" or to "../../..", a
// hardlink to "/etc/shadow") can touch a file outside the root.
type unpacker struct {
	root  string // host path of the root
	chown bool   // whether to apply owners (only root can)
	buf   []byte
}

func newUnpacker(root string) *unpacker {
	return &unpacker{root: filepath.Clean(root), chown: os.Geteuid() == 0, buf: make([]byte, 1<<20)}
}

// host returns the host path of the in-root path p. p must not contain
// symlinks that lead out of the root: it must come from resolve (plus one
// final component that is not "..").
func (u *unpacker) host(p string) string {
	return filepath.Join(u.root, filepath.FromSlash(path.Clean("/"+p)))
}

// resolve returns the in-root path that p designates, resolving symlinks in
// every component the way the kernel would if the root were "/": ".." never
// goes above the root and an absolute symlink starts over from the root.
// Components that do not exist are kept as they are.
func (u *unpacker) resolve(p string) (string, error) {
	resolved := "/"
	rest := p
	links := 0
	for rest != "" {
		var part string
		part, rest, _ = strings.Cut(rest, "/")
		switch part {
		case "", ".":
			continue
		case "..":
			resolved = path.Dir(resolved)
			continue
		}
		next := path.Join(resolved, part)
		fi, err := os.Lstat(u.host(next))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				resolved = next
				continue
			}
			return "", classify(err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if links++; links > 255 {
			return "", fmt.Errorf("%s: %w", p, syscall.ELOOP)
		}
		target, err := os.Readlink(u.host(next))
		if err != nil {
			return "", classify(err)
		}
		if path.IsAbs(target) {
			resolved = "/"
		}
		rest = target + "/" + rest
	}
	return resolved, nil
}

// split cleans a tar entry name into the resolved in-root path of its parent
// directory and its base name; base is "" for the root itself.
func (u *unpacker) split(name string) (parent, base string, err error) {
	clean := path.Clean("/" + name)
	if clean == "/" {
		return "/", "", nil
	}
	dir, base := path.Split(clean)
	parent, err = u.resolve(dir)
	return parent, base, err
}

// apply unpacks one layer (an uncompressed tar stream) over the root.
func (u *unpacker) apply(ctx context.Context, r io.Reader) error {
	tr := tar.NewReader(r)
	// In-root paths this layer created, and their ancestors: an opaque
	// whiteout hides only what lower layers have.
	added := map[string]bool{"/": true}
	type dirMeta struct {
		host string
		hdr  *tar.Header
	}
	var dirs []dirMeta
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read layer: %w", err)
		}
		p, err := u.entry(tr, hdr, added)
		if err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
		if p == "" {
			continue
		}
		for q := p; !added[q]; q = path.Dir(q) {
			added[q] = true
		}
		if hdr.Typeflag == tar.TypeDir {
			dirs = append(dirs, dirMeta{u.host(p), hdr})
		}
	}
	// Directory times last: creating their entries changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := setTimes(dirs[i].host, dirs[i].hdr); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", dirs[i].hdr.Name, classify(err))
		}
	}
	return nil
}

// entry applies one tar entry and returns the in-root path it created, or ""
// if it created nothing (a whiteout, a device node, the root itself).
func (u *unpacker) entry(tr *tar.Reader, hdr *tar.Header, added map[string]bool) (string, error) {
	parent, base, err := u.split(hdr.Name)
	if err != nil {
		return "", err
	}
	if base == "" {
		return "", nil // the root: keep it root-owned, 0755
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		switch {
		case base == opaqueMarker:
			return "", u.opaque(parent, added)
		case strings.HasPrefix(base, whiteoutMeta):
			return "", nil
		}
		victim := strings.TrimPrefix(base, whiteoutPrefix)
		if victim == "" || victim == "." || victim == ".." {
			return "", fmt.Errorf("invalid whiteout %q", hdr.Name)
		}
		return "", classify(u.removeAll(path.Join(parent, victim)))
	}

	switch hdr.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeGNUSparse, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo:
	default:
		// Device nodes (the runtime provides /dev), and anything unknown.
		return "", nil
	}
	if err := os.MkdirAll(u.host(parent), 0o755); err != nil {
		return "", classify(err)
	}
	p := path.Join(parent, base)
	target := u.host(p)
	fi, err := os.Lstat(target)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", classify(err)
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		if exists && !fi.IsDir() {
			if err := os.Remove(target); err != nil {
				return "", classify(err)
			}
			exists = false
		}
		if !exists {
			if err := os.Mkdir(target, 0o700); err != nil {
				return "", classify(err)
			}
		}
		return p, u.setMeta(target, hdr, false)

	case tar.TypeReg, tar.TypeGNUSparse:
		if err := u.clear(target, fi, exists); err != nil {
			return "", err
		}
		if err := u.writeFile(target, tr); err != nil {
			return "", err
		}
		return p, u.setMeta(target, hdr, true)

	case tar.TypeSymlink:
		if err := u.clear(target, fi, exists); err != nil {
			return "", err
		}
		// The link is stored as is: it is resolved inside the sandbox, whose
		// root is this root.
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return "", classify(err)
		}
		return p, u.setMeta(target, hdr, true)

	case tar.TypeLink:
		srcParent, srcBase, err := u.split(hdr.Linkname)
		if err != nil {
			return "", err
		}
		if srcBase == "" {
			return "", fmt.Errorf("hardlink to the root")
		}
		src := path.Join(srcParent, srcBase)
		if src == p {
			return p, nil
		}
		sfi, err := os.Lstat(u.host(src))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return "", fmt.Errorf("hardlink to %s: no such file in the image", hdr.Linkname)
		}
		if err != nil {
			return "", fmt.Errorf("hardlink to %s: %w", hdr.Linkname, classify(err))
		}
		if sfi.IsDir() {
			return "", fmt.Errorf("hardlink to directory %s", hdr.Linkname)
		}
		if err := u.clear(target, fi, exists); err != nil {
			return "", err
		}
		// link(2) does not follow a symlink src: the link is to the symlink.
		if err := os.Link(u.host(src), target); err != nil {
			return "", classify(err)
		}
		return p, nil // src's owner and mode are the link's

	case tar.TypeFifo:
		if err := u.clear(target, fi, exists); err != nil {
			return "", err
		}
		if err := syscall.Mkfifo(target, 0o600); err != nil {
			return "", classify(err)
		}
		return p, u.setMeta(target, hdr, true)
	}
	return "", nil
}

// clear removes what exists at target so that an entry can take its place.
func (u *unpacker) clear(target string, fi fs.FileInfo, exists bool) error {
	if !exists {
		return nil
	}
	if fi.IsDir() {
		return classify(u.removeAllHost(target))
	}
	return classify(os.Remove(target))
}

// removeAll removes the in-root path p (not following a final symlink).
func (u *unpacker) removeAll(p string) error {
	return u.removeAllHost(u.host(p))
}

func (u *unpacker) removeAllHost(h string) error {
	if !strings.HasPrefix(h, u.root+string(filepath.Separator)) {
		return fmt.Errorf("refusing to remove %s: not below the root %s", h, u.root)
	}
	return os.RemoveAll(h)
}

// writeFile creates target (which does not exist) with the content of r.
func (u *unpacker) writeFile(target string, r io.Reader) error {
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return classify(err)
	}
	w := &errWriter{w: f}
	_, err = io.CopyBuffer(w, r, u.buf)
	cerr := f.Close()
	switch {
	case w.err != nil:
		return classify(w.err)
	case err != nil:
		return fmt.Errorf("read layer: %w", err)
	case cerr != nil:
		return classify(cerr)
	}
	return nil
}

// errWriter remembers its write errors, to tell them from read errors. It
// hides f's ReadFrom so that io.CopyBuffer uses Write.
type errWriter struct {
	w   io.Writer
	err error
}

func (w *errWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	if err != nil {
		w.err = err
	}
	return n, err
}

// setMeta applies an entry's owner, mode, extended attributes and (unless it
// is a directory, done at the end of the layer) times to target, which is a
// file, directory or symlink this layer just created or kept.
func (u *unpacker) setMeta(target string, hdr *tar.Header, times bool) error {
	if u.chown {
		if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
			return classify(err)
		}
	}
	if hdr.Typeflag != tar.TypeSymlink {
		// After chown, which clears the set-id bits.
		if err := os.Chmod(target, fileMode(hdr.Mode)); err != nil {
			return classify(err)
		}
	}
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok || !(name == "security.capability" || strings.HasPrefix(name, "user.")) {
			continue
		}
		// Best effort: not every file system takes them.
		unix.Lsetxattr(target, name, []byte(v), 0)
	}
	if times {
		if err := setTimes(target, hdr); err != nil {
			return classify(err)
		}
	}
	return nil
}

func setTimes(target string, hdr *tar.Header) error {
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// fileMode converts a tar mode (permission and set-id/sticky bits) to an
// os.FileMode for os.Chmod.
func fileMode(m int64) os.FileMode {
	fm := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// opaque empties the in-root directory dir of everything that this layer
// did not add.
func (u *unpacker) opaque(dir string, added map[string]bool) error {
	if err := os.MkdirAll(u.host(dir), 0o755); err != nil {
		return classify(err)
	}
	var walk func(d string) error
	walk = func(d string) error {
		ents, err := os.ReadDir(u.host(d))
		if err != nil {
			return classify(err)
		}
		for _, e := range ents {
			p := path.Join(d, e.Name())
			if !added[p] {
				if err := u.removeAll(p); err != nil {
					return classify(err)
				}
				continue
			}
			if e.IsDir() { // not a symlink to one: DirEntry does not follow
				if err := walk(p); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk(dir)
}
