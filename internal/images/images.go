// Package images builds and caches the built-in sandbox images.
//
// An image is a root directory that sandboxes share read-only (their writes
// go to an overlay). Images live in one directory, each built image in its
// own subdirectory named after the image and its recipe version:
//
//	DIR/stasis-minimal-r1/image.json   metadata (user, workdir, env, build time)
//	DIR/stasis-minimal-r1/rootfs/      the root filesystem
//	DIR/.stasis-minimal.lock           flock held while building
//	DIR/.tmp-stasis-minimal-*          a build in progress (or a crashed one)
//	DIR/stasis-base-debootstrap.log    the last stasis/base build's debootstrap output
//	                                   (stasis-code-interpreter-debootstrap.log likewise)
//
// A build happens in a temporary directory next to its final location and is
// renamed into place only once complete, so a crashed build is never used; its
// leftovers are removed by the next build of that image. A file lock makes
// concurrent builders (other goroutines or processes) wait for the first one
// and use its result.
//
// Changing a recipe means bumping its version: the new version builds into a
// new directory and the old one is left alone, because running or paused
// sandboxes may still have it as their lower layer.
package images

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/stasis-sandbox/stasis/internal/fsutil"
)

// ErrUnknown is returned for an image name that is not a built-in image.
var ErrUnknown = errors.New("unknown image")

// ErrNotBuilt is returned by Get when a built-in image has not been built yet.
var ErrNotBuilt = errors.New("image not built")

// formatVersion is the version of the on-disk layout and image.json.
const formatVersion = 1

// AgentMountPoint is the path inside every image at which the runtime
// bind-mounts the stasis-agent binary; images carry an empty file there.
const AgentMountPoint = "/.stasis/agent"

// Image is a built image, ready to be used as a sandbox root.
type Image struct {
	Name    string    // "stasis/minimal", "stasis/base", "stasis/code-interpreter"
	RootFS  string    // absolute path of the root dir
	User    string    // default user for commands ("" = root)
	Workdir string    // default working dir
	Env     []string  // default env (PATH=..., LANG=...)
	BuiltAt time.Time // when the image was built
	// StartCmd is a shell command every sandbox of the image starts (as
	// User, in Workdir) and keeps running; "" for none. The sandbox is ready
	// once ReadyCmd exits 0.
	StartCmd string
	ReadyCmd string
}

// metadata is the content of image.json.
type metadata struct {
	Format   int       `json:"format"`
	Name     string    `json:"name"`
	Recipe   int       `json:"recipe"`
	User     string    `json:"user"`
	Workdir  string    `json:"workdir"`
	Env      []string  `json:"env"`
	StartCmd string    `json:"start_cmd,omitempty"`
	ReadyCmd string    `json:"ready_cmd,omitempty"`
	BuiltAt  time.Time `json:"built_at"`
}

// Manager builds images into, and finds them in, one directory.
// It is safe for concurrent use, also by several processes sharing the
// directory.
type Manager struct {
	dir string
	in  inputs
}

// Option configures a Manager.
type Option func(*Manager)

// WithApplets sets the static stasis-applets binary that builds of
// stasis/minimal install. Without it, builds use $STASIS_APPLETS, else the
// stasis-applets next to the running executable (where `make build` puts it).
func WithApplets(path string) Option { return func(m *Manager) { m.in.applets = path } }

// NewManager returns a Manager for images kept in dir. The directory is
// created on the first build.
func NewManager(dir string, opts ...Option) *Manager {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	m := &Manager{dir: dir}
	for _, o := range opts {
		o(m)
	}
	return m
}

// Dir returns the directory holding the images.
func (m *Manager) Dir() string { return m.dir }

// Builtins returns the names of the built-in images.
func Builtins() []string {
	names := make([]string, len(recipes))
	for i, r := range recipes {
		names[i] = r.name
	}
	return names
}

func lookup(name string) (*recipe, error) {
	for _, r := range recipes {
		if r.name == name {
			return r, nil
		}
	}
	return nil, fmt.Errorf("%w %q (built-in images: %s)", ErrUnknown, name, strings.Join(Builtins(), ", "))
}

// slug turns an image name into a file name: "stasis/base" -> "stasis-base".
func slug(name string) string { return strings.ReplaceAll(name, "/", "-") }

func (m *Manager) finalDir(r *recipe) string {
	return filepath.Join(m.dir, fmt.Sprintf("%s-r%d", slug(r.name), r.version))
}

func (m *Manager) tmpPrefix(r *recipe) string { return ".tmp-" + slug(r.name) + "-" }

// Get returns the built image called name. It fails with ErrUnknown for a name
// that is not a built-in image and with ErrNotBuilt when the current version of
// its recipe has not been built in the manager's directory.
func (m *Manager) Get(name string) (*Image, error) {
	r, err := lookup(name)
	if err != nil {
		return nil, err
	}
	return m.load(r)
}

func (m *Manager) load(r *recipe) (*Image, error) {
	dir := m.finalDir(r)
	notBuilt := func(why string) error {
		return fmt.Errorf("%w: %s in %s (%s; build it with `stasisd images build --images-dir %s %s`)",
			ErrNotBuilt, r.name, m.dir, why, m.dir, r.name)
	}
	b, err := os.ReadFile(filepath.Join(dir, "image.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, notBuilt("no " + filepath.Base(dir) + "/image.json")
	}
	if err != nil {
		return nil, fmt.Errorf("images: read metadata of %s: %w", r.name, err)
	}
	var md metadata
	if err := json.Unmarshal(b, &md); err != nil {
		return nil, notBuilt(fmt.Sprintf("corrupt image.json: %v", err))
	}
	if md.Format != formatVersion || md.Recipe != r.version || md.Name != r.name {
		return nil, notBuilt(fmt.Sprintf("image.json is for %s format %d recipe %d, want format %d recipe %d",
			md.Name, md.Format, md.Recipe, formatVersion, r.version))
	}
	img := &Image{
		Name:     r.name,
		RootFS:   filepath.Join(dir, "rootfs"),
		User:     md.User,
		Workdir:  md.Workdir,
		Env:      md.Env,
		BuiltAt:  md.BuiltAt,
		StartCmd: md.StartCmd,
		ReadyCmd: md.ReadyCmd,
	}
	if fi, err := os.Stat(filepath.Join(img.RootFS, AgentMountPoint)); err != nil || !fi.Mode().IsRegular() {
		return nil, notBuilt("rootfs lacks " + AgentMountPoint)
	}
	return img, nil
}

// Ensure returns the image called name, building it first if needed. Build
// output goes to progress (which may be nil). If another goroutine or process
// is building the same image, Ensure waits for it and returns its result.
func (m *Manager) Ensure(ctx context.Context, name string, progress io.Writer) (*Image, error) {
	r, err := lookup(name)
	if err != nil {
		return nil, err
	}
	if img, err := m.load(r); err == nil {
		return img, nil
	} else if !errors.Is(err, ErrNotBuilt) {
		return nil, err
	}
	if progress == nil {
		progress = io.Discard
	}
	if err := os.MkdirAll(m.dir, 0o755); err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	unlock, err := fsutil.LockFile(ctx, filepath.Join(m.dir, "."+slug(r.name)+".lock"), func() {
		fmt.Fprintf(progress, "[%s] waiting for another build of this image to finish...\n", r.name)
	})
	if err != nil {
		return nil, fmt.Errorf("images: lock %s: %w", r.name, err)
	}
	defer unlock()

	// Someone else may have finished the build while we waited.
	if img, err := m.load(r); err == nil {
		return img, nil
	} else if !errors.Is(err, ErrNotBuilt) {
		return nil, err
	}
	if err := m.build(ctx, r, progress); err != nil {
		return nil, fmt.Errorf("images: build %s: %w", r.name, err)
	}
	return m.load(r)
}

// build runs r's recipe into a temporary directory and renames it into place.
// The caller holds the image's lock.
func (m *Manager) build(ctx context.Context, r *recipe, progress io.Writer) error {
	start := time.Now()
	// Any temporary directory of this image is a leftover of a crashed build:
	// we hold the lock, so nobody else is building it.
	if err := m.removeStale(r, progress); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(m.dir, m.tmpPrefix(r))
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			removeTree(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return err
	}
	fmt.Fprintf(progress, "[%s] building into %s (recipe r%d)\n", r.name, m.finalDir(r), r.version)
	pw := &prefixWriter{w: progress, prefix: "[" + r.name + "] "}
	cfg, err := r.build(ctx, rootfs, m.in, pw)
	pw.Flush()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := writeAgentMountPoint(rootfs); err != nil {
		return err
	}
	md := metadata{
		Format:   formatVersion,
		Name:     r.name,
		Recipe:   r.version,
		User:     cfg.User,
		Workdir:  cfg.Workdir,
		Env:      cfg.Env,
		StartCmd: cfg.StartCmd,
		ReadyCmd: cfg.ReadyCmd,
		BuiltAt:  time.Now().UTC().Truncate(time.Second),
	}
	b, err := json.MarshalIndent(md, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "image.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	// Make the whole tree durable before it becomes visible under its final
	// name; a crash after the rename must not expose a half-written image.
	syscall.Sync()

	final := m.finalDir(r)
	if _, err := os.Lstat(final); err == nil {
		// A final directory that load rejected (hand-edited, or from an
		// incompatible format): move it out of the way, then drop it.
		aside, err := os.MkdirTemp(m.dir, m.tmpPrefix(r))
		if err != nil {
			return err
		}
		old := filepath.Join(aside, "old")
		if err := os.Rename(final, old); err != nil {
			return fmt.Errorf("move invalid %s aside: %w", final, err)
		}
		defer removeTree(aside)
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	ok = true
	fsutil.SyncDir(m.dir)
	fmt.Fprintf(progress, "[%s] built in %s\n", r.name, time.Since(start).Round(time.Millisecond))
	return nil
}

// removeStale deletes temporary directories left by crashed builds of r.
func (m *Manager) removeStale(r *recipe, progress io.Writer) error {
	stale, err := filepath.Glob(filepath.Join(m.dir, m.tmpPrefix(r)+"*"))
	if err != nil {
		return err
	}
	for _, d := range stale {
		fmt.Fprintf(progress, "[%s] removing leftover of an interrupted build: %s\n", r.name, d)
		if err := removeTree(d); err != nil {
			return fmt.Errorf("remove stale build dir: %w", err)
		}
	}
	return nil
}

func writeAgentMountPoint(rootfs string) error {
	p := filepath.Join(rootfs, AgentMountPoint)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, nil, 0o755); err != nil {
		return err
	}
	return os.Chmod(p, 0o755)
}

// prefixWriter writes each line it is given to w, prefixed. Carriage returns
// (progress bars) end a line too. It is not safe for concurrent use; give an
// exec.Cmd the same writer as Stdout and Stderr so that one goroutine copies.
type prefixWriter struct {
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	n := len(b)
	p.buf = append(p.buf, b...)
	for {
		i := strings.IndexAny(string(p.buf), "\r\n")
		if i < 0 {
			break
		}
		line := p.buf[:i]
		p.buf = p.buf[i+1:]
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		if _, err := fmt.Fprintf(p.w, "%s%s\n", p.prefix, line); err != nil {
			return n, err
		}
	}
	return n, nil
}

// Flush writes a last, unterminated line.
func (p *prefixWriter) Flush() {
	if len(strings.TrimSpace(string(p.buf))) > 0 {
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf)
	}
	p.buf = nil
}
