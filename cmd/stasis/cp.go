package main

import (
	"archive/zip"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
)

func (a *app) cpCmd() *command {
	return &command{
		name:  "cp",
		usage: "SRC DST [--progress] [--json]",
		summary: "copy files or directories into or out of a sandbox.\n" +
			"One side is ID:/absolute/path, the other a local path (write ./a:b for a local name with a colon):\n" +
			"  stasis cp ./dir ID:/home/user/dir     upload a tree\n" +
			"  stasis cp ID:/path/file ./local       download a file\n" +
			"  stasis cp ID:/path/file -             write a file to standard output (a directory: its zip archive)\n" +
			"  stasis cp - ID:/path/file             write standard input to a file\n" +
			"Like cp -r: copying into an existing directory puts SRC inside it.",
		minArgs: 2, maxArgs: 2,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			progress := fs.Bool("progress", false, "show progress on stderr even when it is not a terminal")
			jsonOut := fs.Bool("json", false, "print a JSON summary")
			return func(ctx context.Context, args []string) int {
				src, dst := parseLocation(args[0]), parseLocation(args[1])
				switch {
				case src.remote() && dst.remote():
					fmt.Fprintln(a.stderr, "stasis: cp: copying between sandboxes is not supported; copy through a local directory")
					return 2
				case !src.remote() && !dst.remote():
					fmt.Fprintln(a.stderr, "stasis: cp: one of SRC and DST must be a sandbox path, ID:/path")
					return 2
				}
				for _, l := range []location{src, dst} {
					if l.remote() && !strings.HasPrefix(l.path, "/") {
						fmt.Fprintf(a.stderr, "stasis: cp: sandbox path must be absolute: %s:%s\n", l.id, l.path)
						return 2
					}
				}
				stdio := src.path == "-" || dst.path == "-"
				if stdio && *jsonOut {
					fmt.Fprintln(a.stderr, "stasis: cp: --json does not go with - (standard input or output)")
					return 2
				}
				c, id, status := a.resolveOne(ctx, src.id+dst.id)
				if status != 0 {
					return status
				}
				sb, err := c.Connect(ctx, id)
				if err != nil {
					return a.fail(err, id)
				}
				// A meter would garble data going to the terminal.
				p := newProgress(a.stderr, *progress || (a.isTerminal(a.stderr) && !stdio))
				var sum *cpSummary
				if src.remote() {
					sum, err = a.download(ctx, sb, src.path, dst.path, p)
				} else {
					sum, err = a.upload(ctx, sb, src.path, dst.path, p)
				}
				p.finish()
				if err != nil {
					return a.fail(err, "")
				}
				if *jsonOut {
					return a.printJSON(sum)
				}
				return 0
			}
		},
	}
}

// location is a cp operand: a local path or ID:/path in a sandbox.
type location struct {
	id, path string
}

func (l location) remote() bool { return l.id != "" }

func parseLocation(s string) location {
	i := strings.IndexByte(s, ':')
	if i <= 0 || strings.ContainsAny(s[:i], `/\`) || s[:i] == "." || s[:i] == ".." {
		return location{path: s}
	}
	return location{id: s[:i], path: s[i+1:]}
}

type cpSummary struct {
	Direction string `json:"direction"`
	Source    string `json:"source"`
	Target    string `json:"target"`
	Files     int    `json:"files"`
	Bytes     int64  `json:"bytes"`
	Skipped   int    `json:"skipped,omitempty"`
}

// ---------------------------------------------------------------------------
// Upload

const uploadWorkers = 4

type localFile struct {
	path, rel string
	size      int64
	mode      fs.FileMode
}

func (a *app) upload(ctx context.Context, sb *stasis.Sandbox, src, dst string, p *progress) (*cpSummary, error) {
	if src == "-" {
		return a.uploadStdin(ctx, sb, dst, p)
	}
	st, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	trailingSlash := strings.HasSuffix(dst, "/")
	dst = path.Clean(dst)
	target := dst
	if trailingSlash {
		target = path.Join(dst, filepath.Base(src))
	} else if fi, err := sb.Files.Stat(ctx, dst); err == nil {
		if fi.IsDir {
			target = path.Join(dst, filepath.Base(filepath.Clean(src)))
		} else if st.IsDir() {
			return nil, fmt.Errorf("cp: %s is a file in the sandbox, cannot copy directory %s onto it", dst, src)
		}
	} // else: missing (or the server lacks /files/stat): create dst itself.
	sum := &cpSummary{Direction: "upload", Source: src, Target: sb.ID + ":" + target}

	var files []localFile
	var emptyDirs []string
	if st.IsDir() {
		root := filepath.Clean(src)
		err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			rel = filepath.ToSlash(rel)
			switch {
			case d.IsDir():
				ents, err := os.ReadDir(p)
				if err != nil {
					return err
				}
				if len(ents) == 0 {
					emptyDirs = append(emptyDirs, path.Join(target, rel))
				}
			case d.Type().IsRegular():
				info, err := d.Info()
				if err != nil {
					return err
				}
				files = append(files, localFile{path: p, rel: rel, size: info.Size(), mode: info.Mode()})
			default:
				fmt.Fprintf(a.stderr, "stasis: cp: skipping %s (not a regular file)\n", p)
				sum.Skipped++
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	} else if st.Mode().IsRegular() {
		files = []localFile{{path: src, rel: ".", size: st.Size(), mode: st.Mode()}}
	} else {
		return nil, fmt.Errorf("cp: %s is not a regular file or directory", src)
	}
	for _, f := range files {
		p.total += f.size
	}
	p.files = len(files)
	p.start("↑")

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan localFile)
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for range min(uploadWorkers, max(len(files), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range jobs {
				if err := uploadFile(ctx, sb, f, path.Join(target, f.rel), p); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
				}
			}
		}()
	}
feed:
	for _, f := range files {
		select {
		case jobs <- f:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// Per-file writes create parents but not empty directories, and do not
	// carry permissions: fix both up with a few shell commands.
	var fixups []string
	if len(emptyDirs) > 0 {
		q := make([]string, len(emptyDirs))
		for i, d := range emptyDirs {
			q[i] = shellQuote(d)
		}
		fixups = append(fixups, "mkdir -p "+strings.Join(q, " "))
	}
	byMode := map[fs.FileMode][]string{}
	var modes []fs.FileMode
	for _, f := range files {
		perm := f.mode.Perm()
		if byMode[perm] == nil {
			modes = append(modes, perm)
		}
		byMode[perm] = append(byMode[perm], shellQuote(path.Join(target, f.rel)))
	}
	for _, m := range modes {
		names := byMode[m]
		for len(names) > 0 { // keep each command line modest
			n := min(len(names), 200)
			fixups = append(fixups, fmt.Sprintf("chmod %o %s", m, strings.Join(names[:n], " ")))
			names = names[n:]
		}
	}
	if err := runBatches(ctx, sb, fixups); err != nil {
		return nil, err
	}
	sum.Files, sum.Bytes = len(files), p.done.Load()
	return sum, nil
}

// uploadStdin writes standard input to the file dst in the sandbox.
func (a *app) uploadStdin(ctx context.Context, sb *stasis.Sandbox, dst string, p *progress) (*cpSummary, error) {
	isDir := strings.HasSuffix(dst, "/")
	dst = path.Clean(dst)
	if fi, err := sb.Files.Stat(ctx, dst); err == nil && fi.IsDir {
		isDir = true
	}
	if isDir {
		return nil, fmt.Errorf("cp: %s:%s is a directory; standard input needs a file name, e.g. %s:%s", sb.ID, dst, sb.ID, path.Join(dst, "stdin"))
	}
	p.files = 1
	p.start("↑")
	// Seekable when stdin is a redirected file, so a retried upload can rewind.
	if err := sb.Files.WriteFrom(ctx, dst, &countingReadSeeker{f: a.stdin, p: p}); err != nil {
		return nil, fmt.Errorf("uploading standard input to %s: %w", dst, err)
	}
	p.fileDone()
	return &cpSummary{Direction: "upload", Source: "-", Target: sb.ID + ":" + dst, Files: 1, Bytes: p.done.Load()}, nil
}

func uploadFile(ctx context.Context, sb *stasis.Sandbox, f localFile, target string, p *progress) error {
	fh, err := os.Open(f.path)
	if err != nil {
		return err
	}
	defer fh.Close()
	r := &countingReadSeeker{f: fh, p: p}
	if err := sb.Files.WriteFrom(ctx, target, r); err != nil {
		return fmt.Errorf("uploading %s to %s: %w", f.path, target, err)
	}
	p.fileDone()
	return nil
}

// countingReadSeeker reports bytes read to the progress meter and
// un-counts them when an upload is rewound for a retry.
type countingReadSeeker struct {
	f *os.File
	p *progress
	n int64
}

func (c *countingReadSeeker) Read(b []byte) (int, error) {
	n, err := c.f.Read(b)
	c.n += int64(n)
	c.p.add(int64(n))
	return n, err
}

func (c *countingReadSeeker) Seek(off int64, whence int) (int64, error) {
	pos, err := c.f.Seek(off, whence)
	if err == nil {
		c.p.add(pos - c.n)
		c.n = pos
	}
	return pos, err
}

// runBatches runs shell commands joined with &&, in batches that keep each
// command line modest.
func runBatches(ctx context.Context, sb *stasis.Sandbox, cmds []string) error {
	const maxLine = 32 << 10
	for len(cmds) > 0 {
		line, n := cmds[0], 1
		for n < len(cmds) && len(line)+len(cmds[n])+4 < maxLine {
			line += " && " + cmds[n]
			n++
		}
		cmds = cmds[n:]
		res, err := sb.Commands.Run(ctx, line, nil)
		if err != nil {
			return fmt.Errorf("setting directories and permissions: %w", err)
		}
		if res.ExitCode != 0 {
			return fmt.Errorf("setting directories and permissions: exit %d: %s", res.ExitCode, strings.TrimSpace(res.Stderr))
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Download

func (a *app) download(ctx context.Context, sb *stasis.Sandbox, src, dst string, p *progress) (*cpSummary, error) {
	src = path.Clean(src)
	var (
		isDir bool
		size  int64 = -1
		perm  fs.FileMode
		body  io.ReadCloser
	)
	fi, err := sb.Files.Stat(ctx, src)
	switch {
	case err == nil:
		isDir, size, perm = fi.IsDir, fi.Size, fi.Mode.Perm()
	case errors.Is(err, stasis.ErrValidation) || errors.Is(err, context.Canceled) || errors.Is(err, stasis.ErrTimeout):
		return nil, err
	default:
		// Missing, or a server without /files/stat: ask /files itself.
		// A directory is refused there, so anything but success or 404
		// means "try it as a directory".
		rc, oerr := sb.Files.Open(ctx, src)
		switch {
		case oerr == nil:
			body = rc
		case errors.Is(oerr, stasis.ErrNotFound):
			return nil, fmt.Errorf("cp: %s:%s: no such file or directory", sb.ID, src)
		default:
			isDir = true
		}
	}
	if isDir && dst == "-" {
		if a.isTerminal(a.stdout) {
			return nil, fmt.Errorf("cp: %s:%s is a directory: its zip archive is not written to a terminal (redirect standard output, or give a local directory)", sb.ID, src)
		}
		p.start("↓")
		n, err := sb.Files.DownloadDirTo(ctx, src, &countingWriter{w: a.stdout, p: p})
		if err != nil {
			return nil, err
		}
		return &cpSummary{Direction: "download", Source: sb.ID + ":" + src, Target: "-", Bytes: n}, nil
	}
	if isDir {
		return a.downloadDir(ctx, sb, src, dst, p)
	}
	if body == nil {
		if body, err = sb.Files.Open(ctx, src); err != nil {
			if errors.Is(err, stasis.ErrNotFound) {
				return nil, fmt.Errorf("cp: %s:%s: no such file or directory", sb.ID, src)
			}
			return nil, err
		}
	}
	defer body.Close()
	if size >= 0 {
		p.total = size
	}
	p.files = 1
	if dst == "-" {
		p.start("↓")
		n, err := io.Copy(a.stdout, &countingReader{r: body, p: p})
		if err != nil {
			return nil, fmt.Errorf("cp: %s:%s to standard output: %w", sb.ID, src, err)
		}
		p.fileDone()
		return &cpSummary{Direction: "download", Source: sb.ID + ":" + src, Target: "-", Files: 1, Bytes: n}, nil
	}
	target := dst
	if st, err := os.Stat(dst); (err == nil && st.IsDir()) || strings.HasSuffix(dst, string(os.PathSeparator)) {
		target = filepath.Join(dst, path.Base(src))
	}
	if perm == 0 {
		perm = 0o644
	}
	p.start("↓")
	n, err := writeFileAtomic(target, &countingReader{r: body, p: p}, perm)
	if err != nil {
		return nil, err
	}
	p.fileDone()
	return &cpSummary{Direction: "download", Source: sb.ID + ":" + src, Target: target, Files: 1, Bytes: n}, nil
}

func (a *app) downloadDir(ctx context.Context, sb *stasis.Sandbox, src, dst string, p *progress) (*cpSummary, error) {
	if src == "/" {
		return nil, errors.New("cp: refusing to download the whole filesystem")
	}
	target := dst
	if st, err := os.Stat(dst); err == nil {
		if !st.IsDir() {
			return nil, fmt.Errorf("cp: %s exists and is not a directory", dst)
		}
		target = filepath.Join(dst, path.Base(src))
	}
	tmp, err := os.CreateTemp("", "stasis-cp-*.zip")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	p.start("↓")
	if _, err := sb.Files.DownloadDirTo(ctx, src, &countingWriter{w: tmp, p: p}); err != nil {
		return nil, err
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, err
	}
	zr, err := zip.NewReader(tmp, size)
	if err != nil {
		return nil, fmt.Errorf("cp: reading the archive of %s:%s: %w", sb.ID, src, err)
	}
	files, n, err := extractZip(zr, path.Base(src), target)
	if err != nil {
		return nil, err
	}
	return &cpSummary{Direction: "download", Source: sb.ID + ":" + src, Target: target, Files: files, Bytes: n}, nil
}

// extractZip writes the archive's entries below target, dropping the
// leading "base/" the server puts on every entry. Entries escaping target
// and symlinks are refused.
func extractZip(zr *zip.Reader, base, target string) (files int, total int64, err error) {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return 0, 0, err
	}
	prefix := base + "/"
	for _, f := range zr.File {
		name := f.Name
		if name == base || name == prefix {
			continue
		}
		name = strings.TrimPrefix(name, prefix)
		if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, `\`) {
			return files, total, fmt.Errorf("cp: archive entry %q is not a relative path", f.Name)
		}
		clean := path.Clean(name)
		if clean == ".." || strings.HasPrefix(clean, "../") {
			return files, total, fmt.Errorf("cp: archive entry %q escapes the target directory", f.Name)
		}
		out := filepath.Join(target, filepath.FromSlash(clean))
		mode := f.Mode()
		switch {
		case mode&fs.ModeSymlink != 0:
			continue
		case mode.IsDir() || strings.HasSuffix(name, "/"):
			if err := os.MkdirAll(out, 0o755); err != nil {
				return files, total, err
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return files, total, err
		}
		rc, err := f.Open()
		if err != nil {
			return files, total, fmt.Errorf("cp: %s: %w", f.Name, err)
		}
		perm := mode.Perm()
		if perm == 0 {
			perm = 0o644
		}
		n, err := writeFileAtomic(out, rc, perm)
		rc.Close()
		if err != nil {
			return files, total, err
		}
		files++
		total += n
	}
	return files, total, nil
}

// writeFileAtomic writes r to a temporary file next to name and renames it
// into place.
func writeFileAtomic(name string, r io.Reader, perm fs.FileMode) (int64, error) {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".stasis-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, r)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), name)
	}
	if err != nil {
		return 0, fmt.Errorf("writing %s: %w", name, err)
	}
	return n, nil
}

type countingReader struct {
	r io.Reader
	p *progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.p.add(int64(n))
	return n, err
}

type countingWriter struct {
	w io.Writer
	p *progress
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.p.add(int64(n))
	return n, err
}

// ---------------------------------------------------------------------------
// Progress

// progress prints a transfer meter on stderr, redrawn in place, when
// enabled. Transfers that finish within a moment print nothing.
type progress struct {
	w       io.Writer
	enabled bool
	total   int64 // bytes expected, 0 if unknown
	files   int

	done      atomic.Int64
	filesDone atomic.Int64
	arrow     string
	stop      chan struct{}
	wg        sync.WaitGroup
	drawn     bool
	began     time.Time
}

func newProgress(w io.Writer, enabled bool) *progress {
	return &progress{w: w, enabled: enabled}
}

func (p *progress) add(n int64) { p.done.Add(n) }
func (p *progress) fileDone()   { p.filesDone.Add(1) }

func (p *progress) start(arrow string) {
	if !p.enabled || p.stop != nil {
		return
	}
	p.arrow, p.stop, p.began = arrow, make(chan struct{}), time.Now()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.draw()
			case <-p.stop:
				return
			}
		}
	}()
}

func (p *progress) draw() {
	done := p.done.Load()
	line := fmt.Sprintf("%s %s", p.arrow, humanBytes(done))
	if p.total > 0 {
		line += fmt.Sprintf(" / %s (%d%%)", humanBytes(p.total), done*100/p.total)
	}
	if p.files > 1 {
		line += fmt.Sprintf("  %d/%d files", p.filesDone.Load(), p.files)
	}
	if secs := time.Since(p.began).Seconds(); secs > 0.5 {
		line += fmt.Sprintf("  %s/s", humanBytes(int64(float64(done)/secs)))
	}
	fmt.Fprintf(p.w, "\r%-60s", line)
	p.drawn = true
}

func (p *progress) finish() {
	if p.stop == nil {
		return
	}
	close(p.stop)
	p.wg.Wait()
	if p.drawn {
		p.draw()
		fmt.Fprintln(p.w)
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
