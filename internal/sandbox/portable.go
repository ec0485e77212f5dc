package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/objstore"
	"github.com/stasis-sandbox/stasis/internal/snapshot"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// Portable snapshots: with an object store (Config.Uploads), every sealed
// snapshot — a paused sandbox's, a template's, a saved one — is uploaded in
// the background, so another node can resume or start from it; deleting
// the owner deletes its objects. Without one (the single-node default)
// these are no-ops.

// uploadSnapshot queues the upload of kind/id's sealed snapshot in dir.
func (s *Service) uploadSnapshot(kind, id string, epoch int64, dir string) {
	if s.cfg.Uploads == nil || dir == "" {
		return
	}
	ref := objstore.Ref{Kind: kind, ID: id, Snap: filepath.Base(dir)}
	if err := s.cfg.Uploads.Upload(ref, epoch, dir); err != nil {
		s.log.Error("snapshot upload not started", "snapshot", ref.String(), "err", err)
	}
}

// snapshotLeft stops the upload of a sandbox's snapshot that is no longer
// its state (it was resumed) and clears its upload state.
func (s *Service) snapshotLeft(sb *store.Sandbox) {
	if s.cfg.Uploads != nil {
		s.cfg.Uploads.Forget(objstore.KindSandbox, sb.ID, sb.Epoch)
	}
}

// deleteObjects removes kind/id's snapshots from the object store (in the
// background, retried while the store fails) and the local download cache.
func (s *Service) deleteObjects(kind, id string) {
	if s.cfg.Uploads != nil {
		s.cfg.Uploads.Delete(kind, id)
	}
	if s.cfg.SnapshotCache != nil {
		if err := s.cfg.SnapshotCache.Drop(kind, id); err != nil {
			s.log.Warn("dropping cached snapshots", "kind", kind, "id", id, "err", err)
		}
	}
}

// Portability is where a paused sandbox's snapshot stands in the object
// store.
type Portability struct {
	Portable bool   // its manifest is in the store: any node can restore it
	State    string // upload state (store.Upload*)
	Detail   string // e.g. why the last attempt failed and when it retries
}

// Portability tells whether paused sb can be restored on another node;
// nil without an object store (single node) or unless sb is paused.
func (s *Service) Portability(sb *store.Sandbox) *Portability {
	if s.cfg.Uploads == nil || sb.Status != store.StatusPaused {
		return nil
	}
	st, detail := sb.SnapshotUpload, sb.SnapshotUploadDetail
	if local, ok := s.cfg.Uploads.State(objstore.KindSandbox, sb.ID); ok && st == store.UploadNone &&
		local.Ref.Snap == filepath.Base(sb.SnapshotDir) {
		// The store had no say (its record failed): this node's uploader knows.
		st, detail = local.State, local.Detail
	}
	return &Portability{Portable: st == store.UploadPortable, State: st, Detail: detail}
}

// requeueUploads starts again, after a restart, the uploads of paused
// sandboxes' snapshots that are not portable yet (an upload that had
// finished is recognised by its manifest and not sent again).
func (s *Service) requeueUploads(ctx context.Context) {
	if s.cfg.Uploads == nil {
		return
	}
	paused, err := s.ownSandboxes(ctx, store.StatusPaused)
	if err != nil {
		s.log.Error("requeue snapshot uploads", "err", err)
		return
	}
	for _, sb := range paused {
		if sb.SnapshotUpload != store.UploadPortable && sealed(sb.SnapshotDir) {
			s.uploadSnapshot(objstore.KindSandbox, sb.ID, sb.Epoch, sb.SnapshotDir)
		}
	}
}

func sealed(dir string) bool {
	return dir != "" && fileExists(filepath.Join(dir, snapshot.ManifestName))
}

// FetchSnapshot makes snapshot kind/id/snap from the object store available
// at this node's own path for it (where its local snapshots of that kind
// live), downloading and verifying it through the snapshot cache unless a
// sealed copy is already there, and returns that path.
func (s *Service) FetchSnapshot(ctx context.Context, kind, id, snap string) (string, error) {
	if s.cfg.SnapshotCache == nil {
		return "", fmt.Errorf("fetch snapshot %s/%s: no object store configured (--snapshot-url)", kind, id)
	}
	root := map[string]*snapshot.Dir{objstore.KindSandbox: s.snaps, objstore.KindTemplate: s.tsnaps, objstore.KindSaved: s.saved}[kind]
	if root == nil {
		return "", fmt.Errorf("fetch snapshot: unknown kind %q", kind)
	}
	dir := filepath.Join(root.SandboxDir(id), snap)
	if sealed(dir) {
		return dir, nil
	}
	tmp, err := root.Begin(id)
	if err != nil {
		return "", err
	}
	os.Remove(tmp) // Materialize creates it
	ref := objstore.Ref{Kind: kind, ID: id, Snap: snap}
	if err := s.cfg.SnapshotCache.Materialize(ctx, ref, tmp); err != nil {
		return "", err
	}
	os.RemoveAll(dir) // an unsealed leftover
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("fetch snapshot %s: %w", ref, err)
	}
	return dir, nil
}

// localCopy returns a local, sealed copy of a template's or saved
// snapshot's dir: dir itself on a single node, this node's own copy, or one
// downloaded from the object store (another node built or saved it).
func (s *Service) localCopy(ctx context.Context, kind, id, dir string) (string, error) {
	if s.cfg.SnapshotCache == nil {
		return dir, nil
	}
	// A template or snapshot made a moment ago on another node may still be
	// uploading (its manifest goes last): wait for it a while.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		local, err := s.FetchSnapshot(ctx, kind, id, filepath.Base(dir))
		if err == nil {
			return local, nil
		}
		if sealed(dir) { // readable here all the same (nodes sharing a disk)
			return dir, nil
		}
		if !errors.Is(err, objstore.ErrNotFound) || time.Now().After(deadline) {
			return "", newErr(ErrConflict, "snapshot_not_here", "%s %s was made on another node and is not in the object store (%v); retry later", strings.TrimSuffix(kind, "s"), Shorten(id), err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// fetchIfGone downloads paused sb's snapshot when this node neither holds
// it in RAM nor has a sealed copy of it, but the object store has (another node paused it, or the
// local copy was lost), and points sb at the download.
func (s *Service) fetchIfGone(ctx context.Context, b *box, sb *store.Sandbox) error {
	// Another node's data dir may be visible here (nodes sharing a host):
	// only a copy under this node's own snapshot root counts as local.
	mine := strings.HasPrefix(sb.SnapshotDir, s.snaps.Root()+string(filepath.Separator))
	if s.cfg.SnapshotCache == nil || sb.SnapshotDir == "" || b.inRAM.Load() || b.sealing != nil ||
		mine && sealed(sb.SnapshotDir) || sb.SnapshotUpload != store.UploadPortable {
		return nil
	}
	start := time.Now()
	dir, err := s.FetchSnapshot(ctx, objstore.KindSandbox, sb.ID, filepath.Base(sb.SnapshotDir))
	if err != nil {
		return err
	}
	s.log.Info("downloaded the snapshot from the object store", "sandbox", sb.ID, "ms", time.Since(start).Milliseconds())
	sb.SnapshotDir = dir
	return nil
}
