package objstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// ErrCorrupt means a snapshot in the store is incomplete or fails its
// checksums; it is never handed out.
var ErrCorrupt = errors.New("objstore: snapshot is corrupt or incomplete")

// markerSuffix names the file beside a cached snapshot's directory that
// holds its manifest: written last (an entry without one is a leftover),
// and its mtime is the entry's last use, for LRU eviction.
const markerSuffix = ".manifest.json"

// Cache downloads snapshots from a blob store into a local directory,
// verifying every file against the manifest's SHA-256, and keeps the most
// recently used ones under a size limit. It is safe for concurrent use.
type Cache struct {
	blobs    Blobs
	dir      string
	maxBytes int64

	mu       sync.Mutex               // eviction and the fetching map
	fetching map[string]chan struct{} // by ref: closed when that download ends
}

// NewCache returns a cache of blobs' snapshots in dir holding at most
// maxBytes (0: no limit). A snapshot larger than the limit is still
// fetched; it evicts everything else.
func NewCache(blobs Blobs, dir string, maxBytes int64) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("snapshot cache: %w", err)
	}
	c := &Cache{blobs: blobs, dir: dir, maxBytes: maxBytes, fetching: map[string]chan struct{}{}}
	c.removeLeftovers()
	return c, nil
}

// Dir is where the cache keeps snapshots.
func (c *Cache) Dir() string { return c.dir }

func (c *Cache) entry(ref Ref) string {
	return filepath.Join(c.dir, ref.Kind, ref.ID, ref.Snap)
}

// Fetch returns the local directory holding snapshot ref, downloading and
// verifying it first unless it is cached. The directory is the cache's: it
// may be evicted by a later Fetch, so restore from a Materialize'd copy.
func (c *Cache) Fetch(ctx context.Context, ref Ref) (string, error) {
	if err := ref.valid(); err != nil {
		return "", err
	}
	for {
		c.mu.Lock()
		wait, busy := c.fetching[ref.String()]
		if !busy {
			if c.touch(ref) {
				c.mu.Unlock()
				return c.entry(ref), nil
			}
			done := make(chan struct{})
			c.fetching[ref.String()] = done
			c.mu.Unlock()
			err := c.download(ctx, ref)
			c.mu.Lock()
			delete(c.fetching, ref.String())
			close(done)
			if err == nil {
				c.evictLocked(ref)
			}
			c.mu.Unlock()
			if err != nil {
				return "", err
			}
			return c.entry(ref), nil
		}
		c.mu.Unlock()
		select { // someone else downloads it: wait, then look again
		case <-wait:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// Materialize fetches snapshot ref and gives dst (which must not exist) its
// files as hard links into the cache (copies across filesystems): dst is
// the caller's, whatever the cache evicts later.
func (c *Cache) Materialize(ctx context.Context, ref Ref, dst string) error {
	src, err := c.Fetch(ctx, ref)
	if err != nil {
		return err
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return fmt.Errorf("materialize %s: %w", ref, err)
	}
	err = filepath.WalkDir(src, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		switch {
		case rel == ".":
			return nil
		case de.IsDir():
			return os.Mkdir(target, 0o700)
		default:
			return linkOrCopy(path, target)
		}
	})
	if err != nil {
		os.RemoveAll(dst)
		return fmt.Errorf("materialize %s: %w", ref, err)
	}
	return nil
}

func linkOrCopy(src, dst string) error {
	if os.Link(src, dst) == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// Drop removes every cached snapshot of kind/id (its owner was deleted).
func (c *Cache) Drop(kind, id string) error {
	if err := (Ref{Kind: kind, ID: id, Snap: "x"}).valid(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return os.RemoveAll(filepath.Join(c.dir, kind, id))
}

// Bytes is the size of the snapshots in the cache.
func (c *Cache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, e := range c.entries() {
		n += e.bytes
	}
	return n
}

// touch marks ref's entry used now; false if it is not cached.
func (c *Cache) touch(ref Ref) bool {
	now := time.Now()
	return os.Chtimes(c.entry(ref)+markerSuffix, now, now) == nil
}

// download fetches ref's manifest, then each file through a SHA-256 check,
// into a temporary directory renamed into place; the marker goes last.
func (c *Cache) download(ctx context.Context, ref Ref) error {
	m, err := ReadManifest(ctx, c.blobs, ref)
	if err != nil {
		return fmt.Errorf("fetch snapshot %s: %w", ref, err)
	}
	parent := filepath.Dir(c.entry(ref))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, ".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, f := range m.Files {
		if err := c.fetchFile(ctx, ref, f, filepath.Join(tmp, filepath.FromSlash(f.Path))); err != nil {
			return fmt.Errorf("fetch snapshot %s: %w", ref, err)
		}
	}
	final := c.entry(ref)
	os.RemoveAll(final) // a leftover without a marker
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	b, _ := json.Marshal(m)
	return os.WriteFile(final+markerSuffix, b, 0o600)
}

func (c *Cache) fetchFile(ctx context.Context, ref Ref, f File, path string) error {
	rc, err := c.blobs.Get(ctx, ref.Prefix()+f.Path)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: %s is missing", ErrCorrupt, f.Path)
		}
		return err
	}
	defer rc.Close()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	out, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	// One byte more than the manifest says, to notice a longer object.
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(rc, f.Size+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	if n != f.Size || hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
		return fmt.Errorf("%w: %s: checksum mismatch (%d bytes, want %d)", ErrCorrupt, f.Path, n, f.Size)
	}
	return nil
}

type cacheEntry struct {
	ref   Ref
	bytes int64
	used  time.Time
}

// entries lists the complete entries (those with a marker).
func (c *Cache) entries() []cacheEntry {
	markers, _ := filepath.Glob(filepath.Join(c.dir, "*", "*", "*"+markerSuffix))
	var out []cacheEntry
	for _, mk := range markers {
		fi, err := os.Stat(mk)
		if err != nil {
			continue
		}
		b, err := os.ReadFile(mk)
		var m Manifest
		if err != nil || json.Unmarshal(b, &m) != nil {
			continue
		}
		out = append(out, cacheEntry{ref: m.Ref(), bytes: m.Bytes(), used: fi.ModTime()})
	}
	return out
}

// evictLocked removes the least recently used entries, except keep, until
// the cache is within its limit. Called with c.mu held.
func (c *Cache) evictLocked(keep Ref) {
	if c.maxBytes <= 0 {
		return
	}
	es := c.entries()
	var total int64
	for _, e := range es {
		total += e.bytes
	}
	sort.Slice(es, func(i, j int) bool { return es[i].used.Before(es[j].used) })
	for _, e := range es {
		if total <= c.maxBytes {
			return
		}
		if e.ref == keep || c.fetching[e.ref.String()] != nil {
			continue
		}
		// Marker first: from then on the entry is not there.
		os.Remove(c.entry(e.ref) + markerSuffix)
		os.RemoveAll(c.entry(e.ref))
		total -= e.bytes
	}
}

// removeLeftovers deletes downloads a crash interrupted and entries whose
// marker is missing.
func (c *Cache) removeLeftovers() {
	dirs, _ := filepath.Glob(filepath.Join(c.dir, "*", "*", "*"))
	for _, d := range dirs {
		if strings.HasSuffix(d, markerSuffix) {
			continue
		}
		if _, err := os.Stat(d + markerSuffix); err != nil {
			os.RemoveAll(d)
		}
	}
}
