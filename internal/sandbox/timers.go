package sandbox

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// TimerInterval is the shortest time between two looks for due timers.
const TimerInterval = 250 * time.Millisecond

// maxTimerSleep bounds how long the timer loop sleeps when nothing is due,
// in case a wake-up was missed (say a deadline another node wrote).
const maxTimerSleep = 30 * time.Second

// warmPoll is how often the loop looks at sandboxes still frozen in RAM:
// their warm window may end, their seal finish, or the host run low on
// memory.
const warmPoll = time.Second

// timerWake wakes RunTimers when a deadline may have changed.
type timerWake struct {
	once sync.Once
	ch   chan struct{}
}

func (w *timerWake) c() chan struct{} {
	w.once.Do(func() { w.ch = make(chan struct{}, 1) })
	return w.ch
}

// kick wakes the loop (at once, or after TimerInterval since its last
// look); it never blocks.
func (w *timerWake) kick() {
	select {
	case w.c() <- struct{}{}:
	default:
	}
}

// RunTimers drives every sandbox's timeout (pause after active time) and
// auto-delete (delete after continuous paused time) until ctx ends.
// Deadlines live in the store, so they survive restarts; each firing goes
// through the same locked lifecycle path as a user's request and re-checks
// the deadline under the lock, so a timer racing a user's pause, resume or
// delete acts on the state it finds, or not at all.
//
// Between looks it sleeps until the next deadline in the store (the dead
// check, a warm sandbox or maxTimerSleep may wake it sooner), and this
// node's writes of a sandbox wake it (see update), so an idle stasisd does
// not query the store four times a second for nothing.
func (s *Service) RunTimers(ctx context.Context) {
	sleep := time.NewTimer(0)
	defer sleep.Stop()
	var lastLook time.Time
	lastDead := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sleep.C:
		case <-s.timers.c():
			// Keep at least TimerInterval between looks, as a ticker did.
			sleep.Reset(time.Until(lastLook.Add(TimerInterval)))
			select {
			case <-ctx.Done():
				return
			case <-sleep.C:
			}
		}
		lastLook = time.Now()
		wake := s.timerTick(ctx, lastLook, &lastDead)
		sleep.Reset(time.Until(wake))
	}
}

// timerTick fires the due timers and returns when to look next.
// lastDead is when markDead last ran.
func (s *Service) timerTick(ctx context.Context, now time.Time, lastDead *time.Time) time.Time {
	if now.Sub(*lastDead) >= deadCheckInterval {
		*lastDead = now
		s.markDead(ctx)
	}
	wake := earliest(now.Add(maxTimerSleep), lastDead.Add(deadCheckInterval))
	// Read the next deadline before the due ones: one written meanwhile
	// kicks the loop, one that passes meanwhile is caught by this look or
	// the next.
	next, ok, err := s.cfg.Store.NextTimer(ctx)
	if err != nil {
		s.log.Error("timers", "err", err)
		return now.Add(TimerInterval)
	}
	if ok {
		// From the start of its second: the store compares deadlines as
		// RFC 3339 text, which orders fractions of one second loosely
		// (".1Z" after ".12Z"), so the earliest may be up to a second
		// before next; from then on the floor below polls as a ticker did.
		wake = earliest(wake, next.Truncate(time.Second))
	}
	due, err := s.cfg.Store.DueTimers(ctx, time.Now())
	if err != nil {
		s.log.Error("timers", "err", err)
		return now.Add(TimerInterval)
	}
	var lost map[string]bool // read once per look, and only when needed
	for _, sb := range due {
		if !s.owns(sb) {
			if lost == nil {
				lost = s.lostNodes(ctx)
			}
			if !lost[sb.Node] {
				continue // its owner's timers fire it
			}
			// The owner is lost: any node may fire the timer; the
			// timer lease and the epoch-fenced claim let one do it.
		}
		s.fireTimer(ctx, sb.ID)
	}
	if warm := s.evictWarm(ctx, memoryLow()); warm {
		wake = earliest(wake, now.Add(warmPoll))
	}
	if floor := now.Add(TimerInterval); wake.Before(floor) {
		return floor // a deadline its owner has yet to act on: as a ticker
	}
	return wake
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (s *Service) fireTimer(ctx context.Context, id string) {
	// One node fires a sandbox's timer: the lease keeps a second node (say
	// one that still thinks it owns the sandbox) out while this one acts,
	// and the fenced update stops a stale owner's change.
	if ok, err := s.cfg.Store.TryLease(ctx, timerLease(id), s.holder(), timerLeaseTTL); err != nil || !ok {
		return
	}
	defer s.cfg.Store.ReleaseLease(context.WithoutCancel(ctx), timerLease(id), s.holder())
	b := s.box(id)
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, err := s.cfg.Store.GetSandbox(ctx, "", id)
	if err != nil {
		return // deleted meanwhile
	}
	now := time.Now()
	deleteDue := sb.Status == store.StatusPaused && sb.DeleteAt != nil && !sb.DeleteAt.After(now)
	if !s.owns(sb) && !deleteDue {
		// Of a lost node's sandboxes only paused ones have timers left
		// (its active ones failed); anything else waits for its owner.
		return
	}
	switch {
	case sb.Status == store.StatusActive && sb.PauseAt != nil && !sb.PauseAt.After(now) && sb.DeleteOnTimeout:
		s.log.Info("timeout reached: deleting", "sandbox", id)
		if err := s.deleteLocked(ctx, b, id); err != nil {
			s.log.Error("timeout delete failed", "sandbox", id, "err", err)
		}
	case sb.Status == store.StatusActive && sb.PauseAt != nil && !sb.PauseAt.After(now):
		s.log.Info("timeout reached: pausing", "sandbox", id)
		if err := s.pauseLocked(ctx, b, sb); err != nil {
			s.log.Error("timeout pause failed", "sandbox", id, "err", err)
		}
	case deleteDue:
		s.log.Info("auto-delete reached: deleting", "sandbox", id, "owner", sb.Node)
		if err := s.deleteLocked(ctx, b, id); err != nil {
			s.log.Error("auto-delete failed", "sandbox", id, "err", err)
		}
	}
}

// DropWarm stops every paused sandbox still frozen in RAM whose snapshot is
// sealed (a clean stop, after WaitSealed): the next start would only stop
// them anyway.
func (s *Service) DropWarm(ctx context.Context) { s.evictWarm(ctx, true) }

// evictWarm stops paused sandboxes that are still frozen in RAM once their
// warm window is over, or all of them when all is set (the host runs low on
// memory). Their snapshots are already durable, so this only changes how
// the next resume happens. It reports whether any was warm.
func (s *Service) evictWarm(ctx context.Context, all bool) bool {
	s.mu.Lock()
	var ids []string
	for id, b := range s.boxes {
		if !b.warmUntil.IsZero() {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	now := time.Now()
	for _, id := range ids {
		b := s.box(id)
		if !b.mu.TryLock() {
			continue // busy (e.g. being resumed); look again next tick
		}
		// While its checkpoint is sealed, the frozen sandbox is what proves
		// the checkpoint intact after a crash (see Recover): it stays.
		if !b.warmUntil.IsZero() && b.sealing == nil && (all || now.After(b.warmUntil)) {
			b.setWarm(time.Time{})
			b.agent = nil
			if err := s.cfg.Driver.Destroy(ctx, id); err != nil {
				s.log.Error("evict warm sandbox", "sandbox", id, "err", err)
			}
			s.log.Debug("evicted warm sandbox to disk-only", "sandbox", id, "all", all)
		}
		b.mu.Unlock()
	}
	return len(ids) > 0
}

// memoryLow reports whether less than 10% of the host's memory is available.
func memoryLow() bool {
	total, avail := meminfo()
	return total > 0 && avail*10 < total
}

// meminfo returns the host's total and available memory in KiB (zeros if
// /proc/meminfo cannot be read).
func meminfo() (totalKiB, availKiB int64) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			totalKiB = n
		case "MemAvailable:":
			availKiB = n
		}
	}
	return totalKiB, availKiB
}

// deadCheckInterval is how often active sandboxes are checked for having
// died underneath stasis (e.g. killed by the host's OOM killer). Not more
// often where the driver cannot tell without the runtime's List: runsc list
// opens two connections to every sandbox's controller, waking each sentry;
// every 2 s that was most of an idle sandbox's CPU (see docs/BENCHMARKS.md's
// density section).
const deadCheckInterval = 10 * time.Second

// markDead marks active sandboxes whose runtime is gone as failed, so the
// API tells the truth instead of answering "active" for a dead sandbox.
// A driver that is a runtime.LivenessChecker is asked per sandbox, which
// leaves live sandboxes undisturbed; only those it does not vouch for are
// looked up in List.
func (s *Service) markDead(ctx context.Context) {
	var alive func(id string) bool
	if lc, ok := s.cfg.Driver.(runtime.LivenessChecker); ok {
		alive = func(id string) bool {
			ok, err := lc.Alive(id)
			return ok && err == nil
		}
	} else {
		running, err := s.cfg.Driver.List(ctx)
		if err != nil {
			return
		}
		live := map[string]bool{}
		for _, inst := range running {
			live[inst.ID] = true
		}
		alive = func(id string) bool { return live[id] }
	}
	active, err := s.ownSandboxes(ctx, store.StatusActive)
	if err != nil {
		return
	}
	for _, sb := range active {
		if alive(sb.ID) {
			continue
		}
		b := s.box(sb.ID)
		if !b.mu.TryLock() {
			continue // an operation is in flight; look again next time
		}
		cur, err := s.cfg.Store.GetSandbox(ctx, "", sb.ID)
		if err == nil && cur.Status == store.StatusActive && !s.runtimeHas(ctx, sb.ID) {
			s.log.Error("sandbox died underneath stasis", "sandbox", sb.ID)
			s.metrics.Fail("sandbox", "died")
			b.endSessions("the sandbox stopped unexpectedly")
			b.agent = nil
			s.cfg.Driver.Destroy(ctx, sb.ID)
			s.setStatus(ctx, cur, store.StatusFailed,
				"the sandbox stopped unexpectedly (for example killed by the host's out-of-memory killer); its state is lost")
		}
		b.mu.Unlock()
	}
}

func (s *Service) runtimeHas(ctx context.Context, id string) bool {
	_, ok, err := s.running(ctx, id)
	return ok || err != nil // cannot tell: assume alive
}
