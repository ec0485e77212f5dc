// Package snapshot keeps sandbox checkpoints in a local directory with the
// discipline that makes them trustworthy across crashes: every file of a
// checkpoint is fsynced and checksummed into a manifest, written last, and a
// directory without a valid manifest is never restored from. A checkpoint is
// either written into a temporary directory renamed into place once sealed
// (Begin, Commit), or sealed where it is (BeginInPlace, Seal).
package snapshot

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/fsutil"
)

// ManifestName is the file listing a snapshot's files and checksums.
const ManifestName = "stasis-manifest.json"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt means a snapshot is missing, incomplete or fails its checksums.
var ErrCorrupt = errors.New("snapshot is corrupt or incomplete")

// Dir stores snapshots under root/<sandbox id>/.
type Dir struct{ root string }

// New returns a snapshot directory rooted at root, creating it.
func New(root string) (*Dir, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("snapshot dir: %w", err)
	}
	return &Dir{root: root}, nil
}

// Root is the directory holding every sandbox's snapshots.
func (d *Dir) Root() string { return d.root }

// SandboxDir holds one sandbox's snapshots.
func (d *Dir) SandboxDir(id string) string { return filepath.Join(d.root, id) }

// Begin returns an empty temporary directory to checkpoint sandbox id into,
// for Commit.
func (d *Dir) Begin(id string) (string, error) {
	if err := os.MkdirAll(d.SandboxDir(id), 0o700); err != nil {
		return "", err
	}
	return os.MkdirTemp(d.SandboxDir(id), ".tmp-")
}

// BeginInPlace returns an empty directory under its final name to
// checkpoint sandbox id into, for Seal: its path can be recorded before the
// checkpoint is durable, since without a manifest it is never trusted.
func (d *Dir) BeginInPlace(id string) (string, error) {
	if err := os.MkdirAll(d.SandboxDir(id), 0o700); err != nil {
		return "", err
	}
	dir := filepath.Join(d.SandboxDir(id), "snap-"+strconv.FormatInt(time.Now().UnixNano(), 10))
	return dir, os.Mkdir(dir, 0o700)
}

type manifest struct {
	Created time.Time        `json:"created"`
	Files   map[string]entry `json:"files"`
}

// entry is one file's size and CRC-32C. A CRC (hardware-accelerated, many
// GB/s) detects the corruption that matters here — torn writes, bit rot,
// truncation — without adding a cryptographic hash's cost to every pause and
// resume; snapshots are not an adversary's input.
type entry struct {
	Size   int64  `json:"size"`
	CRC32C string `json:"crc32c"`
}

// Commit makes the checkpoint in tmp durable and trusted (Seal), then
// renames it into place and fsyncs the parent. It returns the final path and
// the snapshot's size in bytes.
func (d *Dir) Commit(tmp string) (string, int64, error) {
	total, err := Seal(tmp)
	if err != nil {
		return "", 0, err
	}
	final := filepath.Join(filepath.Dir(tmp), "snap-"+strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := os.Rename(tmp, final); err != nil {
		return "", 0, fmt.Errorf("commit snapshot: %w", err)
	}
	return final, total, fsutil.SyncDir(filepath.Dir(final))
}

// Seal makes the checkpoint in dir durable and trusted where it is: it
// checksums and fsyncs every file, then writes the manifest (last, so that
// a crash leaves none) and fsyncs the directory and its parent. It returns
// the snapshot's size in bytes.
func Seal(dir string) (int64, error) { return SealContext(context.Background(), dir) }

// SealContext is Seal that gives up, with ctx's error and no manifest, once
// ctx is done: a pause's checkpoint that a resume or a delete made garbage
// is not worth its writeback (some 1.3 s of disk at 1 GB, competing with the
// sandbox that resumed). It checks ctx between files and between the
// writeback's chunks.
func SealContext(ctx context.Context, dir string) (int64, error) {
	m := manifest{Created: time.Now().UTC(), Files: map[string]entry{}}
	var total int64
	err := filepath.WalkDir(dir, func(path string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if rel == ManifestName {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		sum, size, err := hashAndSync(ctx, path)
		if err != nil {
			return err
		}
		m.Files[rel] = entry{Size: size, CRC32C: sum}
		total += size
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("commit snapshot: %w", err)
	}
	b, _ := json.MarshalIndent(m, "", " ")
	if err := writeSync(filepath.Join(dir, ManifestName), b); err != nil {
		return 0, fmt.Errorf("commit snapshot: %w", err)
	}
	if err := fsutil.SyncDir(dir); err != nil {
		return 0, err
	}
	return total, fsutil.SyncDir(filepath.Dir(dir))
}

// Verify checks that dir is a committed snapshot whose files all match the
// manifest. Any mismatch is reported as ErrCorrupt with the reason.
func Verify(dir string) error {
	return verify(dir, func(string) bool { return true })
}

// VerifyExcept is Verify of every file but those named (relative to dir).
func VerifyExcept(dir string, names []string) error {
	return verify(dir, func(rel string) bool { return !slices.Contains(names, rel) })
}

// Pending is a check of some of a snapshot's files against its manifest,
// with the files open but not read yet: it can run after the snapshot's
// directory is removed (a lazily restored sandbox's memory is checked
// while it loads, and the snapshot is garbage once the sandbox runs).
type Pending struct {
	files []pendingFile
}

type pendingFile struct {
	rel  string
	f    *os.File
	want entry
}

// OpenCheck opens the named files of the snapshot in dir (relative to
// dir), each of which its manifest must list, for a check with Run.
func OpenCheck(dir string, names []string) (*Pending, error) {
	m, err := readManifest(dir)
	if err != nil {
		return nil, err
	}
	p := &Pending{}
	for _, rel := range names {
		want, ok := m.Files[rel]
		if !ok {
			p.Close()
			return nil, fmt.Errorf("%w: %s: not in the manifest", ErrCorrupt, rel)
		}
		f, err := os.Open(filepath.Join(dir, rel))
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, rel, err)
		}
		p.files = append(p.files, pendingFile{rel, f, want})
	}
	return p, nil
}

// Run reads the files and reports the first that does not match the
// manifest as ErrCorrupt. It closes them.
func (p *Pending) Run() error {
	defer p.Close()
	for _, pf := range p.files {
		if err := checkFile(pf.rel, pf.f, pf.want); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the files without checking them.
func (p *Pending) Close() {
	for _, pf := range p.files {
		pf.f.Close()
	}
	p.files = nil
}

func readManifest(dir string) (*manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: no manifest (%v)", ErrCorrupt, dir, err)
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil || len(m.Files) == 0 {
		return nil, fmt.Errorf("%w: %s: unreadable manifest", ErrCorrupt, dir)
	}
	return &m, nil
}

func checkFile(rel string, f *os.File, want entry) error {
	h := crc32.New(castagnoli)
	n, err := readInto(h, f)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, rel, err)
	}
	if n != want.Size || hex.EncodeToString(h.Sum(nil)) != want.CRC32C {
		return fmt.Errorf("%w: %s: checksum mismatch", ErrCorrupt, rel)
	}
	return nil
}

// verify checks the manifest's files for which check is true.
func verify(dir string, check func(rel string) bool) error {
	m, err := readManifest(dir)
	if err != nil {
		return err
	}
	for rel, want := range m.Files {
		if !check(rel) {
			continue
		}
		f, err := os.Open(filepath.Join(dir, rel))
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, rel, err)
		}
		err = checkFile(rel, f, want)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// Size is the total size of the files in dir.
func Size(dir string) int64 {
	var total int64
	filepath.WalkDir(dir, func(path string, de fs.DirEntry, err error) error {
		if err == nil && de.Type().IsRegular() {
			if fi, err := de.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	return total
}

// IsTemp reports whether a directory name is an uncommitted checkpoint.
func IsTemp(name string) bool { return strings.HasPrefix(name, ".tmp-") }

func hashAndSync(ctx context.Context, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := crc32.New(castagnoli)
	n, err := readInto(h, f)
	if err != nil {
		return "", 0, err
	}
	if err := syncInChunks(ctx, f, n); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// syncChunk is how much of a file syncInChunks writes back at a time.
const syncChunk = 8 << 20

// syncInChunks makes f's n bytes durable a chunk at a time, then fsyncs it.
// One fsync (or writeback started for the whole file) would make every
// other fsync on the filesystem wait for all of it: ext4 commits newly
// written data before the journal, so the store's commits stalled behind a
// sealing snapshot (90 ms at 200 MB, seconds at 1 GB). In chunks, a commit
// waits for two chunks at most: the writeback of the next chunk starts
// before the wait for the previous one, so the disk never idles in between.
func syncInChunks(ctx context.Context, f *os.File, n int64) error {
	const (
		start  = unix.SYNC_FILE_RANGE_WRITE
		finish = unix.SYNC_FILE_RANGE_WAIT_BEFORE | unix.SYNC_FILE_RANGE_WRITE | unix.SYNC_FILE_RANGE_WAIT_AFTER
	)
	fd := int(f.Fd())
	for off := int64(0); off < n; off += syncChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := unix.SyncFileRange(fd, off, syncChunk, start)
		if err == nil && off > 0 {
			err = unix.SyncFileRange(fd, off-syncChunk, syncChunk, finish)
		}
		if err != nil {
			return f.Sync() // not supported here: the whole file at once
		}
	}
	return f.Sync() // the last chunk, and the metadata
}

func writeSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
