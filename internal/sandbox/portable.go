package sandbox

import (
	"context"
	"path/filepath"

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
	sandboxes, err := s.cfg.Store.ListSandboxes(ctx, "", nil)
	if err != nil {
		s.log.Error("requeue snapshot uploads", "err", err)
		return
	}
	for _, sb := range sandboxes {
		if sb.Status == store.StatusPaused && s.owns(sb) && sb.SnapshotUpload != store.UploadPortable && sealed(sb.SnapshotDir) {
			s.uploadSnapshot(objstore.KindSandbox, sb.ID, sb.Epoch, sb.SnapshotDir)
		}
	}
}

func sealed(dir string) bool {
	return dir != "" && fileExists(filepath.Join(dir, snapshot.ManifestName))
}
