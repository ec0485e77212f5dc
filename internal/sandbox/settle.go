package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stasis-sandbox/stasis/internal/store"
)

// When the database becomes unavailable in the middle of a lifecycle
// operation, the runtime and the store disagree: a create whose sandbox
// started but was not recorded, a pause or resume recorded as pausing or
// resuming. The operation answers 503 store_unavailable; these settle the
// sandbox in the background once the database answers again, without a
// restart, so that nothing stays half-done.

// settleBackoff bounds the wait between two tries while the store is down.
const (
	settleMinBackoff = 500 * time.Millisecond
	settleMaxBackoff = 10 * time.Second
)

// errUnsettled: the store still records the sandbox mid-operation.
var errUnsettled = errors.New("sandbox still recorded mid-operation")

// settleLater runs settle (with the sandbox's lock held) until it
// succeeds, retrying with backoff while the store is unavailable.
func (s *Service) settleLater(id, what string, settle func(ctx context.Context, b *box) error) {
	go func() {
		wait := settleMinBackoff
		for attempt := 1; ; attempt++ {
			time.Sleep(wait)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			b := s.box(id)
			b.mu.Lock()
			err := settle(ctx, b)
			b.mu.Unlock()
			cancel()
			switch {
			case err == nil:
				s.log.Info("settled a sandbox after the database came back", "sandbox", id, "what", what, "attempts", attempt)
				return
			case !store.IsUnavailable(err) && !errors.Is(err, errUnsettled):
				s.log.Error("settling a sandbox after the database came back failed; the next start retries", "sandbox", id, "what", what, "err", err)
				return
			}
			wait = min(2*wait, settleMaxBackoff)
		}
	}()
}

// undoCreateLater removes a sandbox whose create was answered with an
// error because the store failed under it: whatever the create recorded
// (the insert may have committed before the connection dropped) and
// whatever it started. The client never got its ID.
func (s *Service) undoCreateLater(ctx context.Context, b *box, id string, cause error) {
	if !store.IsUnavailable(cause) {
		return
	}
	if b.agent != nil { // it started
		b.agent = nil
		if err := s.cfg.Driver.Destroy(ctx, id); err != nil {
			s.log.Error("stopping a sandbox whose create could not be recorded", "sandbox", id, "err", err)
		}
	}
	s.settleLater(id, "undo create", func(ctx context.Context, b *box) error {
		return s.deleteLocked(ctx, b, id)
	})
}

// settleInterruptedLater settles a pause or resume that failed with the
// store unavailable: once it answers, the sandbox's row is reconciled with
// the runtime as after a restart (Recover): a sandbox still running
// (thawed if the pause froze it) is active, one that is not but has its
// snapshot is paused.
func (s *Service) settleInterruptedLater(id, op string, cause error) {
	if !store.IsUnavailable(cause) {
		return
	}
	s.settleLater(id, "interrupted "+op, func(ctx context.Context, b *box) error {
		sb, err := s.cfg.Store.GetSandbox(ctx, "", id)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if !s.owns(sb) || !midOperation(sb.Status) {
			return nil // recorded after all, or changed since
		}
		inst, isRunning, err := s.running(ctx, id)
		if err != nil {
			return fmt.Errorf("list runtime: %w", err)
		}
		s.recoverLocked(ctx, b, sb, inst, isRunning)
		sb, err = s.cfg.Store.GetSandbox(ctx, "", id)
		if err == nil && midOperation(sb.Status) {
			return errUnsettled
		}
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	})
}

func midOperation(status string) bool {
	switch status {
	case store.StatusStarting, store.StatusPausing, store.StatusResuming:
		return true
	}
	return false
}
