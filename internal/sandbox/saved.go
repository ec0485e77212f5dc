package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/stasis-sandbox/stasis/internal/objstore"
	"github.com/stasis-sandbox/stasis/internal/snapshot"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// SaveSnapshot keeps the current state of an active or paused sandbox as a
// named snapshot that new sandboxes can start from (POST /sandboxes with
// from_snapshot). An active sandbox is frozen for the checkpoint and then
// continues; a paused one's checkpoint is linked, not copied.
func (s *Service) SaveSnapshot(ctx context.Context, teamID, id, name string) (*store.SavedSnapshot, error) {
	if name != "" {
		if err := validateName(name); err != nil {
			return nil, err
		}
	}
	if _, err := s.Get(ctx, teamID, id); err != nil {
		return nil, err
	}
	if err := s.checkRoom(); err != nil {
		return nil, err
	}
	b := s.box(id)
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, err := s.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	ctx, cancel := lifecycleCtx(ctx)
	defer cancel()
	snap := &store.SavedSnapshot{ID: store.NewID(), TeamID: teamID, SandboxID: id, Name: name, Source: *sb}
	if snap.Name == "" {
		snap.Name = sb.Name
	}
	tmp, err := s.saved.Begin(snap.ID)
	if err != nil {
		return nil, err
	}
	switch sb.Status {
	case store.StatusActive:
		err = s.settleLoading(ctx, b, id)
		if err == nil {
			err = s.freezeForCheckpoint(ctx, b.agent, id)
		}
		if err == nil {
			err = s.cfg.Driver.Checkpoint(ctx, id, tmp)
			if terr := s.cfg.Driver.Thaw(ctx, id); err == nil {
				err = terr
			}
		}
	case store.StatusPaused:
		b.awaitSeal()
		if err = snapshot.Verify(sb.SnapshotDir); err == nil {
			err = linkTree(sb.SnapshotDir, tmp)
		}
	default:
		err = newErr(ErrConflict, "invalid_state", "sandbox %s is %s; only an active or paused sandbox can be snapshotted", id, sb.Status)
	}
	if err == nil {
		snap.Dir, snap.SizeBytes, err = s.saved.Commit(tmp)
	}
	if err == nil {
		err = s.cfg.Store.InsertSavedSnapshot(ctx, snap)
	}
	if err != nil {
		os.RemoveAll(s.saved.SandboxDir(snap.ID))
		var e *Error
		if errors.As(err, &e) {
			return nil, e
		}
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	s.uploadSnapshot(objstore.KindSaved, snap.ID, 0, snap.Dir)
	return snap, nil
}

// linkTree hard-links the files of a committed snapshot into dst (same
// filesystem), leaving out its manifest: the new snapshot gets its own.
func linkTree(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == snapshot.ManifestName {
			continue
		}
		if e.IsDir() {
			if err := os.Mkdir(filepath.Join(dst, e.Name()), 0o700); err != nil {
				return err
			}
			if err := linkTree(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
				return err
			}
			continue
		}
		if err := os.Link(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// SavedSnapshots lists the team's saved snapshots.
func (s *Service) SavedSnapshots(ctx context.Context, teamID string) ([]*store.SavedSnapshot, error) {
	return s.cfg.Store.ListSavedSnapshots(ctx, teamID)
}

// DeleteSavedSnapshot removes a saved snapshot and its files.
func (s *Service) DeleteSavedSnapshot(ctx context.Context, teamID, id string) error {
	snap, err := s.cfg.Store.GetSavedSnapshot(ctx, teamID, id)
	if errors.Is(err, store.ErrNotFound) {
		return newErr(ErrNotFound, "not_found", "snapshot %s not found", Shorten(id))
	}
	if err != nil {
		return err
	}
	if err := s.cfg.Store.DeleteSavedSnapshot(ctx, snap.ID); err != nil {
		return err
	}
	s.deleteObjects(objstore.KindSaved, snap.ID)
	return os.RemoveAll(s.saved.SandboxDir(snap.ID))
}

// createFromSaved starts a sandbox from a saved snapshot.
func (s *Service) createFromSaved(ctx context.Context, teamID string, p CreateParams) (*store.Sandbox, string, error) {
	snap, err := s.cfg.Store.GetSavedSnapshot(ctx, teamID, p.Snapshot)
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", newErr(ErrNotFound, "not_found", "snapshot %s not found", Shorten(p.Snapshot))
	}
	if err != nil {
		return nil, "", err
	}
	if snap.Dir, err = s.localCopy(ctx, objstore.KindSaved, snap.ID, snap.Dir); err != nil {
		return nil, "", err
	}
	if err := snapshot.Verify(snap.Dir); err != nil {
		return nil, "", newErr(ErrConflict, "snapshot_corrupt", "snapshot %s cannot be used: %v", snap.ID, err)
	}
	sb := like(&snap.Source, p.Name)
	sb.TeamID = teamID
	if p.Metadata != nil {
		sb.Metadata = p.Metadata
	}
	sb.TimeoutSeconds, sb.AutoDeleteSeconds = p.TimeoutSeconds, p.AutoDeleteSeconds
	sb.DeleteOnTimeout, sb.NoAutoResume = p.DeleteOnTimeout, p.NoAutoResume
	p.applyNetwork(sb) // rules given with the create replace the snapshot's
	c, err := s.createFrom(ctx, sb, origin{dir: snap.Dir, agentToken: s.agentToken(snap.SandboxID)})
	if err != nil {
		return c.Sandbox, c.Token, err
	}
	// Its processes hold the source's stand-in tokens: they go on resolving
	// while the source sandbox exists.
	if err := s.inheritSecrets(ctx, snap.SandboxID, sb.ID); err != nil {
		return c.Sandbox, c.Token, fmt.Errorf("snapshot %s: secret bindings: %w", snap.ID, err)
	}
	return c.Sandbox, c.Token, nil
}
