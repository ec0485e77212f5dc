package objstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Upload states, as recorded by a StatusSink. "failed" with a detail that
// says "retrying" is not final: the uploader tries again after a backoff.
const (
	StatePending   = "pending"
	StateUploading = "uploading"
	StatePortable  = "portable"
	StateFailed    = "failed"
)

// defaultOpTimeout bounds one status report or clean-up request.
const defaultOpTimeout = 30 * time.Second

// StatusSink records the upload state of sandbox snapshots. Its method is
// the store's SetSnapshotUpload (epoch fences the report: a sandbox that
// moved to another node ignores an old owner's uploader).
type StatusSink interface {
	SetSnapshotUpload(ctx context.Context, id string, epoch int64, state, detail string) error
}

// Status is the upload state of the latest snapshot of one kind/id.
type Status struct {
	Ref      Ref
	State    string // one of the State constants
	Detail   string // why it failed, when it retries next
	Attempts int
}

// UploaderConfig configures an Uploader.
type UploaderConfig struct {
	Blobs  Blobs
	Status StatusSink // told about sandbox snapshots (KindSandbox); nil: nobody
	Logger *slog.Logger
	// Backoff between failed attempts doubles from MinBackoff up to
	// MaxBackoff (defaults 1s and 1m).
	MinBackoff, MaxBackoff time.Duration
}

// Uploader uploads snapshot directories to a blob store in the background,
// one job per kind/id (a newer snapshot replaces the job of an older one),
// retrying until it succeeds or the job is cancelled.
type Uploader struct {
	cfg    UploaderConfig
	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	jobs   map[string]*job   // by kind/id: an upload or a deletion
	status map[string]Status // by kind/id
}

type job struct {
	ref    Ref
	epoch  int64
	cancel context.CancelFunc
	done   chan struct{}
}

// NewUploader returns an uploader; Close stops it.
func NewUploader(cfg UploaderConfig) *Uploader {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(time.Minute, cfg.MinBackoff)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Uploader{cfg: cfg, ctx: ctx, cancel: cancel, jobs: map[string]*job{}, status: map[string]Status{}}
}

// Blobs is the store the uploader writes to.
func (u *Uploader) Blobs() Blobs { return u.cfg.Blobs }

// Upload starts uploading the sealed snapshot in dir as ref, in the
// background, replacing any job of ref's kind/id. Once the manifest is in
// the store the state is portable and older snapshots of kind/id are
// removed from it.
func (u *Uploader) Upload(ref Ref, epoch int64, dir string) error {
	if err := ref.valid(); err != nil {
		return err
	}
	owner := ownerPrefix(ref.Kind, ref.ID)
	u.stop(owner)
	ctx, cancel := context.WithCancel(u.ctx)
	j := &job{ref: ref, epoch: epoch, cancel: cancel, done: make(chan struct{})}
	u.mu.Lock()
	u.jobs[owner] = j
	u.mu.Unlock()
	u.report(j, Status{Ref: ref, State: StatePending})
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		defer close(j.done)
		defer cancel()
		u.run(ctx, j, dir)
	}()
	return nil
}

// Forget stops the upload of kind/id's snapshot, if one runs, and clears
// its state (say, because the sandbox was resumed: its snapshot is no
// longer its state). Objects already in the store stay until replaced or
// deleted.
func (u *Uploader) Forget(kind, id string, epoch int64) {
	owner := ownerPrefix(kind, id)
	u.stop(owner)
	u.mu.Lock()
	_, had := u.status[owner]
	delete(u.status, owner)
	u.mu.Unlock()
	if had {
		u.tell(&job{ref: Ref{Kind: kind, ID: id}, epoch: epoch}, "", "")
	}
}

// Delete stops kind/id's upload and removes all its objects from the
// store in the background, retrying with backoff while the store fails.
func (u *Uploader) Delete(kind, id string) {
	owner := ownerPrefix(kind, id)
	u.stop(owner)
	ctx, cancel := context.WithCancel(u.ctx)
	j := &job{ref: Ref{Kind: kind, ID: id}, cancel: cancel, done: make(chan struct{})}
	u.mu.Lock()
	delete(u.status, owner)
	u.jobs[owner] = j
	u.mu.Unlock()
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		defer close(j.done)
		defer cancel()
		u.retry(ctx, "delete "+owner, func(attempt int, err error, wait time.Duration) {}, func() error {
			return DeleteAll(ctx, u.cfg.Blobs, kind, id)
		})
		u.mu.Lock()
		if u.jobs[owner] == j {
			delete(u.jobs, owner)
		}
		u.mu.Unlock()
	}()
}

// State returns the upload state of kind/id's latest snapshot, if this
// uploader has one.
func (u *Uploader) State(kind, id string) (Status, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	st, ok := u.status[ownerPrefix(kind, id)]
	return st, ok
}

// Wait waits until no job of kind/id runs (an upload that succeeded or
// was cancelled, a deletion done) or ctx ends.
func (u *Uploader) Wait(ctx context.Context, kind, id string) error {
	u.mu.Lock()
	j := u.jobs[ownerPrefix(kind, id)]
	u.mu.Unlock()
	if j == nil {
		return nil
	}
	select {
	case <-j.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close cancels every job and waits for them to stop. Uploads left
// unfinished are started again (Upload) by the next process.
func (u *Uploader) Close() {
	u.cancel()
	u.wg.Wait()
}

// stop cancels the job of owner and waits for it.
func (u *Uploader) stop(owner string) {
	u.mu.Lock()
	j := u.jobs[owner]
	delete(u.jobs, owner)
	u.mu.Unlock()
	if j != nil {
		j.cancel()
		<-j.done
	}
}

func (u *Uploader) run(ctx context.Context, j *job, dir string) {
	log := u.cfg.Logger.With("snapshot", j.ref.String())
	start := time.Now()
	if have, err := ReadManifest(ctx, u.cfg.Blobs, j.ref); err == nil && sizesMatch(dir, have) {
		// Snapshot names are unique: this one finished uploading before a
		// restart, and need not be read and checksummed again.
		u.report(j, Status{Ref: j.ref, State: StatePortable})
		return
	}
	m, err := BuildManifest(ctx, j.ref, dir)
	if err != nil {
		if ctx.Err() == nil {
			log.Error("snapshot upload: cannot read the snapshot; giving up", "err", err)
			u.report(j, Status{Ref: j.ref, State: StateFailed, Detail: err.Error()})
		}
		return
	}
	sent := map[string]bool{} // files already in the store, across attempts
	attempts := 0
	err = u.retry(ctx, "upload "+j.ref.String(), func(attempt int, err error, wait time.Duration) {
		u.report(j, Status{Ref: j.ref, State: StateFailed, Attempts: attempt,
			Detail: fmt.Sprintf("attempt %d failed: %v; retrying in %s", attempt, err, wait.Round(time.Second))})
	}, func() error {
		attempts++
		if attempts == 1 {
			u.report(j, Status{Ref: j.ref, State: StateUploading, Attempts: attempts})
		}
		return u.attempt(ctx, j.ref, dir, m, sent)
	})
	if err != nil {
		if ctx.Err() == nil {
			log.Error("snapshot upload: giving up", "err", err)
			u.report(j, Status{Ref: j.ref, State: StateFailed, Attempts: attempts, Detail: err.Error()})
		}
		return
	}
	u.report(j, Status{Ref: j.ref, State: StatePortable, Attempts: attempts})
	log.Info("snapshot uploaded", "store", u.cfg.Blobs.String(), "bytes", m.Bytes(), "attempts", attempts,
		"ms", time.Since(start).Milliseconds())
	// Older snapshots of the same owner are garbage now (best effort: the
	// next upload or the owner's deletion tries again).
	cctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
	defer cancel()
	if err := deleteOwner(cctx, u.cfg.Blobs, j.ref.Kind, j.ref.ID, j.ref.Snap); err != nil {
		log.Warn("snapshot upload: removing older snapshots failed", "err", err)
	}
}

// errLocal marks a failure on the local side (the snapshot's files), which
// retrying does not cure.
type errLocal struct{ error }

func (e errLocal) Unwrap() error { return e.error }

// attempt sends the files not yet sent, then the manifest, last.
func (u *Uploader) attempt(ctx context.Context, ref Ref, dir string, m *Manifest, sent map[string]bool) error {
	if have, err := ReadManifest(ctx, u.cfg.Blobs, ref); err == nil && have.sameFiles(m) {
		return nil // already complete (a restart re-queued it)
	}
	for _, f := range m.Files {
		if sent[f.Path] {
			continue
		}
		fh, err := os.Open(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			return errLocal{err}
		}
		err = u.cfg.Blobs.Put(ctx, ref.Prefix()+f.Path, fh, f.Size)
		fh.Close()
		if err != nil {
			return err
		}
		sent[f.Path] = true
	}
	b, err := json.MarshalIndent(m, "", " ")
	if err != nil {
		return err
	}
	return u.cfg.Blobs.Put(ctx, ref.Prefix()+ManifestKey, bytes.NewReader(b), int64(len(b)))
}

// retry runs op until it succeeds, fails locally, or ctx ends, waiting
// with exponential backoff between attempts; failed is told each time.
func (u *Uploader) retry(ctx context.Context, what string, failed func(attempt int, err error, wait time.Duration), op func() error) error {
	wait := u.cfg.MinBackoff
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil {
			return nil
		}
		var local errLocal
		if ctx.Err() != nil || errors.As(err, &local) {
			return err
		}
		u.cfg.Logger.Warn("object store: "+what+" failed; retrying", "attempt", attempt, "in", wait, "err", err)
		failed(attempt, err, wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, u.cfg.MaxBackoff)
	}
}

// report records st for j's kind/id (unless a newer job replaced j) and
// tells the status sink.
func (u *Uploader) report(j *job, st Status) {
	owner := ownerPrefix(j.ref.Kind, j.ref.ID)
	u.mu.Lock()
	if cur := u.jobs[owner]; cur != j {
		u.mu.Unlock()
		return
	}
	u.status[owner] = st
	u.mu.Unlock()
	u.tell(j, st.State, st.Detail)
}

func (u *Uploader) tell(j *job, state, detail string) {
	if u.cfg.Status == nil || j.ref.Kind != KindSandbox {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), defaultOpTimeout)
	defer cancel()
	if err := u.cfg.Status.SetSnapshotUpload(ctx, j.ref.ID, j.epoch, state, detail); err != nil {
		u.cfg.Logger.Warn("snapshot upload: recording its state failed", "sandbox", j.ref.ID, "state", state, "err", err)
	}
}

// sizesMatch reports whether dir holds exactly m's files, at their sizes.
func sizesMatch(dir string, m *Manifest) bool {
	n := 0
	err := filepath.WalkDir(dir, func(path string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return err
		}
		n++
		return nil
	})
	if err != nil || n != len(m.Files) {
		return false
	}
	for _, f := range m.Files {
		fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil || fi.Size() != f.Size {
			return false
		}
	}
	return true
}
