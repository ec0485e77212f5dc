package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/failpoint"
	"github.com/stasis-sandbox/stasis/internal/images"
	"github.com/stasis-sandbox/stasis/internal/objstore"
	"github.com/stasis-sandbox/stasis/internal/oci"
	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/snapshot"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// Create starts a new sandbox and returns it with its first access token. It
// returns once the sandbox's agent answers, i.e. when it can run commands.
func (s *Service) Create(ctx context.Context, teamID string, p CreateParams) (*store.Sandbox, string, error) {
	if p.Template == "" {
		p.Template = s.cfg.DefaultTemplate
	}
	if err := p.validate(); err != nil {
		return nil, "", err
	}
	if err := s.checkRoom(); err != nil {
		return nil, "", err
	}
	if p.Snapshot != "" {
		return s.createFromSaved(ctx, teamID, p)
	}
	if t, err := s.cfg.Store.GetTemplate(ctx, teamID, p.Template); err == nil {
		return s.createFromTemplate(ctx, teamID, p, t)
	}
	img, err := s.image(ctx, p.Template)
	if err != nil {
		return nil, "", err
	}
	sb := &store.Sandbox{
		ID: store.NewID(), TeamID: teamID, Name: p.Name, Status: store.StatusStarting,
		Template: img.Name, VCPU: p.VCPU, MemoryMiB: p.MemoryMiB,
		Metadata: p.Metadata, Env: p.Env,
		TimeoutSeconds: p.TimeoutSeconds, AutoDeleteSeconds: p.AutoDeleteSeconds,
		DeleteOnTimeout: p.DeleteOnTimeout, NoAutoResume: p.NoAutoResume, AgentPath: s.agentPath,
	}
	p.applyNetwork(sb)
	if sb.VCPU == 0 {
		sb.VCPU = s.cfg.DefaultVCPU
	}
	if sb.MemoryMiB == 0 {
		sb.MemoryMiB = s.cfg.DefaultMemMiB
	}
	sb.DiskMiB = p.DiskMiB
	if sb.DiskMiB == 0 {
		sb.DiskMiB = s.cfg.DefaultDiskMiB
	}
	if err := s.admit(ctx, teamID, func() error { return s.insertSandbox(ctx, sb) }); err != nil {
		s.undoCreateLater(ctx, s.box(sb.ID), sb.ID, err) // the insert may have committed
		return nil, "", err
	}
	failpoint.Hit("create.after-record")
	b := s.box(sb.ID)
	b.mu.Lock()
	defer b.mu.Unlock()

	ctx, cancel := lifecycleCtx(ctx)
	defer cancel()
	start := time.Now()
	var steps createSteps
	steps.last = start
	token := s.issueTokenAhead(ctx, sb)
	inst, err := s.cfg.Driver.Create(ctx, s.spec(sb, img))
	steps.mark(&steps.driver)
	if err == nil {
		b.agent = agentclient.New(inst.AgentAddr(), s.agentToken(sb.ID))
		err = s.waitReady(ctx, b.agent)
		if err == nil {
			// The sandbox booted with its CPU limit lifted (runtime.Driver).
			failpoint.Hit("create.before-cpu-limit")
			err = s.cfg.Driver.LimitCPU(ctx, sb.ID, sb.VCPU)
		}
		steps.mark(&steps.ready)
	}
	if err == nil && img.StartCmd != "" {
		// The image's service (the code interpreter's server): the sandbox
		// is ready when it is.
		err = startImageCmd(ctx, b.agent, img.StartCmd, img.ReadyCmd)
	}
	failpoint.Hit("create.after-start")
	if err != nil {
		token() // no token is left being written for a failed sandbox
		s.metrics.Fail("create", "start")
		s.log.Error("create failed", "sandbox", sb.ID, "err", err)
		s.cfg.Driver.Destroy(ctx, sb.ID)
		b.agent = nil
		if serr := s.setStatus(ctx, sb, store.StatusFailed, "could not start sandbox: "+err.Error()); serr != nil {
			s.undoCreateLater(ctx, b, sb.ID, serr)
		}
		return nil, "", fmt.Errorf("start sandbox %s: %w", sb.ID, err)
	}
	if err := s.setStatus(ctx, sb, store.StatusActive, ""); err != nil {
		s.undoCreateLater(ctx, b, sb.ID, err)
		return nil, "", err
	}
	tok, err := token()
	if err != nil {
		s.undoCreateLater(ctx, b, sb.ID, err)
		return nil, "", err
	}
	s.metrics.Observe("create", time.Since(start))
	s.log.Info("sandbox created", "sandbox", sb.ID, "template", sb.Template, "ms", time.Since(start).Milliseconds(),
		"link_bundle_ms", ms(inst.Setup), "runsc_ms", ms(steps.driver-inst.Setup), "agent_ready_ms", ms(steps.ready),
		"record_ms", ms(time.Since(steps.last)))
	return sb, tok, nil
}

// stepClock times the steps of an operation, for its log line: where the
// time goes is what to shorten.
type stepClock struct {
	last time.Time // the start, or the previous mark
}

// mark records the time since the previous mark (or the start) in d.
func (c *stepClock) mark(d *time.Duration) {
	now := time.Now()
	*d, c.last = now.Sub(c.last), now
}

// createSteps times the steps of a create.
type createSteps struct {
	stepClock
	driver, ready time.Duration
}

// resumeSteps times the steps of a resume or a create from a snapshot:
// record is the store's work before the restore, setup the driver's link
// and bundle (part of driver), ready the wait for the agent.
type resumeSteps struct {
	createSteps
	record, setup time.Duration
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// image resolves a template name to a built image, building a built-in one
// on first use.
func (s *Service) image(ctx context.Context, name string) (*images.Image, error) {
	if ref, ok := strings.CutPrefix(name, "oci:"); ok {
		if s.cfg.OCI == nil {
			return nil, errors.New("pulling OCI images is not enabled on this server")
		}
		oi, err := s.cfg.OCI.Pull(ctx, ref, &logWriter{log: s.log, template: name})
		if err != nil {
			return nil, err
		}
		return ociImage(name, oi), nil
	}
	img, err := s.cfg.Images.Get(name)
	if errors.Is(err, images.ErrUnknown) {
		return nil, newErr(ErrNotFound, "template_not_found", "template %q not found (built-in templates: %v)", name, images.Builtins())
	}
	if errors.Is(err, images.ErrNotBuilt) {
		s.log.Info("building template on first use; this can take minutes", "template", name)
		img, err = s.cfg.Images.Ensure(ctx, name, &logWriter{log: s.log, template: name})
	}
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	return img, nil
}

// ociImage is the image the sandboxes of the pulled OCI image oi run on.
func ociImage(name string, oi *oci.Image) *images.Image {
	return &images.Image{Name: name, RootFS: oi.RootFS, User: oi.User, Workdir: oi.Workdir, Env: oi.Env}
}

func (s *Service) waitReady(ctx context.Context, c *agentclient.Client) error {
	return s.awaitAgent(ctx, c.WaitReady)
}

// waitListening is waitReady for a sandbox restored from its own snapshot:
// its agent was ready when it was checkpointed, so its listening socket
// being back is enough (see agentclient.WaitListening). Resume then need not
// wait for the restored agent's first run, 7-15 ms at 10 MB; the first
// request does.
func (s *Service) waitListening(ctx context.Context, c *agentclient.Client) error {
	return s.awaitAgent(ctx, c.WaitListening)
}

func (s *Service) awaitAgent(ctx context.Context, wait func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ReadyTimeout)
	defer cancel()
	if err := wait(ctx); err != nil {
		return fmt.Errorf("agent did not become ready: %w", err)
	}
	return nil
}

// Pause checkpoints a running sandbox to disk and stops it. It returns once
// the sandbox is checkpointed and frozen (it uses no CPU); the snapshot is
// sealed and the sandbox's memory freed right after (see pauseLocked).
func (s *Service) Pause(ctx context.Context, teamID, id string) (*store.Sandbox, error) {
	if _, err := s.Get(ctx, teamID, id); err != nil {
		return nil, err
	}
	b := s.box(id)
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, err := s.Get(ctx, teamID, id) // re-read under the lock
	if err != nil {
		return nil, err
	}
	if sb.Status != store.StatusActive {
		return nil, newErr(ErrConflict, "invalid_state", "sandbox %s is %s; only an active sandbox can be paused", id, sb.Status)
	}
	ctx, cancel := lifecycleCtx(ctx)
	defer cancel()
	return sb, s.pauseLocked(ctx, b, sb)
}

// pauseLocked pauses sb with a protocol that a crash at any instant cannot
// corrupt: freeze (the state is fixed from here on), checkpoint the frozen
// sandbox, record it paused, and seal the checkpoint (checksums, fsync) in
// the background while the sandbox stays frozen in RAM. Until the store says
// paused, the sandbox is still there to thaw; from then on the checkpoint is
// complete, and until it is sealed the frozen sandbox proves it intact (see
// Recover). This is the tiered pause: the caller does not wait for the
// disk, and a resume meanwhile (or within WarmWindow) is a thaw.
func (s *Service) pauseLocked(ctx context.Context, b *box, sb *store.Sandbox) error {
	start := time.Now()
	var st pauseSteps
	st.last = start
	// Memory that was loaded lazily is checked before it is checkpointed.
	if err := s.settleLoading(ctx, b, sb.ID); err != nil {
		return err
	}
	st.mark(&st.settle)
	why := "the sandbox was paused"
	if sb.PauseAt != nil && !sb.PauseAt.After(start) && sb.TimeoutSeconds != nil {
		// Due: this is the timeout's pause (see fireTimer).
		why = fmt.Sprintf("the sandbox reached its timeout (%s of active time) and was paused",
			time.Duration(*sb.TimeoutSeconds)*time.Second)
	}
	// The pausing record's commit (an fsync) and the agent's tidying up
	// overlap; both are done before the freeze. If the record fails, the
	// agent merely dropped what it rebuilds at its next command.
	id := sb.ID
	recorded := make(chan error, 1)
	go func() { recorded <- s.setStatus(ctx, sb, store.StatusPausing, "") }()
	s.quiesce(ctx, b.agent, id)
	st.mark(&st.quiesce)
	if err := <-recorded; err != nil {
		s.settleInterruptedLater(id, "pause", err) // the update may have committed
		return err
	}
	st.mark(&st.before)
	failpoint.Hit("pause.before-freeze")
	if err := s.cfg.Driver.Freeze(ctx, id); err != nil {
		return s.pauseFailed(ctx, b, sb, "freeze", err)
	}
	st.mark(&st.freeze)
	dir, err := s.snaps.BeginInPlace(sb.ID)
	if err != nil {
		return s.pauseFailed(ctx, b, sb, "snapshot_dir", err)
	}
	failpoint.Hit("pause.before-checkpoint")
	// No writeback while checkpointing: the disk would compete with the
	// checkpoint, which the caller waits for; Seal starts it right after.
	if err := s.cfg.Driver.Checkpoint(ctx, sb.ID, dir); err != nil {
		os.RemoveAll(dir)
		return s.pauseFailed(ctx, b, sb, "checkpoint", err)
	}
	st.mark(&st.checkpoint)
	failpoint.Hit("pause.after-checkpoint")
	old := sb.SnapshotDir
	sb.SnapshotDir, sb.SnapshotBytes = dir, snapshot.Size(dir)
	if err := s.setStatus(ctx, sb, store.StatusPaused, ""); err != nil {
		// Still frozen, with the checkpoint beside it: settled (thawed,
		// active) once the store answers again.
		s.settleInterruptedLater(sb.ID, "pause", err)
		return err
	}
	st.mark(&st.record)
	failpoint.Hit("pause.after-record")
	b.endSessions(why)
	if old != "" && old != dir {
		os.RemoveAll(old)
	}
	b.setWarm(time.Now().Add(s.cfg.WarmWindow))
	sl := &sealing{dir: dir, done: make(chan struct{})}
	sl.ctx, sl.cancel = context.WithCancel(context.Background())
	b.sealing = sl
	s.background.Add(1)
	go s.seal(sb.ID, b, sl)
	s.metrics.Observe("pause", time.Since(start))
	s.log.Info("sandbox paused", "sandbox", sb.ID, "bytes", sb.SnapshotBytes, "ms", time.Since(start).Milliseconds(),
		"settle_ms", ms(st.settle), "quiesce_ms", ms(st.quiesce), "before_ms", ms(st.before), "freeze_ms", ms(st.freeze),
		"checkpoint_ms", ms(st.checkpoint), "record_ms", ms(st.record), "after_ms", ms(time.Since(st.last)))
	return nil
}

// pauseSteps times a pause's steps for its log line (the bench reads it);
// before is the wait for the pausing record beyond the quiesce.
type pauseSteps struct {
	stepClock
	settle, before, quiesce, freeze, checkpoint, record time.Duration
}

// quiesceTimeout bounds the agent's tidying before a checkpoint; it is
// an optimisation, not worth holding a pause up for.
const quiesceTimeout = 2 * time.Second

// freezeForCheckpoint freezes sandbox id for a checkpoint, after its agent
// (if it has one) dropped what it can rebuild (quiesce).
func (s *Service) freezeForCheckpoint(ctx context.Context, agent *agentclient.Client, id string) error {
	s.quiesce(ctx, agent, id)
	return s.cfg.Driver.Freeze(ctx, id)
}

// quiesce has sandbox id's agent (if it has one) drop what it can rebuild:
// each process is a host process to recreate and state to load at every
// restore of the snapshot.
func (s *Service) quiesce(ctx context.Context, agent *agentclient.Client, id string) {
	if agent == nil {
		return
	}
	qctx, cancel := context.WithTimeout(ctx, quiesceTimeout)
	defer cancel()
	if err := agent.Quiesce(qctx); err != nil {
		s.log.Warn("agent could not tidy up before the checkpoint", "sandbox", id, "err", err)
	}
}

// sealing is a paused sandbox's checkpoint being sealed in the background.
type sealing struct {
	dir    string
	ctx    context.Context // done once the checkpoint is nobody's
	cancel context.CancelFunc
	done   chan struct{} // closed when Seal has returned
	err    error         // Seal's result, set before done is closed
}

// dropSealing makes the checkpoint being sealed, if any, nobody's: a resume
// or a delete made it garbage. Its sealer stops writing it back and removes
// it. Called with b.mu held.
func (b *box) dropSealing() {
	if b.sealing != nil {
		b.sealing.cancel()
		b.sealing = nil
	}
}

// seal seals a paused sandbox's checkpoint, then lets the frozen sandbox go
// (unless the warm window keeps it). If the sandbox was resumed or deleted
// meanwhile, the checkpoint is nobody's and is removed.
func (s *Service) seal(id string, b *box, sl *sealing) {
	defer s.background.Done()
	defer sl.cancel()
	start := time.Now()
	_, sl.err = snapshot.SealContext(sl.ctx, sl.dir)
	close(sl.done)
	failpoint.Hit("pause.after-seal")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sealing != sl {
		if sl.err != nil && sl.ctx.Err() != nil {
			s.log.Debug("pause: stopped sealing a snapshot that a resume or delete made garbage", "sandbox", id)
		}
		os.RemoveAll(sl.dir)
		return
	}
	b.sealing = nil
	sb, err := s.Get(ctx, "", id)
	if err != nil || sb.Status != store.StatusPaused || sb.SnapshotDir != sl.dir {
		return
	}
	if sl.err != nil {
		// The snapshot may not survive a host crash; the sandbox is still
		// in RAM, so it carries on running rather than stay paused on it.
		s.metrics.Fail("pause", "seal")
		s.log.Error("pause: sealing the snapshot failed", "sandbox", id, "err", sl.err)
		sb.SnapshotDir, sb.SnapshotBytes = "", 0
		b.setWarm(time.Time{})
		status := store.StatusActive
		if s.cfg.Driver.Thaw(ctx, id) != nil || !answers(ctx, b.agent) {
			status = store.StatusFailed
			s.cfg.Driver.Destroy(ctx, id)
			b.agent = nil
		}
		s.setStatus(ctx, sb, status, "pause failed: the snapshot could not be written: "+sl.err.Error())
		os.RemoveAll(sl.dir)
		return
	}
	s.metrics.Observe("pause_seal", time.Since(start))
	s.uploadSnapshot(objstore.KindSandbox, id, sb.Epoch, sl.dir)
	if s.cfg.WarmWindow <= 0 {
		b.agent = nil
		if err := s.cfg.Driver.Destroy(ctx, id); err != nil {
			s.log.Error("stop after pause", "sandbox", id, "err", err)
		}
		b.setWarm(time.Time{})
	}
}

// awaitSeal waits until the checkpoint of b's pause, if one is being sealed,
// is sealed (or failed to be). Called with b.mu held.
func (b *box) awaitSeal() {
	if b.sealing != nil {
		<-b.sealing.done
	}
}

// WaitSealed waits for every checkpoint being sealed, and every new
// sandbox's agent secret being handed over (graceful shutdown).
func (s *Service) WaitSealed() { s.background.Wait() }

// pauseFailed thaws the sandbox back to active if it still answers;
// otherwise the sandbox is failed.
func (s *Service) pauseFailed(ctx context.Context, b *box, sb *store.Sandbox, step string, cause error) error {
	s.metrics.Fail("pause", step)
	s.log.Error("pause failed", "sandbox", sb.ID, "step", step, "err", cause)
	s.cfg.Driver.Thaw(ctx, sb.ID) // whether it worked, the agent tells
	if answers(ctx, b.agent) {
		s.setStatus(ctx, sb, store.StatusActive, "")
		return fmt.Errorf("pause %s failed at %s, sandbox still running: %w", sb.ID, step, cause)
	}
	s.cfg.Driver.Destroy(ctx, sb.ID)
	b.agent = nil
	s.setStatus(ctx, sb, store.StatusFailed, "pause failed at "+step+": "+cause.Error())
	return fmt.Errorf("pause %s: %w", sb.ID, cause)
}

// thawCheckTimeout bounds the check that a thawed sandbox answers. The
// agent of one still frozen accepts connections and never replies: the
// check would hold the pause (and the sandbox's lock) for the whole
// lifecycle timeout, leaving the sandbox "pausing" when that ran out.
const thawCheckTimeout = 10 * time.Second

// answers reports whether agent (nil: none) answers a health check soon.
func answers(ctx context.Context, agent *agentclient.Client) bool {
	if agent == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, thawCheckTimeout)
	defer cancel()
	return agent.Health(ctx) == nil
}

// Resume restores a paused sandbox and returns a new access token; tokens
// issued before are revoked. With activate set, an already active sandbox is
// not an error: it just gets an additional token.
func (s *Service) Resume(ctx context.Context, teamID, id string, activate bool) (*store.Sandbox, string, error) {
	if _, err := s.Get(ctx, teamID, id); err != nil {
		return nil, "", err
	}
	b := s.box(id)
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, err := s.Get(ctx, teamID, id)
	if err != nil {
		return nil, "", err
	}
	switch {
	case sb.Status == store.StatusActive && activate:
		tok, err := s.issueToken(ctx, sb)
		return sb, tok, err
	case sb.Status == store.StatusActive:
		// Resuming an active sandbox succeeds without restoring anything, as
		// the seed's connect()-then-resume() requires; like every resume it
		// rotates the access token.
		sb.TokenGeneration++
		if err := s.update(ctx, sb); err != nil {
			return nil, "", err
		}
		tok, err := s.issueToken(ctx, sb)
		return sb, tok, err
	case sb.Status != store.StatusPaused:
		return nil, "", newErr(ErrConflict, "invalid_state", "sandbox %s is %s; only a paused or active sandbox can be resumed", id, sb.Status)
	}
	ctx, cancel := lifecycleCtx(ctx)
	defer cancel()
	// The token of the generation the resume moves to is stored while the
	// sandbox comes back, as a create's is: off the path the client waits
	// on, and before the old snapshot's removal (an unlink of up to GBs)
	// competes with the store's fsync. Valid only once the resume records
	// that generation; if it fails, nobody ever learns the token.
	next := *sb
	next.TokenGeneration++
	token := s.issueTokenAhead(ctx, &next)
	if err := s.resumeLocked(ctx, b, sb, true); err != nil {
		token()
		return nil, "", err
	}
	tok, err := token()
	return sb, tok, err
}

// resumeLocked brings a paused sb back: a thaw if it is still frozen in
// RAM, else a restore from its verified snapshot. rotate revokes earlier
// tokens. The snapshot is deleted only after the store records the sandbox
// active, so a crash mid-resume leaves it paused or active, never lost.
func (s *Service) resumeLocked(ctx context.Context, b *box, sb *store.Sandbox, rotate bool) error {
	start := time.Now()
	if !s.owns(sb) {
		if err := s.adopt(ctx, sb); err != nil {
			return err
		}
	}
	if err := s.fetchIfGone(ctx, b, sb); err != nil {
		s.metrics.Fail("resume", "fetch")
		return fmt.Errorf("resume %s: %w", sb.ID, err)
	}
	snap := sb.SnapshotDir
	if err := s.admit(ctx, sb.TeamID, func() error { return s.setStatus(ctx, sb, store.StatusResuming, "") }); err != nil {
		s.settleInterruptedLater(sb.ID, "resume", err) // the update may have committed
		return err
	}
	failpoint.Hit("resume.before-restore")
	var steps resumeSteps
	steps.last = start
	steps.mark(&steps.record)
	how, err := s.bringBack(ctx, b, sb, &steps)
	if err != nil {
		s.cfg.Driver.Destroy(ctx, sb.ID)
		b.agent, b.loading = nil, nil // the snapshot stays sb's
		b.setWarm(time.Time{})
		if errors.Is(err, snapshot.ErrCorrupt) {
			s.metrics.Fail("resume", "snapshot_corrupt")
			s.setStatus(ctx, sb, store.StatusFailed, "cannot resume: "+err.Error())
			return newErr(ErrConflict, "snapshot_corrupt", "sandbox %s cannot be resumed: %v", sb.ID, err)
		}
		// The snapshot is untouched: the sandbox stays paused and can be retried.
		if verr := versionConflict(err, "sandbox "+Shorten(sb.ID)); verr != nil {
			s.metrics.Fail("resume", "version")
			s.setStatus(ctx, sb, store.StatusPaused, "last resume failed: "+verr.Message)
			return verr
		}
		s.metrics.Fail("resume", "restore")
		s.log.Error("resume failed", "sandbox", sb.ID, "err", err)
		s.setStatus(ctx, sb, store.StatusPaused, "last resume failed: "+err.Error())
		return fmt.Errorf("resume %s: %w", sb.ID, err)
	}
	failpoint.Hit("resume.after-restore")
	if rotate {
		sb.TokenGeneration++
	}
	sb.SnapshotDir, sb.SnapshotBytes = "", 0
	if err := s.setStatus(ctx, sb, store.StatusActive, ""); err != nil {
		// Running, and recorded resuming: settled (active) once the store
		// answers again.
		s.settleInterruptedLater(sb.ID, "resume", err)
		return err
	}
	failpoint.Hit("resume.after-record")
	s.snapshotLeft(sb)
	// The snapshot is garbage now; deleting a large one takes a while, and
	// the next start removes it anyway if we crash first. One still being
	// sealed is removed by its sealer.
	switch {
	case b.sealing != nil:
		b.dropSealing()
	case b.loading != nil:
		// Removed once the memory loaded from it is checked (settleLoading).
	default:
		go os.RemoveAll(snap)
	}
	s.metrics.Observe("resume", time.Since(start))
	s.log.Info("sandbox resumed", "sandbox", sb.ID, "from", how, "ms", time.Since(start).Milliseconds(),
		"before_ms", ms(steps.record), "link_bundle_ms", ms(steps.setup), "runsc_ms", ms(steps.driver-steps.setup),
		"agent_ms", ms(steps.ready), "after_ms", ms(time.Since(steps.last)))
	return nil
}

// bringBack makes a paused sandbox run again and waits for its agent: to
// answer after a thaw, to accept connections after a restore.
func (s *Service) bringBack(ctx context.Context, b *box, sb *store.Sandbox, steps *resumeSteps) (string, error) {
	if !b.warmUntil.IsZero() {
		b.setWarm(time.Time{})
		if err := s.cfg.Driver.Thaw(ctx, sb.ID); err == nil {
			if b.agent == nil {
				b.agent = s.newAgentClient(ctx, sb.ID)
			}
			if b.agent != nil && s.waitReady(ctx, b.agent) == nil {
				steps.mark(&steps.ready)
				return "memory", nil
			}
		}
		// Could not thaw (evicted meanwhile?): fall back to the snapshot.
		s.cfg.Driver.Destroy(ctx, sb.ID)
	}
	b.awaitSeal()
	inst, err := s.restoreVerified(ctx, b, sb)
	if err != nil {
		return "", err
	}
	steps.mark(&steps.driver)
	steps.setup = inst.Setup
	b.agent = agentclient.New(inst.AgentAddr(), s.agentToken(sb.ID))
	err = s.waitListening(ctx, b.agent)
	steps.mark(&steps.ready)
	return "disk", err
}

// restoreVerified restores sb from its snapshot while checking the
// snapshot's checksums: one after the other, the checksums added a tenth to
// a 200 MB resume. A mismatch stops the restore and is the error (the
// caller destroys whatever was restored, before anyone is told it runs). In
// practice the check is done long before the restore: 200 MB take about 40
// ms to check and 300 ms to restore. The files that a lazy restore loads
// after the sandbox runs are checked after it returns (see checkLoading).
func (s *Service) restoreVerified(ctx context.Context, b *box, sb *store.Sandbox) (*runtime.Instance, error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lazy := s.lazyFiles(sb.SnapshotDir)
	verified := make(chan error, 1)
	go func() {
		err := snapshot.VerifyExcept(sb.SnapshotDir, lazy)
		if err != nil {
			cancel()
		}
		verified <- err
	}()
	inst, err := s.restore(rctx, sb, lazy)
	if verr := <-verified; verr != nil {
		return nil, verr
	}
	if err == nil && len(lazy) > 0 {
		err = s.checkLoading(b, sb, lazy)
	}
	return inst, err
}

// restore starts sb from its snapshot with its template's image, loading
// the lazy files after it returns.
func (s *Service) restore(ctx context.Context, sb *store.Sandbox, lazy []string) (*runtime.Instance, error) {
	img, err := s.image(ctx, baseOf(sb))
	if err != nil {
		return nil, err
	}
	spec := s.spec(sb, img)
	spec.LazyFiles = lazy
	return s.cfg.Driver.Restore(ctx, spec, sb.SnapshotDir)
}

// Delete stops the sandbox and removes it with all its files.
func (s *Service) Delete(ctx context.Context, teamID, id string) error {
	if _, err := s.Get(ctx, teamID, id); err != nil {
		return err
	}
	b := s.box(id)
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, err := s.Get(ctx, teamID, id); err != nil {
		return err // deleted while we waited for the lock
	}
	ctx, cancel := lifecycleCtx(ctx)
	defer cancel()
	return s.deleteLocked(ctx, b, id)
}

// deleteLocked removes the record first: from then on the sandbox is gone
// for every client, and whatever a crash leaves behind (runtime, snapshot
// files) is an orphan that the next start cleans up.
func (s *Service) deleteLocked(ctx context.Context, b *box, id string) error {
	if sb, err := s.cfg.Store.GetSandbox(ctx, "", id); err == nil && !s.owns(sb) {
		if err := s.takeOverFromLost(ctx, sb); err != nil {
			return err
		}
	}
	if err := s.cfg.Store.DeleteSandbox(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	failpoint.Hit("delete.after-record")
	b.endSessions("the sandbox was deleted")
	b.dropSealing()
	b.agent, b.loading = nil, nil
	b.setWarm(time.Time{})
	if err := s.cfg.Driver.Destroy(ctx, id); err != nil {
		s.log.Error("delete: runtime cleanup failed; the next start retries", "sandbox", id, "err", err)
	}
	if err := os.RemoveAll(s.snaps.SandboxDir(id)); err != nil {
		s.log.Error("delete: snapshot cleanup failed; the next start retries", "sandbox", id, "err", err)
	}
	s.deleteObjects(objstore.KindSandbox, id)
	s.forget(id)
	s.policies.invalidate(id)
	s.log.Info("sandbox deleted", "sandbox", id)
	return nil
}

// Update applies a partial update of metadata and timers.
func (s *Service) Update(ctx context.Context, teamID, id string, p UpdateParams) (*store.Sandbox, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	b := s.box(id)
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, err := s.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	if p.Metadata.Set {
		sb.Metadata = map[string]string{}
		if p.Metadata.Value != nil {
			sb.Metadata = *p.Metadata.Value
		}
	}
	if p.TimeoutSeconds.Set {
		sb.TimeoutSeconds = p.TimeoutSeconds.Value
		if sb.Status == store.StatusActive {
			sb.PauseAt = deadline(time.Now(), sb.TimeoutSeconds)
		}
	}
	if p.DeleteOnTimeout != nil {
		sb.DeleteOnTimeout = *p.DeleteOnTimeout
	}
	if p.AutoDeleteSeconds.Set {
		sb.AutoDeleteSeconds = p.AutoDeleteSeconds.Value
		if sb.Status == store.StatusPaused {
			sb.DeleteAt = deadline(sb.StatusChangedAt, sb.AutoDeleteSeconds)
		}
	}
	if err := p.applyNetworkUpdate(sb); err != nil {
		return nil, err
	}
	if err := s.update(ctx, sb); err != nil {
		return nil, err
	}
	s.policies.invalidate(sb.ID)
	return sb, nil
}

// Target is what a data-plane request talks to: the sandbox's agent and the
// defaults its commands get.
type Target struct {
	Agent    *agentclient.Client
	Defaults store.ExecDefaults
	// Done is closed when the sandbox is paused or deleted; long-running
	// sessions end then rather than hang on a dead connection.
	Done <-chan struct{}
	// EndReason says, once Done is closed, what ended the sandbox's run
	// (e.g. "the sandbox reached its timeout (10m0s of active time) and
	// was paused").
	EndReason func() string
}

// Agent authenticates a data-plane token and returns the sandbox's agent,
// resuming a paused sandbox first (transparently: the caller's token stays
// valid).
func (s *Service) Agent(ctx context.Context, id, token string) (*Target, error) {
	return s.agent(ctx, id, token, false)
}

// OwnedAgent is Agent for a request another node forwarded here as to the
// sandbox's owner: when this node does not own the sandbox (it moved since
// the forwarding node looked), it refuses with ErrNotOwner before touching
// the sandbox, so the forwarding node can send the request to the owner.
func (s *Service) OwnedAgent(ctx context.Context, id, token string) (*Target, error) {
	return s.agent(ctx, id, token, true)
}

func (s *Service) agent(ctx context.Context, id, token string, owned bool) (*Target, error) {
	if token == "" {
		return nil, newErr(ErrUnauthorized, "unauthorized", "missing access token (X-Access-Token header)")
	}
	// The token is checked first: the sandbox is looked up (for a 404) only
	// when the check fails, which saves every data-plane request a query.
	ok, err := s.cfg.Store.CheckAccessToken(ctx, id, token)
	if err != nil {
		return nil, err
	}
	if !ok {
		if _, err := s.Get(ctx, "", id); err != nil {
			return nil, err
		}
		return nil, newErr(ErrUnauthorized, "invalid_token", "access token is invalid or was rotated; call POST /sandboxes/%s/activate for a new one", id)
	}
	return s.reach(ctx, id, owned)
}

// Reach returns the agent of sandbox id, resuming it first if it is paused.
// The caller has authenticated the request for this sandbox.
func (s *Service) Reach(ctx context.Context, id string) (*Target, error) {
	return s.reach(ctx, id, false)
}

// reach is Reach; owned refuses with ErrNotOwner, before anything is done to
// the sandbox, when another node owns it (see OwnedAgent).
func (s *Service) reach(ctx context.Context, id string, owned bool) (*Target, error) {
	b := s.box(id)
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, err := s.wakeLocked(ctx, b, id, owned)
	if err != nil {
		return nil, err
	}
	end := b.sessionsDone()
	d, err := s.withSecretEnv(ctx, sb)
	if err != nil {
		return nil, err
	}
	return &Target{Agent: b.agent, Defaults: d, Done: end.done, EndReason: end.reason}, nil
}

// withSecretEnv returns sb's exec defaults with the stand-in tokens of its
// bound secrets in the environment: a binding applies to commands started
// after it, so it is looked up for each.
func (s *Service) withSecretEnv(ctx context.Context, sb *store.Sandbox) (store.ExecDefaults, error) {
	d := sb.Defaults
	merged := map[string]string{}
	if len(s.cfg.EgressCA) > 0 {
		merged = trustEnv() // an image's own settings win
	}
	for k, v := range d.Env {
		merged[k] = v
	}
	if s.cfg.Secrets != nil {
		bound, err := s.cfg.Secrets.Env(ctx, sb.ID)
		if err != nil {
			return d, err
		}
		for k, v := range bound {
			merged[k] = v
		}
	}
	d.Env = merged
	return d, nil
}

// inheritSecrets gives sandbox to the bindings of from (if it still exists).
func (s *Service) inheritSecrets(ctx context.Context, from, to string) error {
	if s.cfg.Secrets == nil {
		return nil
	}
	return s.cfg.Secrets.Inherit(ctx, from, to)
}

// wakeLocked makes sure sandbox id runs, resuming it (transparently: its
// tokens stay valid) if it is paused. Called with b.mu held.
func (s *Service) wakeLocked(ctx context.Context, b *box, id string, owned bool) (*store.Sandbox, error) {
	sb, err := s.Get(ctx, "", id)
	if err != nil {
		return nil, err
	}
	if owned && !s.owns(sb) {
		return nil, newErr(ErrNotOwner, "not_owner", "sandbox %s moved to node %s; retry", Shorten(id), sb.Node)
	}
	switch sb.Status {
	case store.StatusActive:
	case store.StatusPaused:
		rctx, cancel := lifecycleCtx(ctx)
		defer cancel()
		if err := s.resumeLocked(rctx, b, sb, false); err != nil {
			var e *Error
			if errors.As(err, &e) {
				return nil, e
			}
			return nil, newErr(ErrUnavailable, "resume_failed", "sandbox %s is paused and could not be resumed: %v", id, err)
		}
	default:
		return nil, newErr(ErrConflict, "invalid_state", "sandbox %s is %s", id, sb.Status)
	}
	if b.agent == nil {
		return nil, newErr(ErrUnavailable, "unavailable", "sandbox %s is not reachable; retry shortly", id)
	}
	return sb, nil
}

// PauseAll pauses every active sandbox (used at shutdown when asked to).
func (s *Service) PauseAll(ctx context.Context) {
	active, err := s.ownSandboxes(ctx, store.StatusActive)
	if err != nil {
		s.log.Error("pause all", "err", err)
		return
	}
	for _, sb := range active {
		if _, err := s.Pause(ctx, "", sb.ID); err != nil {
			s.log.Error("pause at shutdown", "sandbox", sb.ID, "err", err)
		}
	}
}
