package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stasis-sandbox/stasis/internal/store"
)

// Leases make work that any node could start run exactly once across a
// cluster: a timer firing, a template build. On a single node they are
// uncontended and cost one write.
const (
	timerLeaseTTL = 30 * time.Second
	buildLeaseTTL = 30 * time.Second
	// buildLeaseRenew is how often a running build renews its lease; well
	// inside the TTL, so a live builder never loses it.
	buildLeaseRenew = buildLeaseTTL / 3
)

// holder names this node as a lease holder.
func (s *Service) holder() string {
	if s.cfg.NodeName == "" {
		return "local"
	}
	return s.cfg.NodeName
}

func timerLease(id string) string         { return "timer:" + id }
func buildLease(templateID string) string { return "build:" + templateID }

// owns reports whether this node may change sb: it is the owner the row
// names, or the row names none (written before sandboxes had owners).
func (s *Service) owns(sb *store.Sandbox) bool {
	return sb.Node == "" || sb.Node == s.cfg.NodeName
}

// ownSandboxes lists the sandboxes this node owns (as owns has it) in
// statuses, any when none: one query, for periodic work that must not
// read the whole cluster's sandboxes on every node.
func (s *Service) ownSandboxes(ctx context.Context, statuses ...string) ([]*store.Sandbox, error) {
	nodes := []string{""}
	if s.cfg.NodeName != "" {
		nodes = append(nodes, s.cfg.NodeName)
	}
	return s.cfg.Store.NodeSandboxes(ctx, nodes, statuses...)
}

// update writes sb's changes, fenced twice: only the owner node writes,
// and the store applies the write only if the owner and epoch did not move
// since sb was read. When the sandbox moved on, this node's copy of it is
// stopped and the error is store.ErrFenced (409 sandbox_moved).
func (s *Service) update(ctx context.Context, sb *store.Sandbox) error {
	if !s.owns(sb) {
		s.stopMovedOn(ctx, sb)
		return fmt.Errorf("update sandbox %s owned by node %s: %w", sb.ID, sb.Node, store.ErrFenced)
	}
	err := s.cfg.Store.UpdateSandbox(ctx, sb)
	s.timers.kick() // a deadline may have moved (RunTimers)
	if errors.Is(err, store.ErrFenced) {
		s.stopMovedOn(ctx, sb)
	}
	return err
}

// stopMovedOn is called when a fenced update of sb failed: if another node
// owns the sandbox now, this node's copy is stale, and whatever of it still
// runs here is stopped so that only the owner's copy lives on.
func (s *Service) stopMovedOn(ctx context.Context, sb *store.Sandbox) {
	cur, err := s.cfg.Store.GetSandbox(ctx, "", sb.ID)
	if err != nil || cur.Node == s.cfg.NodeName {
		return // gone, or still ours (our own copy was merely stale)
	}
	s.log.Warn("sandbox moved to another node: stopping this node's stale copy",
		"sandbox", sb.ID, "owner", cur.Node, "epoch", cur.Epoch)
	if err := s.cfg.Driver.Destroy(ctx, sb.ID); err != nil {
		s.log.Error("stop stale copy", "sandbox", sb.ID, "err", err)
	}
}

// keepBuildLease renews the build lease of a template until ctx ends. If
// the lease is lost (this node could not renew it in time
// and another took it), lost is called: the build must stop.
func (s *Service) keepBuildLease(ctx context.Context, templateID string, lost func()) {
	name := buildLease(templateID)
	t := time.NewTicker(buildLeaseRenew)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, err := s.cfg.Store.TryLease(ctx, name, s.holder(), buildLeaseTTL)
		if err != nil {
			s.log.Warn("renew build lease", "template", templateID, "err", err)
			continue // the database may be back before the lease runs out
		}
		if !ok {
			s.log.Error("build lease taken by another node: stopping this build", "template", templateID)
			lost()
			return
		}
	}
}
