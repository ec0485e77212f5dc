// Package oci turns OCI (and Docker) images from a registry into image root
// directories that sandboxes can use, the same kind of directory as the
// built-in images of package images.
//
// A Puller caches unpacked images in one directory, keyed by the digest of
// the image manifest (the platform-specific one when the reference names an
// index):
//
//	DIR/sha256-<hex>/image.json     metadata (ref, digest, env, workdir, user, ...)
//	DIR/sha256-<hex>/rootfs/        the unpacked root filesystem
//	DIR/.sha256-<hex>.lock          flock held while unpacking
//	DIR/.tmp-sha256-<hex>-*         an unpack in progress (or a crashed one)
//	DIR/.refs/<hash of ref>         last digest a reference resolved to
//
// The directory names use "sha256-" rather than "sha256:" because a colon
// is a separator in overlayfs mount options and in many path lists.
//
// As in package images, an image is unpacked in a temporary directory next
// to its final location and renamed into place once complete; a file lock
// per digest makes concurrent pulls (goroutines or processes) of the same
// image unpack it once, and leftovers of crashed pulls are removed by the
// next pull of that image. Unpacked images are never modified or removed by
// the Puller: sandboxes share them read-only.
package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/stasis-sandbox/stasis/internal/fsutil"
)

// AgentMountPoint is the path inside every image at which the runtime
// bind-mounts the stasis-agent binary; images carry an empty file there. It
// is the same as images.AgentMountPoint.
const AgentMountPoint = "/.stasis/agent"

// ErrPullFailed is wrapped by every failure to get an image from its
// registry: an invalid reference, authentication, a missing repository,
// tag or digest, an unreachable registry, a corrupt or malformed image.
// Such errors read "pull REF: reason". Failures of the local machine
// (a full disk) do not wrap it.
var ErrPullFailed = errors.New("image pull failed")

// formatVersion is the version of the on-disk layout and image.json.
const formatVersion = 1

// Image is a pulled image, unpacked and ready to be used as a sandbox root.
type Image struct {
	Ref        string   // the reference as given to Pull
	Digest     string   // manifest digest, "sha256:..."
	RootFS     string   // absolute path of the unpacked root
	Env        []string // from the image config
	Workdir    string   // config WorkingDir ("" in the config => "/")
	User       string   // config User: "" (root), "name", "uid", "uid:gid", "name:group"
	Cmd        []string // config Cmd
	Entrypoint []string // config Entrypoint
}

// metadata is the content of image.json.
type metadata struct {
	Format       int       `json:"format"`
	Ref          string    `json:"ref"` // reference of the first pull
	Digest       string    `json:"digest"`
	OS           string    `json:"os,omitempty"`
	Architecture string    `json:"architecture,omitempty"`
	Env          []string  `json:"env"`
	Workdir      string    `json:"workdir"`
	User         string    `json:"user"`
	Cmd          []string  `json:"cmd,omitempty"`
	Entrypoint   []string  `json:"entrypoint,omitempty"`
	Layers       []string  `json:"layers"`
	Size         int64     `json:"size"` // compressed size of the layers
	PulledAt     time.Time `json:"pulled_at"`
}

// refRecord is the content of a file in DIR/.refs.
type refRecord struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
}

// Option configures a Puller.
type Option func(*Puller)

// WithInsecureRegistries lets the Puller talk plain HTTP to the given
// registries ("host" or "host:port"). Loopback registries (127.0.0.0/8,
// localhost, [::1]) are always allowed plain HTTP.
func WithInsecureRegistries(hosts ...string) Option {
	return func(p *Puller) { p.insecure = append(p.insecure, hosts...) }
}

// WithProgress sets where Pull reports progress when it is given no writer
// of its own.
func WithProgress(w io.Writer) Option {
	return func(p *Puller) { p.progress = w }
}

// Puller pulls images from registries into a cache directory. It is safe for
// concurrent use, also by several processes sharing the directory.
//
// Registry credentials come from the Docker config (~/.docker/config.json,
// or $DOCKER_CONFIG/config.json, including credential helpers).
type Puller struct {
	dir      string
	insecure []string
	progress io.Writer
	platform v1.Platform
	keychain authn.Keychain
}

// NewPuller returns a Puller caching unpacked images in dir. The directory is
// created on the first pull.
func NewPuller(dir string, opts ...Option) *Puller {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	p := &Puller{
		dir:      dir,
		platform: v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		keychain: authn.DefaultKeychain,
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Dir returns the cache directory.
func (p *Puller) Dir() string { return p.dir }

// pullError is a failure to get an image: it reads "pull REF: ..." and
// matches ErrPullFailed.
type pullError struct {
	ref string
	err error
}

func (e *pullError) Error() string        { return "pull " + e.ref + ": " + e.err.Error() }
func (e *pullError) Unwrap() error        { return e.err }
func (e *pullError) Is(target error) bool { return target == ErrPullFailed }

// Pull returns the image ref (e.g. "alpine:3.20", "127.0.0.1:5000/app:1",
// "ghcr.io/org/app@sha256:..."), downloading and unpacking it unless the
// cache already has it. For an index (multi-platform image) it picks the
// linux image for the host's architecture. Progress lines go to progress, or
// if that is nil to the WithProgress writer.
//
// A tag is resolved against the registry on every pull, so that a moved tag
// is noticed; only the manifest is fetched when the image is cached. If the
// registry cannot be reached at all, the image the reference last resolved
// to is used if it is cached. A digest reference whose image is cached needs
// no registry.
func (p *Puller) Pull(ctx context.Context, ref string, progress io.Writer) (*Image, error) {
	if progress == nil {
		progress = p.progress
	}
	if progress == nil {
		progress = io.Discard
	}
	fail := func(err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("pull %s: %w", ref, ctx.Err())
		}
		var le *localError
		if errors.As(err, &le) {
			return fmt.Errorf("pull %s: %w", ref, err)
		}
		return &pullError{ref: ref, err: err}
	}

	r, err := p.parse(ref)
	if err != nil {
		return nil, fail(fmt.Errorf("invalid image reference: %w", err))
	}

	// A digest reference is immutable: serve it from the cache if we can.
	if _, ok := r.(name.Digest); ok {
		if img, err := p.cachedByRef(r, ref); err == nil {
			fmt.Fprintf(progress, "using cached %s (%s)\n", ref, img.Digest)
			return img, nil
		}
	}

	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(p.keychain),
		remote.WithPlatform(p.platform),
		remote.WithUserAgent("stasis"),
	}
	rimg, err := remote.Image(r, opts...)
	if err != nil {
		var ne net.Error
		var te *transport.Error
		if ctx.Err() == nil && errors.As(err, &ne) && !errors.As(err, &te) {
			if img, cerr := p.cachedByRef(r, ref); cerr == nil {
				fmt.Fprintf(progress, "registry unreachable (%v); using cached %s (%s)\n", err, ref, img.Digest)
				return img, nil
			}
		}
		return nil, fail(describe(r, err))
	}
	h, err := rimg.Digest()
	if err != nil {
		return nil, fail(err)
	}
	digest := h.String()

	img, err := p.load(digest, ref)
	if err == nil {
		fmt.Fprintf(progress, "using cached %s (%s)\n", ref, digest)
		p.recordRef(r, digest)
		return img, nil
	}
	if !errors.Is(err, errNotCached) {
		return nil, fail(err)
	}

	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return nil, fail(&localError{err})
	}
	key := slug(digest)
	unlock, err := fsutil.LockFile(ctx, filepath.Join(p.dir, "."+key+".lock"), func() {
		fmt.Fprintf(progress, "waiting for another pull of %s (%s) to finish...\n", ref, digest)
	})
	if err != nil {
		return nil, fail(&localError{fmt.Errorf("lock %s: %w", digest, err)})
	}
	defer unlock()

	// Someone else may have finished while we waited.
	if img, err := p.load(digest, ref); err == nil {
		fmt.Fprintf(progress, "using cached %s (%s)\n", ref, digest)
		p.recordRef(r, digest)
		return img, nil
	} else if !errors.Is(err, errNotCached) {
		return nil, fail(err)
	}

	fmt.Fprintf(progress, "pulling %s (%s)\n", ref, digest)
	if err := p.unpack(ctx, ref, digest, rimg, progress); err != nil {
		return nil, fail(err)
	}
	img, err = p.load(digest, ref)
	if err != nil {
		return nil, fail(&localError{err})
	}
	p.recordRef(r, digest)
	return img, nil
}

// parse parses ref, marking it insecure (plain HTTP) when its registry is in
// the insecure list.
func (p *Puller) parse(ref string) (name.Reference, error) {
	if strings.TrimSpace(ref) != ref || ref == "" {
		return nil, fmt.Errorf("%q is not a valid reference", ref)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	host := r.Context().RegistryStr()
	for _, h := range p.insecure {
		if strings.EqualFold(h, host) || strings.EqualFold(h, r.Context().Registry.Name()) {
			return name.ParseReference(ref, name.Insecure)
		}
	}
	return r, nil
}

// describe turns a registry error into a short, clear one.
func describe(r name.Reference, err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		var msgs []string
		unauthorized := te.StatusCode == 401 || te.StatusCode == 403
		for _, d := range te.Errors {
			msgs = append(msgs, d.String())
			if d.Code == transport.UnauthorizedErrorCode || d.Code == transport.DeniedErrorCode {
				unauthorized = true
			}
		}
		msg := strings.Join(msgs, "; ")
		if msg == "" {
			msg = fmt.Sprintf("unexpected status code %d %s", te.StatusCode, http.StatusText(te.StatusCode))
		}
		switch {
		case unauthorized:
			msg += fmt.Sprintf(" (not authorized for %s: log in with `docker login %s` or add credentials to ~/.docker/config.json or $DOCKER_CONFIG/config.json)",
				r.Context().Name(), r.Context().RegistryStr())
		case te.StatusCode == 404:
			msg += fmt.Sprintf(" (%s not found in registry %s)", refDesc(r), r.Context().RegistryStr())
		}
		return &msgError{msg: msg, err: err}
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return fmt.Errorf("registry %s unreachable: %w", r.Context().RegistryStr(), err)
	}
	return err
}

// msgError is err described by msg.
type msgError struct {
	msg string
	err error
}

func (e *msgError) Error() string { return e.msg }
func (e *msgError) Unwrap() error { return e.err }

func refDesc(r name.Reference) string {
	switch r := r.(type) {
	case name.Tag:
		return "tag " + r.TagStr() + " of " + r.Context().RepositoryStr()
	case name.Digest:
		return "digest " + r.DigestStr() + " of " + r.Context().RepositoryStr()
	}
	return r.String()
}

// Cached returns the images in the cache, complete ones only, without a
// reference (Ref is empty).
func (p *Puller) Cached() []*Image {
	entries, _ := os.ReadDir(p.dir)
	var out []*Image
	for _, e := range entries {
		algo, hex, ok := strings.Cut(e.Name(), "-") // slug
		if !ok {
			continue
		}
		if img, err := p.load(algo+":"+hex, ""); err == nil {
			out = append(out, img)
		}
	}
	return out
}

// errNotCached is returned by load for an image that is not (completely) in
// the cache.
var errNotCached = errors.New("image not cached")

// slug turns a digest into a file name: "sha256:ab.." -> "sha256-ab..".
func slug(digest string) string { return strings.ReplaceAll(digest, ":", "-") }

func (p *Puller) finalDir(digest string) string { return filepath.Join(p.dir, slug(digest)) }

func (p *Puller) tmpPrefix(digest string) string { return ".tmp-" + slug(digest) + "-" }

// load returns the cached image with the given manifest digest; it fails with
// errNotCached if there is none or it is incomplete.
func (p *Puller) load(digest, ref string) (*Image, error) {
	if _, err := v1.NewHash(digest); err != nil {
		return nil, fmt.Errorf("%w: bad digest %q: %v", errNotCached, digest, err)
	}
	dir := p.finalDir(digest)
	b, err := os.ReadFile(filepath.Join(dir, "image.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNotCached
	}
	if err != nil {
		return nil, &localError{fmt.Errorf("read metadata of %s: %w", digest, err)}
	}
	var md metadata
	if err := json.Unmarshal(b, &md); err != nil {
		return nil, fmt.Errorf("%w: corrupt %s: %v", errNotCached, filepath.Join(dir, "image.json"), err)
	}
	if md.Format != formatVersion || md.Digest != digest {
		return nil, fmt.Errorf("%w: %s is for %s format %d", errNotCached, filepath.Join(dir, "image.json"), md.Digest, md.Format)
	}
	img := &Image{
		Ref:        ref,
		Digest:     digest,
		RootFS:     filepath.Join(dir, "rootfs"),
		Env:        md.Env,
		Workdir:    md.Workdir,
		User:       md.User,
		Cmd:        md.Cmd,
		Entrypoint: md.Entrypoint,
	}
	if img.Workdir == "" {
		img.Workdir = "/"
	}
	if fi, err := os.Lstat(filepath.Join(img.RootFS, AgentMountPoint)); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: rootfs lacks %s", errNotCached, AgentMountPoint)
	}
	return img, nil
}

// refFile is where the digest ref last resolved to is recorded.
func (p *Puller) refFile(r name.Reference) string {
	sum := sha256.Sum256([]byte(r.Name()))
	return filepath.Join(p.dir, ".refs", hex.EncodeToString(sum[:16]))
}

// recordRef remembers that r resolved to digest; it is best effort.
func (p *Puller) recordRef(r name.Reference, digest string) {
	file := p.refFile(r)
	if old, err := os.ReadFile(file); err == nil {
		var rec refRecord
		if json.Unmarshal(old, &rec) == nil && rec.Ref == r.Name() && rec.Digest == digest {
			return
		}
	}
	b, err := json.Marshal(refRecord{Ref: r.Name(), Digest: digest})
	if err != nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return
	}
	f, err := os.CreateTemp(filepath.Dir(file), ".tmp-*")
	if err != nil {
		return
	}
	_, werr := f.Write(append(b, '\n'))
	cerr := f.Close()
	if werr != nil || cerr != nil || os.Chmod(f.Name(), 0o644) != nil || os.Rename(f.Name(), file) != nil {
		os.Remove(f.Name())
	}
}

// cachedByRef returns the cached image r last resolved to. For a digest
// reference the digest itself is tried first.
func (p *Puller) cachedByRef(r name.Reference, ref string) (*Image, error) {
	if d, ok := r.(name.Digest); ok {
		if img, err := p.load(d.DigestStr(), ref); err == nil {
			return img, nil
		}
	}
	b, err := os.ReadFile(p.refFile(r))
	if err != nil {
		return nil, errNotCached
	}
	var rec refRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.Ref != r.Name() {
		return nil, errNotCached
	}
	return p.load(rec.Digest, ref)
}

// unpack downloads and unpacks img into a temporary directory and renames it
// into place. The caller holds the digest's lock.
func (p *Puller) unpack(ctx context.Context, ref, digest string, img v1.Image, progress io.Writer) error {
	start := time.Now()
	if err := p.removeStale(digest, progress); err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("get image config: %w", err)
	}
	if cfg.OS != "" && cfg.OS != p.platform.OS {
		return fmt.Errorf("image is for %s, not %s", cfg.OS, p.platform.OS)
	}
	if cfg.Architecture != "" && cfg.Architecture != p.platform.Architecture {
		fmt.Fprintf(progress, "warning: image is for %s/%s, this host is %s/%s\n",
			cfg.OS, cfg.Architecture, p.platform.OS, p.platform.Architecture)
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("get image layers: %w", err)
	}

	tmp, err := os.MkdirTemp(p.dir, p.tmpPrefix(digest))
	if err != nil {
		return &localError{err}
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return &localError{err}
	}
	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return &localError{err}
	}
	if err := os.Chmod(rootfs, 0o755); err != nil {
		return &localError{err}
	}

	u := newUnpacker(rootfs)
	var total int64
	var digests []string
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		ld, err := l.Digest()
		if err != nil {
			return fmt.Errorf("layer %d/%d: %w", i+1, len(layers), err)
		}
		size, err := l.Size()
		if err != nil {
			return fmt.Errorf("layer %d/%d (%s): %w", i+1, len(layers), ld, err)
		}
		total += size
		digests = append(digests, ld.String())
		fmt.Fprintf(progress, "layer %d/%d (%s)\n", i+1, len(layers), humanSize(size))
		if err := applyLayer(ctx, u, l); err != nil {
			return fmt.Errorf("layer %d/%d (%s): %w", i+1, len(layers), ld, err)
		}
	}
	if err := prepareRoot(rootfs); err != nil {
		return err
	}

	md := metadata{
		Format:       formatVersion,
		Ref:          ref,
		Digest:       digest,
		OS:           cfg.OS,
		Architecture: cfg.Architecture,
		Env:          cfg.Config.Env,
		Workdir:      cfg.Config.WorkingDir,
		User:         cfg.Config.User,
		Cmd:          cfg.Config.Cmd,
		Entrypoint:   cfg.Config.Entrypoint,
		Layers:       digests,
		Size:         total,
		PulledAt:     time.Now().UTC().Truncate(time.Second),
	}
	if md.Env == nil {
		md.Env = []string{}
	}
	b, err := json.MarshalIndent(md, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "image.json"), append(b, '\n'), 0o644); err != nil {
		return &localError{err}
	}
	// Make the whole tree durable before it becomes visible under its final
	// name; a crash after the rename must not expose a half-written image.
	syscall.Sync()

	final := p.finalDir(digest)
	if _, err := os.Lstat(final); err == nil {
		// A final directory that load rejected (incomplete, hand-edited or
		// from an incompatible format): move it out of the way, then drop it.
		aside, err := os.MkdirTemp(p.dir, p.tmpPrefix(digest))
		if err != nil {
			return &localError{err}
		}
		if err := os.Rename(final, filepath.Join(aside, "old")); err != nil {
			return &localError{fmt.Errorf("move invalid %s aside: %w", final, err)}
		}
		defer os.RemoveAll(aside)
	}
	if err := os.Rename(tmp, final); err != nil {
		return &localError{err}
	}
	ok = true
	fsutil.SyncDir(p.dir)
	fmt.Fprintf(progress, "pulled %s (%s, %d layers, %s) in %s\n", ref, digest, len(layers), humanSize(total),
		time.Since(start).Round(time.Millisecond))
	return nil
}

// applyLayer downloads layer l and unpacks it with u.
func applyLayer(ctx context.Context, u *unpacker, l v1.Layer) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := u.apply(ctx, rc); err != nil {
		return err
	}
	// Read to the end so the download is verified against its digest.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return err
	}
	return rc.Close()
}

// removeStale deletes temporary directories left by crashed pulls of digest.
func (p *Puller) removeStale(digest string, progress io.Writer) error {
	stale, err := filepath.Glob(filepath.Join(p.dir, p.tmpPrefix(digest)+"*"))
	if err != nil {
		return err
	}
	for _, d := range stale {
		fmt.Fprintf(progress, "removing leftover of an interrupted pull: %s\n", d)
		if err := os.RemoveAll(d); err != nil {
			return &localError{fmt.Errorf("remove stale pull dir: %w", err)}
		}
	}
	return nil
}

// prepareRoot adds what the runtime needs in every image root: the agent's
// mount point, /tmp (1777), and the /proc, /sys and /dev mount points. They
// are made real directories even if the image has symlinks there.
func prepareRoot(rootfs string) error {
	// Top-level names: filepath.Join cannot go through a symlink.
	for _, d := range []struct {
		name  string
		mode  os.FileMode
		force bool // set the mode of an existing directory too
	}{
		{".stasis", 0o755, true},
		{"tmp", 0o777 | os.ModeSticky, true},
		{"proc", 0o555, false},
		{"sys", 0o555, false},
		{"dev", 0o755, false},
	} {
		p := filepath.Join(rootfs, d.name)
		fi, err := os.Lstat(p)
		if err == nil && !fi.IsDir() {
			if err := os.Remove(p); err != nil {
				return &localError{err}
			}
		}
		if err != nil || !fi.IsDir() {
			if err := os.Mkdir(p, 0o700); err != nil {
				return &localError{err}
			}
		} else if !d.force {
			continue
		}
		if os.Geteuid() == 0 {
			if err := os.Lchown(p, 0, 0); err != nil {
				return &localError{err}
			}
		}
		if err := os.Chmod(p, d.mode); err != nil { // Chmod needs ModeSticky for 01000
			return &localError{err}
		}
	}
	agent := filepath.Join(rootfs, AgentMountPoint)
	if err := os.RemoveAll(agent); err != nil {
		return &localError{err}
	}
	if err := os.WriteFile(agent, nil, 0o755); err != nil {
		return &localError{err}
	}
	if err := os.Chmod(agent, 0o755); err != nil {
		return &localError{err}
	}
	return nil
}

func humanSize(n int64) string {
	switch {
	case n < 1000:
		return fmt.Sprintf("%d B", n)
	case n < 1000*1000:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	case n < 1000*1000*1000:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	}
	return fmt.Sprintf("%.2f GB", float64(n)/1e9)
}
