package store

import (
	"context"
	"testing"
	"time"
)

// testNextTimerIsEarliestDeadline: NextTimer is the earliest deadline that
// DueTimers acts on (an active sandbox's pause, a paused one's delete), and
// ignores the deadlines of other statuses, which never fire.
func testNextTimerIsEarliestDeadline(t *testing.T, s Store) {
	ctx := context.Background()
	if _, ok, err := s.NextTimer(ctx); err != nil || ok {
		t.Fatalf("empty store: ok %v, %v", ok, err)
	}
	now := time.Now()
	at := func(d time.Duration) *time.Time { v := now.Add(d); return &v }
	pausing := ownedSandbox(t, s, "")
	pausing.PauseAt = at(3 * time.Second)
	pausing.DeleteAt = at(-time.Hour) // not paused: never fires
	deleting := ownedSandbox(t, s, "n")
	deleting.Status, deleting.DeleteAt = StatusPaused, at(time.Second)
	deleting.PauseAt = at(-time.Hour) // not active: never fires
	stopped := ownedSandbox(t, s, "")
	stopped.Status, stopped.PauseAt, stopped.DeleteAt = StatusFailed, at(-2*time.Hour), at(-2*time.Hour)
	for _, sb := range []*Sandbox{pausing, deleting, stopped} {
		if err := s.UpdateSandbox(ctx, sb); err != nil {
			t.Fatal(err)
		}
	}
	next, ok, err := s.NextTimer(ctx)
	if err != nil || !ok || !next.Equal(*deleting.DeleteAt) {
		t.Fatalf("next timer %v (ok %v, %v), want the paused sandbox's delete at %v", next, ok, err, *deleting.DeleteAt)
	}
	deleting.DeleteAt = nil
	if err := s.UpdateSandbox(ctx, deleting); err != nil {
		t.Fatal(err)
	}
	next, ok, err = s.NextTimer(ctx)
	if err != nil || !ok || !next.Equal(*pausing.PauseAt) {
		t.Fatalf("next timer %v (ok %v, %v), want the active sandbox's pause at %v", next, ok, err, *pausing.PauseAt)
	}
}
