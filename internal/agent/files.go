package agent

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/stasis-sandbox/stasis/internal/agentproto"
	http "github.com/stasis-sandbox/stasis/internal/minihttp" // net/http's API, not its weight (see the package)
)

// apiError is an error with its HTTP status and protocol code.
type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func invalidPath(msg string) *apiError {
	return &apiError{http.StatusBadRequest, agentproto.CodeInvalidPath, msg}
}

// cleanPath validates a client-supplied path: it must be absolute and contain
// no ".." element. Redundant slashes and "." elements are cleaned away.
func cleanPath(p string) (string, error) {
	switch {
	case p == "":
		return "", invalidPath("missing path")
	case !strings.HasPrefix(p, "/"):
		return "", invalidPath("path must be absolute: " + strconv.Quote(p))
	case strings.IndexByte(p, 0) >= 0:
		return "", invalidPath("path contains a NUL byte")
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return "", invalidPath("path must not contain \"..\": " + strconv.Quote(p))
		}
	}
	return filepath.Clean(p), nil
}

// fsError maps a filesystem error on p to an apiError. forWrite makes
// ENOTDIR (a file where a directory was expected on the way) an invalid path
// rather than not found.
func fsError(err error, p string, forWrite bool) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var errno syscall.Errno
	detail := err.Error()
	if errors.As(err, &errno) {
		detail = p + ": " + errno.Error()
	}
	switch {
	case errors.Is(err, syscall.ENOTDIR):
		if forWrite {
			return &apiError{http.StatusBadRequest, agentproto.CodeInvalidPath, detail}
		}
		return &apiError{http.StatusNotFound, agentproto.CodeNotFound, detail}
	case errors.Is(err, fs.ErrNotExist):
		return &apiError{http.StatusNotFound, agentproto.CodeNotFound, detail}
	case errors.Is(err, syscall.EISDIR):
		return &apiError{http.StatusBadRequest, agentproto.CodeIsDirectory, detail}
	case errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.ELOOP), errors.Is(err, syscall.EINVAL):
		return &apiError{http.StatusBadRequest, agentproto.CodeInvalidPath, detail}
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		return &apiError{http.StatusForbidden, agentproto.CodePermissionDenied, detail}
	case errors.Is(err, syscall.EBUSY), errors.Is(err, syscall.ETXTBSY):
		// A mount point (such as the agent's own binary) or a running
		// program: the client may not replace it, as with EROFS.
		return &apiError{http.StatusForbidden, agentproto.CodePermissionDenied, detail}
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return &apiError{http.StatusInsufficientStorage, agentproto.CodeNoSpace, detail}
	}
	return &apiError{http.StatusInternalServerError, agentproto.CodeInternal, detail}
}

func writeAPIError(w http.ResponseWriter, e *apiError) {
	writeError(w, e.status, e.code, e.msg)
}

func (s *Server) handleFiles(w http.ResponseWriter, r *http.Request) {
	if !allowMethods(w, r, http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut) {
		return
	}
	p, err := cleanPath(r.URL.Query().Get("path"))
	if err != nil {
		writeAPIError(w, err.(*apiError))
		return
	}
	if r.Method == http.MethodPost || r.Method == http.MethodPut {
		s.writeFile(w, r, p)
		return
	}
	s.readFile(w, r, p, r.URL.Query().Get("format"))
}

func (s *Server) handleStat(w http.ResponseWriter, r *http.Request) {
	if !allowMethods(w, r, http.MethodGet) {
		return
	}
	p, err := cleanPath(r.URL.Query().Get("path"))
	if err != nil {
		writeAPIError(w, err.(*apiError))
		return
	}
	fi, err := os.Stat(p)
	if err != nil {
		writeAPIError(w, fsError(err, p, false))
		return
	}
	writeJSON(w, http.StatusOK, agentproto.FileInfo{
		Name:  fi.Name(),
		Size:  fi.Size(),
		Mode:  unixPerm(fi.Mode()),
		IsDir: fi.IsDir(),
		Mtime: fi.ModTime().UTC(),
	})
}

func unixPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

// smallUnknown is how much of a file that claims size 0 (empty, or procfs and
// friends) is read ahead to send an exact Content-Length.
const smallUnknown = 1 << 20

func (s *Server) readFile(w http.ResponseWriter, r *http.Request, p, format string) {
	if format != "" && format != "zip" {
		writeError(w, http.StatusBadRequest, agentproto.CodeBadRequest, "unknown format "+strconv.Quote(format))
		return
	}
	f, err := os.Open(p)
	if err != nil {
		writeAPIError(w, fsError(err, p, false))
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		writeAPIError(w, fsError(err, p, false))
		return
	}
	// Superserve's downloadDir streams a regular file back as-is, not zipped.
	if format == "zip" && fi.IsDir() {
		s.writeZip(w, p, fi)
		return
	}
	if fi.IsDir() {
		writeError(w, http.StatusBadRequest, agentproto.CodeIsDirectory, p+" is a directory (use format=zip)")
		return
	}
	if !fi.Mode().IsRegular() {
		// Reading a FIFO or device could block forever or never end.
		writeError(w, http.StatusBadRequest, agentproto.CodeInvalidPath, p+" is not a regular file")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	size := fi.Size()
	if size == 0 {
		buf, err := io.ReadAll(io.LimitReader(f, smallUnknown+1))
		if err != nil {
			writeAPIError(w, fsError(err, p, false))
			return
		}
		if len(buf) <= smallUnknown {
			w.Header().Set("Content-Length", strconv.Itoa(len(buf)))
			w.WriteHeader(http.StatusOK)
			if r.Method != http.MethodHead {
				w.Write(buf)
			}
			return
		}
		// A large pseudo-file: stream it chunked.
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			copyBig(w, io.MultiReader(bytes.NewReader(buf), f), -1)
		}
		return
	}
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	// io.Copy hands a regular file to the connection's ReadFrom: sendfile,
	// which gVisor runs inside the sentry without copying through the agent
	// (100 MB: 1.7 s -> 1.0 s on a loaded host; copyBig's 1 MiB reads and
	// writes cost a second copy and the syscalls' round trips).
	if n, err := io.Copy(w, io.LimitReader(f, size)); err != nil && n < size {
		// Headers are gone; cut the connection so the client sees a short body.
		panic(http.ErrAbortHandler)
	}
}

// writeZip streams a zip of the directory (or single file) p. Entry names
// start with p's base name: "dir/", "dir/a.txt", "dir/sub/", "dir/sub/b.txt".
// Symlinks and special files are skipped, as are entries that vanish or cannot
// be opened during the walk.
func (s *Server) writeZip(w http.ResponseWriter, root string, rootInfo fs.FileInfo) {
	prefix := filepath.Base(root)
	if root == "/" {
		prefix = ""
	}
	w.Header().Set("Content-Type", "application/zip")
	if prefix != "" {
		w.Header().Set("Content-Disposition", `attachment; filename="`+strings.ReplaceAll(prefix, `"`, "_")+`.zip"`)
	}
	w.WriteHeader(http.StatusOK)

	zw := zip.NewWriter(w)
	zw.RegisterCompressor(zip.Deflate, func(out io.Writer) (io.WriteCloser, error) {
		return flate.NewWriter(out, flate.BestSpeed)
	})
	var err error
	if !rootInfo.IsDir() {
		err = addZipFile(zw, root, prefix, rootInfo)
	} else {
		err = filepath.WalkDir(root, func(p string, d fs.DirEntry, werr error) error {
			if werr != nil {
				if p == root {
					return werr
				}
				if d != nil && d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if d.Type()&fs.ModeSymlink != 0 {
				return nil
			}
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			name := path.Join(prefix, filepath.ToSlash(rel))
			info, err := d.Info()
			if err != nil {
				return nil // vanished
			}
			if d.IsDir() {
				if name == "" || name == "." {
					return nil
				}
				hdr := &zip.FileHeader{Name: name + "/", Method: zip.Store, Modified: info.ModTime()}
				hdr.SetMode(info.Mode())
				_, err := zw.CreateHeader(hdr)
				return err
			}
			if !info.Mode().IsRegular() {
				return nil
			}
			return addZipFile(zw, p, name, info)
		})
	}
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		// The status line is already out; abort so the client gets a broken
		// stream, not a zip that looks complete.
		panic(http.ErrAbortHandler)
	}
}

func addZipFile(zw *zip.Writer, p, name string, info fs.FileInfo) error {
	f, err := os.Open(p)
	if err != nil {
		return nil // vanished or unreadable: skip
	}
	defer f.Close()
	hdr, err := zip.FileInfoHeader(info)
	if err != nil {
		return err
	}
	hdr.Name = name
	hdr.Method = zip.Deflate
	fw, err := zw.CreateHeader(hdr)
	if err != nil {
		return err
	}
	_, err = io.Copy(fw, f)
	return err
}

// writeFile stores the request body at p: into a temporary file in the same
// directory, then renamed over p. Missing parent directories are created
// (mode 0755). Files and created directories belong to the default user. A
// new file gets mode 0644; replacing a file keeps its permission bits.
func (s *Server) writeFile(w http.ResponseWriter, r *http.Request, p string) {
	acct, err := lookupAccount(s.cfg.DefaultUser)
	if err != nil {
		writeError(w, http.StatusInternalServerError, agentproto.CodeInternal, "default user: "+err.Error())
		return
	}
	n, err := writeFileAtomic(p, r.Body, r.ContentLength, acct)
	if err != nil {
		writeAPIError(w, fsError(err, p, true))
		return
	}
	writeJSON(w, http.StatusOK, agentproto.WriteResult{Path: p, Size: n})
}

func writeFileAtomic(p string, body io.Reader, size int64, acct *account) (int64, error) {
	if p == "/" {
		return 0, &apiError{http.StatusBadRequest, agentproto.CodeIsDirectory, "/ is a directory"}
	}
	mode := fs.FileMode(0o644)
	if fi, err := os.Stat(p); err == nil {
		if fi.IsDir() {
			return 0, &apiError{http.StatusBadRequest, agentproto.CodeIsDirectory, p + " is a directory"}
		}
		mode = fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	}
	dir := filepath.Dir(p)
	if err := mkdirAllOwned(dir, acct); err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(dir, ".stasis-upload-*")
	if err != nil {
		return 0, err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	n, err := copyBig(tmp, body, size)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			return n, err // the file system's fault
		}
		return n, &apiError{http.StatusBadRequest, agentproto.CodeBadRequest, "reading request body: " + err.Error()}
	}
	if err := chownTo(tmp, acct); err != nil {
		return n, err
	}
	if err := tmp.Chmod(mode); err != nil {
		return n, err
	}
	if err := tmp.Close(); err != nil {
		return n, err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return n, err
	}
	ok = true
	return n, nil
}

// mkdirAllOwned is os.MkdirAll that makes every directory it creates 0755 and
// owned by acct.
func mkdirAllOwned(dir string, acct *account) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAllOwned(parent, acct); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return mkdirAllOwned(dir, acct) // raced with someone: recheck
		}
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil { // whatever the umask says
		return err
	}
	return lchown(dir, acct)
}

// chownTo gives f to acct. Without the privilege to do so (agent not root),
// files simply stay the agent's.
func chownTo(f *os.File, acct *account) error {
	if err := f.Chown(int(acct.uid), int(acct.gid)); err != nil && !(errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0) {
		return err
	}
	return nil
}

func lchown(p string, acct *account) error {
	if err := os.Lchown(p, int(acct.uid), int(acct.gid)); err != nil && !(errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0) {
		return err
	}
	return nil
}

// copyBig copies with a 1 MiB buffer, for what sendfile cannot take (uploads,
// pseudo-files). Inside gVisor every read and write is an intercepted
// syscall, so io.Copy's 32 KiB chunks make big transfers several times slower.
// A copy of size bytes (if known, >= 0) takes a buffer of no more than that:
// each large buffer grows the Go runtime's metadata for good, and every page
// of it is in each snapshot of the sandbox (with the CA bundle's copies, up
// to 0.3 MiB of a 10 MB sandbox's checkpoint; docs/density/NOTES.md).
func copyBig(dst io.Writer, src io.Reader, size int64) (int64, error) {
	n := int64(maxCopyBuffer)
	if size >= 0 && size < n {
		n = max(size, minCopyBuffer) // a body longer than announced still copies, in more rounds
	}
	buf := make([]byte, n)
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
}

const (
	maxCopyBuffer = 1 << 20
	minCopyBuffer = 4 << 10
)
