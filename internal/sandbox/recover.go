package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/snapshot"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// Recover reconciles the store with what the runtime is running after a
// stasisd (re)start: running sandboxes are re-adopted without disturbing
// them, interrupted operations are settled into a state that is true, and
// runtime resources nobody owns are removed.
func (s *Service) Recover(ctx context.Context) error {
	running, err := s.cfg.Driver.List(ctx)
	if err != nil {
		return fmt.Errorf("recover: list runtime: %w", err)
	}
	byID := map[string]runtime.Instance{}
	for _, inst := range running {
		byID[inst.ID] = inst
	}
	// In a cluster, other nodes' sandboxes are theirs to recover; one that
	// runs here anyway moved on while this node was away, and is stopped
	// below as an orphan.
	own, err := s.ownSandboxes(ctx)
	if err != nil {
		return fmt.Errorf("recover: list store: %w", err)
	}
	known := map[string]bool{}
	for _, sb := range own {
		if sb.TeamID == buildTeam {
			// A template build interrupted by the restart: its sandbox is
			// useless now (the build is marked failed below).
			continue
		}
		known[sb.ID] = true
		inst, isRunning := byID[sb.ID]
		s.recoverOne(ctx, sb, inst, isRunning)
	}
	for id := range byID {
		if !known[id] {
			s.log.Warn("destroying orphaned runtime sandbox", "sandbox", id)
			if err := s.cfg.Driver.Destroy(ctx, id); err != nil {
				s.log.Error("destroy orphan", "sandbox", id, "err", err)
			}
		}
	}
	s.removeOrphanSnapshots(known)
	s.pruneRoots(running)
	s.requeueUploads(ctx)
	for _, sb := range own {
		if sb.TeamID == buildTeam {
			b := s.box(sb.ID)
			b.mu.Lock()
			s.deleteLocked(ctx, b, sb.ID)
			b.mu.Unlock()
		}
	}
	// Builds another node is running (it holds their lease) go on.
	return s.cfg.Store.FailUnfinishedBuilds(ctx, s.holder(), "build_failed: interrupted by a stasisd restart; rebuild it")
}

func (s *Service) recoverOne(ctx context.Context, sb *store.Sandbox, inst runtime.Instance, isRunning bool) {
	b := s.box(sb.ID)
	b.mu.Lock()
	defer b.mu.Unlock()
	s.recoverLocked(ctx, b, sb, inst, isRunning)
}

// recoverLocked is recoverOne with b.mu held.
func (s *Service) recoverLocked(ctx context.Context, b *box, sb *store.Sandbox, inst runtime.Instance, isRunning bool) {
	defer s.removeStaleSnapshots(sb)
	hasSnapshot := sb.SnapshotDir != "" && fileExists(filepath.Join(sb.SnapshotDir, snapshot.ManifestName))
	if sb.Status == store.StatusPaused && !hasSnapshot && sb.SnapshotDir != "" && isRunning {
		// stasisd stopped while sealing this pause's checkpoint. The
		// checkpoint was complete before the pause was recorded, and the
		// sandbox still running proves this is the same boot, so the files
		// are intact (at worst in the page cache): seal them now. Had the
		// host gone down instead, they could be torn, and are not trusted.
		if _, err := snapshot.Seal(sb.SnapshotDir); err != nil {
			s.log.Error("sealing an interrupted pause's snapshot", "sandbox", sb.ID, "err", err)
		} else {
			hasSnapshot = true
			s.log.Info("sealed the snapshot of a pause interrupted by the restart", "sandbox", sb.ID)
		}
	}

	if sb.Status == store.StatusPaused || sb.Status == store.StatusFailed {
		if isRunning {
			// A paused sandbox kept frozen in RAM, or one whose pause was
			// recorded just before the crash: the committed snapshot is the truth.
			s.cfg.Driver.Destroy(ctx, sb.ID)
		}
		if sb.Status == store.StatusPaused && !hasSnapshot {
			s.setStatus(ctx, sb, store.StatusFailed, "snapshot is missing or was not yet on disk when the host went down; the sandbox cannot be resumed")
		}
		return
	}
	// starting, active, pausing or resuming: the runtime decides.
	if isRunning {
		if inst.Frozen {
			s.cfg.Driver.Thaw(ctx, sb.ID) // an interrupted pause: carry on running
		}
		c := agentclient.New(inst.AgentAddr(), s.agentToken(sb.ID))
		err := s.waitReady(ctx, c)
		if err == nil {
			// A stasisd stopped between a create's boot and its CPU limit
			// left the sandbox without it.
			err = s.cfg.Driver.LimitCPU(ctx, sb.ID, sb.VCPU)
		}
		if err == nil {
			b.agent = c
			old := sb.SnapshotDir
			sb.SnapshotDir, sb.SnapshotBytes = "", 0
			if sb.Status != store.StatusActive || old != "" {
				s.setStatus(ctx, sb, store.StatusActive, "")
			}
			s.log.Info("re-adopted running sandbox", "sandbox", sb.ID)
			return
		}
		s.log.Error("running sandbox cannot be re-adopted; stopping it", "sandbox", sb.ID, "err", err)
		s.cfg.Driver.Destroy(ctx, sb.ID)
	}
	switch {
	case hasSnapshot:
		// An interrupted resume: the snapshot was kept until the restore was confirmed.
		s.setStatus(ctx, sb, store.StatusPaused, "")
	case sb.Status == store.StatusStarting:
		s.setStatus(ctx, sb, store.StatusFailed, "creation was interrupted by a stasisd restart")
	case isRunning:
		s.setStatus(ctx, sb, store.StatusFailed,
			"sandbox did not answer after stasisd restarted and was stopped; it has no snapshot, so its state is lost")
	default:
		s.setStatus(ctx, sb, store.StatusFailed,
			"sandbox was lost: it was not running and has no snapshot after stasisd restarted")
	}
}

// removeStaleSnapshots deletes every checkpoint of a sandbox except the one
// the store points at: half-written ones (never renamed into place, so never
// trusted) and superseded ones whose removal a crash interrupted.
func (s *Service) removeStaleSnapshots(sb *store.Sandbox) {
	root := s.snaps.SandboxDir(sb.ID)
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if p := filepath.Join(root, e.Name()); p != sb.SnapshotDir {
			os.RemoveAll(p)
		}
	}
}

func (s *Service) removeOrphanSnapshots(known map[string]bool) {
	entries, _ := os.ReadDir(s.snaps.Root())
	for _, e := range entries {
		if !known[e.Name()] {
			s.log.Warn("removing snapshots of unknown sandbox", "sandbox", e.Name())
			os.RemoveAll(s.snaps.SandboxDir(e.Name()))
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
