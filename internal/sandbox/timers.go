package sandbox

import (
	"context"
	"time"

	"github.com/stasis-sandbox/stasis/internal/store"
)

// TimerInterval is how often the scheduler looks for due timers.
const TimerInterval = 250 * time.Millisecond

// RunTimers drives every sandbox's timeout (pause after active time) and
// auto-delete (delete after continuous paused time) until ctx ends.
// Deadlines live in the store, so they survive restarts; each firing goes
// through the same locked lifecycle path as a user's request and re-checks
// the deadline under the lock, so a timer racing a user's pause, resume or
// delete acts on the state it finds, or not at all.
func (s *Service) RunTimers(ctx context.Context) {
	t := time.NewTicker(TimerInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		due, err := s.cfg.Store.DueTimers(ctx, time.Now())
		if err != nil {
			s.log.Error("timers", "err", err)
			continue
		}
		for _, sb := range due {
			s.fireTimer(ctx, sb.ID)
		}
	}
}

func (s *Service) fireTimer(ctx context.Context, id string) {
	b := s.box(id)
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, err := s.cfg.Store.GetSandbox(ctx, "", id)
	if err != nil {
		return // deleted meanwhile
	}
	now := time.Now()
	switch {
	case sb.Status == store.StatusActive && sb.PauseAt != nil && !sb.PauseAt.After(now):
		s.log.Info("timeout reached: pausing", "sandbox", id)
		if err := s.pauseLocked(ctx, b, sb); err != nil {
			s.log.Error("timeout pause failed", "sandbox", id, "err", err)
		}
	case sb.Status == store.StatusPaused && sb.DeleteAt != nil && !sb.DeleteAt.After(now):
		s.log.Info("auto-delete reached: deleting", "sandbox", id)
		if err := s.deleteLocked(ctx, b, id); err != nil {
			s.log.Error("auto-delete failed", "sandbox", id, "err", err)
		}
	}
}
