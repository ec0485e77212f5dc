package stasis

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Files reads and writes files in a sandbox. Paths must be absolute and
// must not contain ".." segments. A paused sandbox is resumed
// transparently.
type Files struct {
	s *Sandbox
}

func validatePath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return errorf(ErrValidation, "path must be absolute: %q", p)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return errorf(ErrValidation, "path must not contain \"..\": %q", p)
		}
	}
	return nil
}

// Open streams a file's contents. The caller must close the reader.
func (f *Files) Open(ctx context.Context, path string) (io.ReadCloser, error) {
	return f.get(ctx, path, false)
}

func (f *Files) get(ctx context.Context, path string, zip bool) (io.ReadCloser, error) {
	if err := validatePath(path); err != nil {
		return nil, err
	}
	q := url.Values{"path": {path}}
	if zip {
		q.Set("format", "zip")
	}
	var resp *http.Response
	err := f.s.withToken(ctx, func(token string) error {
		var err error
		resp, err = f.s.c.do(ctx, f.s.dataCall(http.MethodGet, "/files", q, token))
		return err
	})
	if err != nil {
		return nil, err
	}
	return &ctxReadCloser{rc: resp.Body, ctx: ctx, what: "GET /files"}, nil
}

// Read returns a file's contents.
func (f *Files) Read(ctx context.Context, path string) ([]byte, error) {
	rc, err := f.Open(ctx, path)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// ReadText returns a file's contents as a string.
func (f *Files) ReadText(ctx context.Context, path string) (string, error) {
	b, err := f.Read(ctx, path)
	return string(b), err
}

// Write creates or replaces a file, creating parent directories.
func (f *Files) Write(ctx context.Context, path string, data []byte) error {
	return f.WriteFrom(ctx, path, bytes.NewReader(data))
}

// WriteFrom streams r into a file, creating parent directories. If the
// sandbox's token must be refreshed mid-call the upload is retried, which
// needs r to be an io.Seeker (as *os.File and *bytes.Reader are);
// otherwise that error is returned.
func (f *Files) WriteFrom(ctx context.Context, path string, r io.Reader) error {
	if err := validatePath(path); err != nil {
		return err
	}
	var start int64 = -1
	seeker, _ := r.(io.Seeker)
	if seeker != nil {
		if off, err := seeker.Seek(0, io.SeekCurrent); err == nil {
			start = off
		}
	}
	q := url.Values{"path": {path}}
	first := true
	return f.s.withToken(ctx, func(token string) error {
		if !first {
			if start < 0 {
				return fmt.Errorf("stasis: upload of %s cannot be retried: reader is not seekable", path)
			}
			if _, err := seeker.Seek(start, io.SeekStart); err != nil {
				return fmt.Errorf("stasis: rewinding upload of %s: %w", path, err)
			}
		}
		first = false
		cl := f.s.dataCall(http.MethodPost, "/files", q, token)
		// Hide the concrete type so net/http streams it and does not
		// close it; it still gets a Content-Length when known.
		cl.body = io.NopCloser(r)
		if br, ok := r.(*bytes.Reader); ok {
			cl.body = br
		}
		resp, err := f.s.c.do(ctx, cl)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return resp.Body.Close()
	})
}

// DownloadDir returns a zip archive of a directory. Entries are prefixed
// with the directory's base name (for /app/out: "out/a.txt"); symlinks are
// skipped. If path is a regular file the server returns its raw bytes.
func (f *Files) DownloadDir(ctx context.Context, path string) ([]byte, error) {
	var buf bytes.Buffer
	if _, err := f.DownloadDirTo(ctx, path, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// DownloadDirTo streams the zip archive of a directory (see DownloadDir)
// into w and returns the number of bytes written.
func (f *Files) DownloadDirTo(ctx context.Context, path string, w io.Writer) (int64, error) {
	rc, err := f.get(ctx, path, true)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	return io.Copy(w, rc)
}

// FileInfo describes a file in a sandbox (see Files.Stat).
type FileInfo struct {
	Name    string      `json:"name"`
	Size    int64       `json:"size"`
	Mode    fs.FileMode `json:"mode"`
	IsDir   bool        `json:"is_dir"`
	ModTime time.Time   `json:"mtime"`
}

// UnmarshalJSON accepts mode as a number or an octal string and mtime as
// RFC 3339 or Unix seconds.
func (fi *FileInfo) UnmarshalJSON(b []byte) error {
	var w struct {
		Name  string          `json:"name"`
		Size  int64           `json:"size"`
		Mode  json.RawMessage `json:"mode"`
		IsDir bool            `json:"is_dir"`
		MTime json.RawMessage `json:"mtime"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*fi = FileInfo{Name: w.Name, Size: w.Size, IsDir: w.IsDir}
	var n uint32
	var s string
	switch {
	case json.Unmarshal(w.Mode, &n) == nil:
		fi.Mode = fs.FileMode(n)
	case json.Unmarshal(w.Mode, &s) == nil:
		if v, err := strconv.ParseUint(strings.TrimPrefix(s, "0o"), 8, 32); err == nil {
			fi.Mode = fs.FileMode(v)
		}
	}
	if fi.IsDir {
		fi.Mode |= fs.ModeDir
	}
	var t time.Time
	var secs float64
	switch {
	case json.Unmarshal(w.MTime, &t) == nil:
		fi.ModTime = t
	case json.Unmarshal(w.MTime, &secs) == nil:
		fi.ModTime = time.Unix(0, int64(secs*1e9))
	}
	return nil
}

// Stat describes a file or directory. This uses GET /files/stat, a stasis
// extension; servers without it answer 404 (ErrNotFound) for every path.
func (f *Files) Stat(ctx context.Context, path string) (*FileInfo, error) {
	if err := validatePath(path); err != nil {
		return nil, err
	}
	q := url.Values{"path": {path}}
	var fi FileInfo
	err := f.s.withToken(ctx, func(token string) error {
		cl := f.s.dataCall(http.MethodGet, "/files/stat", q, token)
		return f.s.c.doJSON(ctx, cl, &fi)
	})
	if err != nil {
		return nil, err
	}
	return &fi, nil
}

// ctxReadCloser reports a read that failed because ctx ended as ErrTimeout
// or context.Canceled.
type ctxReadCloser struct {
	rc   io.ReadCloser
	ctx  context.Context
	what string
}

func (r *ctxReadCloser) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if err != nil && err != io.EOF && r.ctx.Err() != nil {
		err = ctxError(r.what, err, r.ctx, nil)
	}
	return n, err
}

func (r *ctxReadCloser) Close() error { return r.rc.Close() }
