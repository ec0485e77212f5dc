package objstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Kinds of snapshot, the first element of their keys.
const (
	KindSandbox  = "sandboxes"
	KindTemplate = "templates"
	KindSaved    = "saved"
)

// ManifestKey is the name, under a snapshot's prefix, of its manifest: the
// object written last, so a snapshot whose manifest exists is complete.
const ManifestKey = "manifest.json"

// Ref names one snapshot in the store: Kind/ID/Snap/ (Snap is the base name
// of the local snapshot directory, e.g. snap-1733412345).
type Ref struct {
	Kind, ID, Snap string
}

func (r Ref) String() string { return r.Kind + "/" + r.ID + "/" + r.Snap }

// Prefix is the key prefix of the snapshot's objects.
func (r Ref) Prefix() string { return r.String() + "/" }

// ownerPrefix is the key prefix of every snapshot of r's owner.
func ownerPrefix(kind, id string) string { return kind + "/" + id + "/" }

func (r Ref) valid() error {
	for _, part := range []string{r.Kind, r.ID, r.Snap} {
		if part == "" || part == "." || part == ".." || strings.ContainsAny(part, "/\\") {
			return fmt.Errorf("objstore: bad snapshot ref %q", r.String())
		}
	}
	return nil
}

// Manifest lists a snapshot's files with their sizes and SHA-256 sums.
type Manifest struct {
	Kind    string    `json:"kind"`
	ID      string    `json:"id"`
	Snap    string    `json:"snap"`
	Created time.Time `json:"created"`
	Files   []File    `json:"files"`
}

// File is one file of a snapshot, by its slash-separated path in the
// snapshot directory.
type File struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Bytes is the total size of the snapshot's files.
func (m *Manifest) Bytes() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// Ref is the snapshot the manifest describes.
func (m *Manifest) Ref() Ref { return Ref{Kind: m.Kind, ID: m.ID, Snap: m.Snap} }

// sameFiles reports whether two manifests list the same contents.
func (m *Manifest) sameFiles(o *Manifest) bool {
	if len(m.Files) != len(o.Files) {
		return false
	}
	for i := range m.Files {
		if m.Files[i] != o.Files[i] {
			return false
		}
	}
	return true
}

// BuildManifest checksums every regular file under dir.
func BuildManifest(ctx context.Context, ref Ref, dir string) (*Manifest, error) {
	m := &Manifest{Kind: ref.Kind, ID: ref.ID, Snap: ref.Snap, Created: time.Now().UTC()}
	err := filepath.WalkDir(dir, func(path string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		sum, size, err := sha256File(path)
		if err != nil {
			return err
		}
		m.Files = append(m.Files, File{Path: filepath.ToSlash(rel), Size: size, SHA256: sum})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("checksum snapshot %s: %w", dir, err)
	}
	if len(m.Files) == 0 {
		return nil, fmt.Errorf("checksum snapshot %s: no files", dir)
	}
	sort.Slice(m.Files, func(i, j int) bool { return m.Files[i].Path < m.Files[j].Path })
	return m, nil
}

func sha256File(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// ReadManifest fetches the manifest of ref (ErrNotFound until the snapshot
// is complete in the store).
func ReadManifest(ctx context.Context, blobs Blobs, ref Ref) (*Manifest, error) {
	if err := ref.valid(); err != nil {
		return nil, err
	}
	rc, err := blobs.Get(ctx, ref.Prefix()+ManifestKey)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var m Manifest
	if err := json.NewDecoder(io.LimitReader(rc, 16<<20)).Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %s: unreadable manifest: %v", ErrCorrupt, ref, err)
	}
	if m.Ref() != ref || len(m.Files) == 0 {
		return nil, fmt.Errorf("%w: %s: manifest names %s", ErrCorrupt, ref, m.Ref())
	}
	for _, f := range m.Files {
		if p := filepath.Clean(filepath.FromSlash(f.Path)); p != filepath.FromSlash(f.Path) || filepath.IsAbs(p) || strings.HasPrefix(p, "..") {
			return nil, fmt.Errorf("%w: %s: bad path %q in manifest", ErrCorrupt, ref, f.Path)
		}
	}
	return &m, nil
}

// Latest returns the newest complete snapshot of kind/id in the store
// (ErrNotFound if it has none).
func Latest(ctx context.Context, blobs Blobs, kind, id string) (*Manifest, error) {
	keys, err := blobs.List(ctx, ownerPrefix(kind, id))
	if err != nil {
		return nil, err
	}
	var best *Manifest
	for _, k := range keys {
		rest := strings.TrimPrefix(k, ownerPrefix(kind, id))
		snap, name, ok := strings.Cut(rest, "/")
		if !ok || name != ManifestKey {
			continue
		}
		m, err := ReadManifest(ctx, blobs, Ref{Kind: kind, ID: id, Snap: snap})
		if err != nil {
			return nil, err
		}
		if best == nil || m.Created.After(best.Created) {
			best = m
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: no snapshot of %s/%s", ErrNotFound, kind, id)
	}
	return best, nil
}

// DeleteAll removes every object of kind/id's snapshots.
func DeleteAll(ctx context.Context, blobs Blobs, kind, id string) error {
	return deleteOwner(ctx, blobs, kind, id, "")
}

// deleteOwner removes kind/id's objects except those of snapshot keep.
// Manifests go first, so no half-deleted snapshot looks complete.
func deleteOwner(ctx context.Context, blobs Blobs, kind, id, keep string) error {
	if err := (Ref{Kind: kind, ID: id, Snap: "x"}).valid(); err != nil {
		return err
	}
	keys, err := blobs.List(ctx, ownerPrefix(kind, id))
	if err != nil {
		return err
	}
	var manifests, rest []string
	for _, k := range keys {
		if keep != "" && strings.HasPrefix(k, Ref{kind, id, keep}.Prefix()) {
			continue
		}
		if strings.HasSuffix(k, "/"+ManifestKey) {
			manifests = append(manifests, k)
		} else {
			rest = append(rest, k)
		}
	}
	if err := blobs.Delete(ctx, manifests...); err != nil {
		return fmt.Errorf("delete %s/%s: %w", kind, id, err)
	}
	if err := blobs.Delete(ctx, rest...); err != nil {
		return fmt.Errorf("delete %s/%s: %w", kind, id, err)
	}
	return nil
}
