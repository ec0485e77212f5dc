package sandbox

import (
	"context"
	"os"
	"time"

	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/snapshot"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// A resume from a snapshot that is no longer in the page cache restores it
// lazily (runtime.LazyRestorer): the sandbox runs once its kernel state is
// loaded, and its memory loads after. The files read up front are checked
// before the sandbox runs; the memory is checked while it loads, and a
// mismatch stops the sandbox and fails it. Until that check is done the
// sandbox's memory is not trusted: a pause or a saved snapshot waits for
// it, so that a corrupt load is never sealed into a new, trusted snapshot.

// loadWait bounds the wait for a lazy load to end before its check starts.
const loadWait = 2 * time.Minute

// loading is the check of a lazily restored sandbox's memory.
type loading struct {
	dir  string        // the snapshot it was restored from, garbage once checked
	done chan struct{} // closed when the check has run
	err  error         // its result, set before done is closed
}

// lazyFiles decides which snapshot files a restore from dir loads after
// the sandbox runs (passed to the restore in its spec).
func (s *Service) lazyFiles(dir string) []string {
	if lr, ok := s.cfg.Driver.(runtime.LazyRestorer); ok {
		return lr.LazyFiles(dir)
	}
	return nil
}

// checkLoading starts the check of sb's lazily loaded files, opened before
// the snapshot can be removed. Called with b.mu held.
func (s *Service) checkLoading(b *box, sb *store.Sandbox, files []string) error {
	p, err := snapshot.OpenCheck(sb.SnapshotDir, files)
	if err != nil {
		return err
	}
	l := &loading{dir: sb.SnapshotDir, done: make(chan struct{})}
	b.loading = l
	lr, _ := s.cfg.Driver.(runtime.LazyRestorer)
	go func() {
		// Checked once loaded: read alongside, the check would slow the
		// load the sandbox waits for.
		wctx, cancel := context.WithTimeout(context.Background(), loadWait)
		if lr != nil {
			lr.WaitLoaded(wctx, sb.ID)
		}
		cancel()
		start := time.Now()
		l.err = p.Run()
		close(l.done)
		s.metrics.Observe("resume_lazy_check", time.Since(start))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.loading == l {
			s.settleLoading(ctx, b, sb.ID)
		}
	}()
	return nil
}

// settleLoading waits for the check of b's lazily loaded memory, if one is
// running, and acts on it: the snapshot goes, and on a mismatch the
// sandbox is stopped and failed (the error says why). Called with b.mu held.
func (s *Service) settleLoading(ctx context.Context, b *box, id string) error {
	l := b.loading
	if l == nil {
		return nil
	}
	<-l.done
	b.loading = nil
	os.RemoveAll(l.dir)
	if l.err == nil {
		return nil
	}
	s.metrics.Fail("resume", "snapshot_corrupt")
	s.log.Error("lazily restored memory does not match the snapshot; sandbox stopped", "sandbox", id, "err", l.err)
	b.endSessions("the sandbox's memory was restored from a corrupt snapshot")
	s.cfg.Driver.Destroy(ctx, id)
	b.agent = nil
	b.setWarm(time.Time{})
	reason := "memory restored from a corrupt snapshot (checked while it loaded): " + l.err.Error()
	if sb, err := s.cfg.Store.GetSandbox(ctx, "", id); err == nil && sb.Status == store.StatusActive {
		s.setStatus(ctx, sb, store.StatusFailed, reason)
	}
	return newErr(ErrConflict, "snapshot_corrupt", "sandbox %s: %s", id, reason)
}
