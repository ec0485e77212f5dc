package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// Health checks of running sandboxes: a sandbox whose network link or agent
// vanished underneath stasis (another program deleted its veth, say) must
// not stay "active" while every call fails. A sandbox whose runtime died is
// markDead's (timers.go).
const (
	// healthInterval is how often every active sandbox's link is checked
	// (on the host: the sandbox does not notice).
	healthInterval = 10 * time.Second
	// agentProbeInterval is how often an agent that answered its last probe
	// is probed again; one that did not is probed every healthInterval.
	// Every probe wakes the sandbox (its sentry and agent), which is what an
	// idle sandbox costs the host (docs/density/NOTES.md, "Idle CPU"). A
	// probe comes at the first round after this much time, 40-50 s: below
	// agentclient's IdleConnTimeout, so that it finds its connection open.
	agentProbeInterval = 40 * time.Second
	// agentProbeTimeout bounds one health request to an agent.
	agentProbeTimeout = 5 * time.Second
	// unansweredProbes is how many health requests in a row an agent may
	// leave unanswered, on a link that is intact, before its sandbox is
	// failed: a busy sandbox answers late, not never.
	unansweredProbes = 3
)

// healthState is the health checker's: requests for an early check, each
// sandbox's count of unanswered probes, and when its agent last answered
// one (only the checker touches them).
type healthState struct {
	soon       chan string
	unanswered map[string]int
	answered   map[string]answer
}

// answer is when an agent (one client: a resumed sandbox gets a new one)
// last answered a probe.
type answer struct {
	agent *agentclient.Client
	at    time.Time
}

func newHealthState() *healthState {
	return &healthState{soon: make(chan string, 64), unanswered: map[string]int{}, answered: map[string]answer{}}
}

// CheckSoon asks for sandbox id to be checked now rather than at the next
// round; the API calls it when a call to the sandbox's agent went
// unanswered. It never blocks.
func (s *Service) CheckSoon(id string) {
	select {
	case s.health.soon <- id:
	default: // a check is due anyway
	}
}

// RunHealthChecks checks every active sandbox's link and agent until ctx
// ends: each healthInterval, and at once for a sandbox named to CheckSoon.
func (s *Service) RunHealthChecks(ctx context.Context) {
	t := time.NewTicker(healthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-s.health.soon:
			s.checkHealth(ctx, id, nil, true)
		case <-t.C:
			active, err := s.ownSandboxes(ctx, store.StatusActive)
			if err != nil {
				s.log.Error("health checks: listing sandboxes", "err", err)
				continue
			}
			seen := map[string]bool{}
			for _, sb := range active {
				seen[sb.ID] = true
				s.checkHealth(ctx, sb.ID, sb, false)
			}
			for id := range s.health.unanswered {
				if !seen[id] {
					delete(s.health.unanswered, id)
				}
			}
			for id := range s.health.answered {
				if !seen[id] {
					delete(s.health.answered, id)
				}
			}
		}
	}
}

// checkHealth checks one active sandbox: its link (mended in place where
// the driver can, else the sandbox is moved onto a new one), then whether
// its agent answers, if a probe is due or probe is set. listed is its row
// as the round's list read it (nil: read it now). A row that changed since
// only costs a probe: what acts on a failed check reads the row again under
// the lock (lockedActive).
func (s *Service) checkHealth(ctx context.Context, id string, listed *store.Sandbox, probe bool) {
	b := s.box(id)
	if !b.mu.TryLock() {
		return // an operation is in flight; it sees for itself
	}
	sb, err := listed, error(nil)
	if sb == nil {
		sb, err = s.Get(ctx, "", id)
	}
	agent := b.agent
	b.mu.Unlock()
	if err != nil || sb.Status != store.StatusActive || agent == nil {
		delete(s.health.unanswered, id)
		delete(s.health.answered, id)
		return
	}
	if lc, ok := s.cfg.Driver.(runtime.LinkChecker); ok {
		repaired, err := lc.CheckLink(ctx, id)
		switch {
		case errors.Is(err, runtime.ErrLinkGone):
			s.relink(ctx, id, agent, err)
			return
		case err != nil:
			s.log.Warn("health check: cannot check the sandbox's link", "sandbox", id, "err", err)
		case repaired:
			s.metrics.Fail("health", "link_repaired")
			s.log.Warn("health check: repaired the host end of the sandbox's link (address or state changed outside stasis)", "sandbox", id)
		}
	}
	if last := s.health.answered[id]; !probe && last.agent == agent && time.Since(last.at) < agentProbeInterval {
		return
	}
	err = probeAgent(ctx, agent)
	if err == nil {
		delete(s.health.unanswered, id)
		s.health.answered[id] = answer{agent: agent, at: time.Now()}
		return
	}
	delete(s.health.answered, id) // probed every round until it answers
	if n := s.health.unanswered[id] + 1; n < unansweredProbes {
		s.health.unanswered[id] = n
		s.log.Warn("health check: the sandbox's agent did not answer", "sandbox", id, "in_a_row", n, "err", err)
	} else {
		delete(s.health.unanswered, id)
		s.failUnanswered(ctx, id, agent, err)
	}
}

// probeAgent asks the agent for its health. An answer of any kind, even
// an error, proves the agent and the link alive.
func probeAgent(ctx context.Context, agent *agentclient.Client) error {
	ctx, cancel := context.WithTimeout(ctx, agentProbeTimeout)
	defer cancel()
	err := agent.Health(ctx)
	var answered *agentclient.Error
	if errors.As(err, &answered) {
		return nil
	}
	return err
}

// lockedActive locks id's box and returns the sandbox if it is still the
// active one whose agent was checked; otherwise it unlocks and returns nil.
func (s *Service) lockedActive(ctx context.Context, id string, agent *agentclient.Client) (*box, *store.Sandbox) {
	b := s.box(id)
	b.mu.Lock()
	sb, err := s.Get(ctx, "", id)
	if err != nil || sb.Status != store.StatusActive || b.agent != agent {
		b.mu.Unlock()
		return nil, nil
	}
	return b, sb
}

// relink moves a sandbox whose link vanished onto a new one: its runtime
// still holds its whole state, which a pause (the checkpoint needs no
// network) and a resume (which always builds a fresh link) carry over. If
// that fails, the pause and resume paths leave a true state: failed with
// the reason, or paused (resumable) with the reason.
func (s *Service) relink(ctx context.Context, id string, agent *agentclient.Client, cause error) {
	b, sb := s.lockedActive(ctx, id, agent)
	if b == nil {
		return
	}
	defer b.mu.Unlock()
	s.metrics.Fail("health", "link_gone")
	s.log.Warn("health check: the sandbox's network link vanished; moving it onto a new one (pause and resume)", "sandbox", id, "err", cause)
	ctx, cancel := lifecycleCtx(ctx)
	defer cancel()
	if err := s.pauseLocked(ctx, b, sb); err != nil {
		s.log.Error("health check: could not pause the sandbox off its vanished link", "sandbox", id, "err", err)
		return
	}
	b.awaitSeal()
	if b.sealing != nil && b.sealing.err != nil {
		return // its sealer settles it (see seal)
	}
	// The snapshot is durable: the frozen sandbox on the dead link is of no
	// more use, and a thaw would only wait for an agent it cannot reach.
	b.setWarm(time.Time{})
	b.agent = nil
	if err := s.cfg.Driver.Destroy(ctx, id); err != nil {
		s.log.Error("health check: stopping the sandbox on its vanished link", "sandbox", id, "err", err)
	}
	if err := s.resumeLocked(ctx, b, sb, false); err != nil {
		s.log.Error("health check: resuming the sandbox on a new link failed; it stays paused", "sandbox", id, "err", err)
		return
	}
	s.log.Info("health check: the sandbox runs again on a new link", "sandbox", id)
}

// failUnanswered fails a sandbox whose agent has not answered
// unansweredProbes probes in a row on an intact link, after one last try.
func (s *Service) failUnanswered(ctx context.Context, id string, agent *agentclient.Client, cause error) {
	b, sb := s.lockedActive(ctx, id, agent)
	if b == nil {
		return
	}
	defer b.mu.Unlock()
	if err := probeAgent(ctx, agent); err == nil {
		return
	}
	s.metrics.Fail("health", "agent_unanswered")
	s.log.Error("health check: the sandbox's agent stopped answering; failing it", "sandbox", id, "err", cause)
	b.endSessions("the sandbox stopped answering and was marked failed")
	b.agent = nil
	s.cfg.Driver.Destroy(ctx, id)
	s.setStatus(ctx, sb, store.StatusFailed, fmt.Sprintf(
		"the sandbox stopped answering: its agent left %d health checks in a row unanswered (%v); its state is lost",
		unansweredProbes+1, cause))
}
