package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/images"
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
	img, err := s.image(ctx, p.Template)
	if err != nil {
		return nil, "", err
	}
	sb := &store.Sandbox{
		ID: store.NewID(), TeamID: teamID, Name: p.Name, Status: store.StatusStarting,
		Template: img.Name, VCPU: p.VCPU, MemoryMiB: p.MemoryMiB,
		Metadata: p.Metadata, Env: p.Env,
		TimeoutSeconds: p.TimeoutSeconds, AutoDeleteSeconds: p.AutoDeleteSeconds,
	}
	if sb.VCPU == 0 {
		sb.VCPU = s.cfg.DefaultVCPU
	}
	if sb.MemoryMiB == 0 {
		sb.MemoryMiB = s.cfg.DefaultMemMiB
	}
	if err := s.cfg.Store.InsertSandbox(ctx, sb); err != nil {
		return nil, "", err
	}
	b := s.box(sb.ID)
	b.mu.Lock()
	defer b.mu.Unlock()

	ctx, cancel := lifecycleCtx(ctx)
	defer cancel()
	start := time.Now()
	inst, err := s.cfg.Driver.Create(ctx, s.spec(sb, img))
	if err == nil {
		b.agent = agentclient.New(inst.AgentAddr(), s.agentToken(sb.ID))
		err = s.waitReady(ctx, b.agent)
	}
	if err != nil {
		s.log.Error("create failed", "sandbox", sb.ID, "err", err)
		s.cfg.Driver.Destroy(ctx, sb.ID)
		b.agent = nil
		s.setStatus(ctx, sb, store.StatusFailed, "could not start sandbox: "+err.Error())
		return nil, "", fmt.Errorf("start sandbox %s: %w", sb.ID, err)
	}
	if err := s.setStatus(ctx, sb, store.StatusActive, ""); err != nil {
		return nil, "", err
	}
	tok, err := s.issueToken(ctx, sb)
	if err != nil {
		return nil, "", err
	}
	s.log.Info("sandbox created", "sandbox", sb.ID, "template", sb.Template, "ms", time.Since(start).Milliseconds())
	return sb, tok, nil
}

// image resolves a template name to a built image, building a built-in one
// on first use.
func (s *Service) image(ctx context.Context, name string) (*images.Image, error) {
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

func (s *Service) waitReady(ctx context.Context, c *agentclient.Client) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ReadyTimeout)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		return fmt.Errorf("agent did not become ready: %w", err)
	}
	return nil
}

// Pause checkpoints a running sandbox to disk and stops it. It returns once
// the checkpoint is durable and the sandbox holds no CPU or memory.
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

func (s *Service) pauseLocked(ctx context.Context, b *box, sb *store.Sandbox) error {
	start := time.Now()
	if err := s.setStatus(ctx, sb, store.StatusPausing, ""); err != nil {
		return err
	}
	root := s.snapshotRoot(sb.ID)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(root, ".tmp-")
	if err != nil {
		return err
	}
	if err := s.cfg.Driver.Checkpoint(ctx, sb.ID, tmp); err != nil {
		os.RemoveAll(tmp)
		return s.afterFailedCheckpoint(ctx, b, sb, err)
	}
	// Durable before trusted: fsync every file and the dir, then rename into place.
	size, err := syncTree(tmp)
	final := filepath.Join(root, "snap-"+strconv.FormatInt(time.Now().UnixNano(), 10))
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err == nil {
		err = syncDir(root)
	}
	if err != nil {
		os.RemoveAll(tmp)
		b.agent = nil
		s.setStatus(ctx, sb, store.StatusFailed, "could not save snapshot: "+err.Error())
		return fmt.Errorf("save snapshot of %s: %w", sb.ID, err)
	}
	b.agent = nil
	old := sb.SnapshotDir
	sb.SnapshotDir, sb.SnapshotBytes = final, size
	if err := s.setStatus(ctx, sb, store.StatusPaused, ""); err != nil {
		return err
	}
	if old != "" && old != final {
		os.RemoveAll(old)
	}
	s.log.Info("sandbox paused", "sandbox", sb.ID, "bytes", size, "ms", time.Since(start).Milliseconds())
	return nil
}

// afterFailedCheckpoint decides what a failed checkpoint left behind: a
// sandbox that still answers stays active, otherwise it is failed.
func (s *Service) afterFailedCheckpoint(ctx context.Context, b *box, sb *store.Sandbox, cause error) error {
	s.log.Error("checkpoint failed", "sandbox", sb.ID, "err", cause)
	if b.agent != nil && b.agent.Health(ctx) == nil {
		s.setStatus(ctx, sb, store.StatusActive, "")
		return fmt.Errorf("pause %s failed, sandbox still running: %w", sb.ID, cause)
	}
	s.cfg.Driver.Destroy(ctx, sb.ID)
	b.agent = nil
	s.setStatus(ctx, sb, store.StatusFailed, "pause failed: "+cause.Error())
	return fmt.Errorf("pause %s: %w", sb.ID, cause)
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
	case sb.Status != store.StatusPaused:
		return nil, "", newErr(ErrConflict, "invalid_state", "sandbox %s is %s; only a paused sandbox can be resumed", id, sb.Status)
	}
	ctx, cancel := lifecycleCtx(ctx)
	defer cancel()
	if err := s.resumeLocked(ctx, b, sb, true); err != nil {
		return nil, "", err
	}
	tok, err := s.issueToken(ctx, sb)
	return sb, tok, err
}

// resumeLocked restores sb from its snapshot. rotate revokes earlier tokens.
func (s *Service) resumeLocked(ctx context.Context, b *box, sb *store.Sandbox, rotate bool) error {
	start := time.Now()
	img, err := s.image(ctx, sb.Template)
	if err != nil {
		return err
	}
	snap := sb.SnapshotDir
	if err := s.setStatus(ctx, sb, store.StatusResuming, ""); err != nil {
		return err
	}
	inst, err := s.cfg.Driver.Restore(ctx, s.spec(sb, img), snap)
	if err == nil {
		b.agent = agentclient.New(inst.AgentAddr(), s.agentToken(sb.ID))
		err = s.waitReady(ctx, b.agent)
	}
	if err != nil {
		// The snapshot is untouched: the sandbox stays paused and can be retried.
		s.log.Error("resume failed", "sandbox", sb.ID, "err", err)
		s.cfg.Driver.Destroy(ctx, sb.ID)
		b.agent = nil
		s.setStatus(ctx, sb, store.StatusPaused, "last resume failed: "+err.Error())
		return fmt.Errorf("resume %s: %w", sb.ID, err)
	}
	if rotate {
		sb.TokenGeneration++
	}
	sb.SnapshotDir, sb.SnapshotBytes = "", 0
	if err := s.setStatus(ctx, sb, store.StatusActive, ""); err != nil {
		return err
	}
	// The restore is confirmed in the store; only now is the snapshot garbage.
	os.RemoveAll(snap)
	s.log.Info("sandbox resumed", "sandbox", sb.ID, "ms", time.Since(start).Milliseconds())
	return nil
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

func (s *Service) deleteLocked(ctx context.Context, b *box, id string) error {
	if err := s.cfg.Driver.Destroy(ctx, id); err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	b.agent = nil
	if err := os.RemoveAll(s.snapshotRoot(id)); err != nil {
		return fmt.Errorf("delete %s snapshots: %w", id, err)
	}
	if err := s.cfg.Store.DeleteSandbox(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	s.forget(id)
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
	if p.AutoDeleteSeconds.Set {
		sb.AutoDeleteSeconds = p.AutoDeleteSeconds.Value
		if sb.Status == store.StatusPaused {
			sb.DeleteAt = deadline(sb.StatusChangedAt, sb.AutoDeleteSeconds)
		}
	}
	if err := s.cfg.Store.UpdateSandbox(ctx, sb); err != nil {
		return nil, err
	}
	return sb, nil
}

// Agent authenticates a data-plane token and returns a client for the
// sandbox's agent, resuming a paused sandbox first (transparently: the
// caller's token stays valid).
func (s *Service) Agent(ctx context.Context, id, token string) (*agentclient.Client, error) {
	if token == "" {
		return nil, newErr(ErrUnauthorized, "unauthorized", "missing access token (X-Access-Token header)")
	}
	if _, err := s.Get(ctx, "", id); err != nil {
		return nil, err
	}
	ok, err := s.cfg.Store.CheckAccessToken(ctx, id, token)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, newErr(ErrUnauthorized, "invalid_token", "access token is invalid or was rotated; call POST /sandboxes/%s/activate for a new one", id)
	}
	b := s.box(id)
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, err := s.Get(ctx, "", id)
	if err != nil {
		return nil, err
	}
	switch sb.Status {
	case store.StatusActive:
	case store.StatusPaused:
		rctx, cancel := lifecycleCtx(ctx)
		defer cancel()
		if err := s.resumeLocked(rctx, b, sb, false); err != nil {
			return nil, newErr(ErrUnavailable, "resume_failed", "sandbox %s is paused and could not be resumed: %v", id, err)
		}
	default:
		return nil, newErr(ErrConflict, "invalid_state", "sandbox %s is %s", id, sb.Status)
	}
	if b.agent == nil {
		return nil, newErr(ErrUnavailable, "unavailable", "sandbox %s is not reachable; retry shortly", id)
	}
	return b.agent, nil
}
