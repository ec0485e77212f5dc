package sandbox

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/stasis-sandbox/stasis/internal/store"
)

// adopt makes this node the owner of a paused sandbox another node owned
// (one that is lost or draining, or that placement sent here), and fetches
// its snapshot from the object store. The claim comes first and is fenced
// by the epoch: of two nodes adopting at once, one wins and the other is
// told, so the sandbox is restored exactly once.
func (s *Service) adopt(ctx context.Context, sb *store.Sandbox) error {
	if s.cfg.SnapshotCache == nil {
		return newErr(ErrConflict, "snapshot_not_portable",
			"sandbox %s is paused on node %s and this node has no object store to fetch it from", sb.ID, sb.Node)
	}
	if sb.SnapshotUpload != store.UploadPortable {
		state := "upload " + sb.SnapshotUpload
		switch {
		case sb.SnapshotUpload == "":
			state = "not uploaded"
		case sb.SnapshotUploadDetail != "":
			state += ": " + sb.SnapshotUploadDetail // e.g. why it failed and when it retries
		}
		return newErr(ErrConflict, "snapshot_not_portable",
			"sandbox %s is paused on node %s and its snapshot is not in the object store yet (%s); resume it on that node, or retry once the upload completes",
			sb.ID, sb.Node, state)
	}
	from := sb.Node
	epoch, err := s.cfg.Store.ClaimSandbox(ctx, sb.ID, sb.Epoch, s.cfg.NodeName)
	if errors.Is(err, store.ErrFenced) {
		return newErr(ErrConflict, "resumed_elsewhere",
			"sandbox %s was just taken over by another node; retry and the request goes there", sb.ID)
	}
	if err != nil {
		return fmt.Errorf("claim sandbox %s: %w", sb.ID, err)
	}
	sb.Node, sb.Epoch = s.cfg.NodeName, epoch
	// The snapshot and the agent binary, at this node's paths: resumeLocked
	// downloads the snapshot there (fetchIfGone) and records both.
	if sb.SnapshotDir != "" {
		sb.SnapshotDir = filepath.Join(s.snaps.SandboxDir(sb.ID), filepath.Base(sb.SnapshotDir))
	}
	sb.AgentPath = s.localAgentPath(sb.AgentPath)
	s.log.Info("took over a sandbox from another node", "sandbox", sb.ID, "from", from, "epoch", epoch)
	return nil
}

// localAgentPath is this node's copy of the agent binary that another node
// recorded at p (agents are kept by version), or this node's own agent
// when it has no such copy. "" stays "".
func (s *Service) localAgentPath(p string) string {
	if p == "" {
		return p
	}
	local := filepath.Join(s.cfg.AgentDir, filepath.Base(filepath.Dir(p)), "stasis-agent")
	if !fileExists(local) {
		local = s.agentPath
	}
	return local
}

// takeOverFromLost makes this node the owner of sandbox sb, which another
// node owns, so that it may delete it: allowed only when that node is lost
// (a live owner deletes its own sandboxes). The claim is fenced by the
// epoch: of two nodes deleting or resuming it at once, one wins and the
// other is told, so a lost node's sandbox is deleted exactly once.
func (s *Service) takeOverFromLost(ctx context.Context, sb *store.Sandbox) error {
	if !s.lostNodes(ctx)[sb.Node] {
		s.stopMovedOn(ctx, sb)
		return fmt.Errorf("delete sandbox %s owned by node %s: %w", sb.ID, sb.Node, store.ErrFenced)
	}
	epoch, err := s.cfg.Store.ClaimSandbox(ctx, sb.ID, sb.Epoch, s.cfg.NodeName)
	if errors.Is(err, store.ErrFenced) {
		return newErr(ErrConflict, "resumed_elsewhere",
			"sandbox %s was just taken over by another node; retry and the request goes there", sb.ID)
	}
	if err != nil {
		return fmt.Errorf("claim sandbox %s of lost node %s: %w", sb.ID, sb.Node, err)
	}
	s.log.Info("took over a lost node's sandbox to delete it", "sandbox", sb.ID, "from", sb.Node, "epoch", epoch)
	return nil
}

// lostNodes returns the nodes declared lost (none when the store cannot
// say: then nothing of theirs is touched).
func (s *Service) lostNodes(ctx context.Context) map[string]bool {
	nodes, err := s.cfg.Store.ListNodes(ctx)
	if err != nil {
		s.log.Warn("listing nodes", "err", err)
		return map[string]bool{}
	}
	lost := map[string]bool{}
	for _, n := range nodes {
		if n.State == store.NodeLost {
			lost[n.Name] = true
		}
	}
	return lost
}

// Load is this node's free memory and how many sandboxes it runs, for
// placement.
func (s *Service) Load(ctx context.Context) (memFreeMiB int64, running int) {
	if list, err := s.cfg.Driver.List(ctx); err == nil {
		running = len(list)
	}
	_, avail := meminfo()
	return avail / 1024, running
}

// FailLostNode marks the sandboxes a lost node was running failed: their
// processes died with it (or are cut off, which is the same to users).
// Its paused sandboxes stay paused, to resume elsewhere.
func (s *Service) FailLostNode(ctx context.Context, node, reason string) (int, error) {
	live, err := s.cfg.Store.NodeSandboxes(ctx, []string{node},
		store.StatusStarting, store.StatusActive, store.StatusPausing, store.StatusResuming)
	if err != nil {
		return 0, fmt.Errorf("fail sandboxes of lost node %s: %w", node, err)
	}
	n := 0
	for _, sb := range live {
		// Written by a node that does not own it, so straight to the store,
		// still fenced: if the node came back and changed it, it stays.
		sb.Status, sb.Error, sb.PauseAt, sb.DeleteAt = store.StatusFailed, reason, nil, nil
		if err := s.cfg.Store.UpdateSandbox(ctx, sb); err != nil {
			s.log.Warn("failing a lost node's sandbox", "sandbox", sb.ID, "node", node, "err", err)
			continue
		}
		n++
	}
	return n, nil
}

// StopMovedAway stops what this node still runs of sandboxes it no longer
// owns (another node took them over while this one was away) or that
// failed while it was declared lost: their truth is elsewhere now.
func (s *Service) StopMovedAway(ctx context.Context) {
	running, err := s.cfg.Driver.List(ctx)
	if err != nil || len(running) == 0 {
		return
	}
	// One query for the whole round: what this node owns and has not
	// failed stays. Its rows were written before its runtime started (the
	// runtime was listed first), so only the rest can have moved away, and
	// each of those is read again under its lock before it is stopped.
	own, err := s.ownSandboxes(ctx)
	if err != nil {
		return
	}
	stays := make(map[string]bool, len(own))
	for _, sb := range own {
		if sb.Status != store.StatusFailed {
			stays[sb.ID] = true
		}
	}
	for _, inst := range running {
		if !stays[inst.ID] {
			b := s.box(inst.ID)
			b.mu.Lock()
			// Look again under the lock: a restore here may just have claimed it.
			sb, err := s.cfg.Store.GetSandbox(ctx, "", inst.ID)
			if errors.Is(err, store.ErrNotFound) || (err == nil && (!s.owns(sb) || sb.Status == store.StatusFailed)) {
				s.log.Warn("stopping a sandbox that moved to another node or failed while this node was away", "sandbox", inst.ID)
				b.endSessions("the sandbox moved to another node")
				b.agent = nil
				b.setWarm(time.Time{})
				s.cfg.Driver.Destroy(ctx, inst.ID)
			}
			b.mu.Unlock()
		}
	}
}

// PauseOwn pauses every active sandbox this node owns (draining it).
func (s *Service) PauseOwn(ctx context.Context) { s.PauseAll(ctx) }
