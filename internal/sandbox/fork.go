package sandbox

import (
	"context"
	"fmt"
	"github.com/stasis-sandbox/stasis/internal/objstore"
	"strconv"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/snapshot"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// MaxForks bounds one fork request.
const MaxForks = 100

// Created is a new sandbox with its first access token.
type Created struct {
	Sandbox *store.Sandbox
	Token   string
}

// origin is a committed snapshot that new sandboxes can start from: a
// paused sandbox's, or a template's.
type origin struct {
	dir        string // committed snapshot
	agentToken string // the agent secret inside the snapshot's memory
}

// Fork creates count independent sandboxes from a paused sandbox's snapshot.
// Each continues the same process state with its own ID, network link,
// tokens and writable filesystem; from then on they diverge.
func (s *Service) Fork(ctx context.Context, teamID, id string, count int) ([]Created, error) {
	if count < 1 || count > MaxForks {
		return nil, invalid("count must be between 1 and %d", MaxForks)
	}
	if err := s.checkRoom(); err != nil {
		return nil, err
	}
	if _, err := s.Get(ctx, teamID, id); err != nil {
		return nil, err
	}
	b := s.box(id)
	b.mu.Lock()
	defer b.mu.Unlock() // the source's snapshot must not go away meanwhile
	src, err := s.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	if src.Status != store.StatusPaused {
		return nil, newErr(ErrConflict, "invalid_state", "sandbox %s is %s; pause it first, forks start from its snapshot", id, src.Status)
	}
	b.awaitSeal()
	if err := snapshot.Verify(src.SnapshotDir); err != nil {
		return nil, newErr(ErrConflict, "snapshot_corrupt", "cannot fork %s: %v", id, err)
	}
	o := origin{dir: src.SnapshotDir, agentToken: s.agentToken(src.ID)}
	var out []Created
	for i := range count {
		c, err := s.createFrom(ctx, like(src, src.Name+"-fork-"+strconv.Itoa(i+1)), o)
		if err != nil {
			return out, err
		}
		if err := s.inheritSecrets(ctx, src.ID, c.Sandbox.ID); err != nil {
			return out, fmt.Errorf("fork %s: secret bindings: %w", c.Sandbox.ID, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// like returns a new sandbox record configured as src.
func like(src *store.Sandbox, name string) *store.Sandbox {
	return &store.Sandbox{
		ID: store.NewID(), TeamID: src.TeamID, Name: name, Status: store.StatusStarting,
		Template: src.Template, VCPU: src.VCPU, MemoryMiB: src.MemoryMiB, DiskMiB: src.DiskMiB,
		Metadata: copyMap(src.Metadata), Env: copyMap(src.Env), AgentPath: src.AgentPath,
		BaseImage: src.BaseImage, Defaults: src.Defaults,
		TimeoutSeconds: src.TimeoutSeconds, AutoDeleteSeconds: src.AutoDeleteSeconds,
		DeleteOnTimeout: src.DeleteOnTimeout, NoAutoResume: src.NoAutoResume,
		Network: src.Network.Clone(), PreviewPrivate: src.PreviewPrivate,
	}
}

// createFrom starts the new sandbox sb by restoring origin's snapshot under
// sb's ID, then gives the restored agent sb's own secret.
func (s *Service) createFrom(ctx context.Context, sb *store.Sandbox, o origin) (Created, error) {
	ctx, cancel := lifecycleCtx(ctx)
	defer cancel()
	start := time.Now()
	img, err := s.image(ctx, baseOf(sb))
	if err != nil {
		return Created{}, err
	}
	if err := s.admit(ctx, sb.TeamID, func() error { return s.insertSandbox(ctx, sb) }); err != nil {
		s.undoCreateLater(ctx, s.box(sb.ID), sb.ID, err) // the insert may have committed
		return Created{}, err
	}
	b := s.box(sb.ID)
	b.mu.Lock()
	defer b.mu.Unlock()
	spec := s.spec(sb, img)
	inst, err := s.cfg.Driver.Restore(ctx, spec, o.dir)
	if err == nil {
		// The restored agent still holds the origin's secret: hand it ours.
		// (The kernel hostname stays the origin's: gVisor refuses
		// sethostname without CAP_SYS_ADMIN, which sandboxes don't get.)
		// Its agent answered when the snapshot was taken, so waiting for
		// its socket is enough before the rotation, its first request.
		c := agentclient.New(inst.AgentAddr(), o.agentToken)
		if err = s.waitListening(ctx, c); err == nil {
			err = c.RotateToken(ctx, s.agentToken(sb.ID))
		}
		b.agent = c
	}
	if err != nil {
		s.metrics.Fail("create", "restore")
		s.cfg.Driver.Destroy(ctx, sb.ID)
		b.agent = nil
		if serr := s.setStatus(ctx, sb, store.StatusFailed, "could not start from snapshot: "+err.Error()); serr != nil {
			s.undoCreateLater(ctx, b, sb.ID, serr)
		}
		return Created{}, fmt.Errorf("start %s from snapshot: %w", sb.ID, err)
	}
	if err := s.setStatus(ctx, sb, store.StatusActive, ""); err != nil {
		s.undoCreateLater(ctx, b, sb.ID, err)
		return Created{}, err
	}
	tok, err := s.issueToken(ctx, sb)
	if err != nil {
		s.undoCreateLater(ctx, b, sb.ID, err)
		return Created{}, err
	}
	s.metrics.Observe("create_from_snapshot", time.Since(start))
	s.log.Info("sandbox created from snapshot", "sandbox", sb.ID, "snapshot", o.dir, "ms", time.Since(start).Milliseconds())
	return Created{Sandbox: sb, Token: tok}, nil
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// createFromTemplate starts a sandbox from a template's snapshot: the
// template's start_cmd processes are already running in it.
func (s *Service) createFromTemplate(ctx context.Context, teamID string, p CreateParams, t *store.Template) (*store.Sandbox, string, error) {
	if t.SnapshotDir == "" {
		return nil, "", newErr(ErrConflict, "template_not_ready", "template %s is %s; wait for its build to be ready", t.Name, t.Status)
	}
	d := t.Defaults
	d.Env = copyMap(d.Env)
	for k, v := range p.Env { // env_vars of the create apply to every command
		d.Env[k] = v
	}
	sb := &store.Sandbox{
		ID: store.NewID(), TeamID: teamID, Name: p.Name, Status: store.StatusStarting,
		Template: t.Name, BaseImage: t.BaseImage, VCPU: t.VCPU, MemoryMiB: t.MemoryMiB, DiskMiB: t.DiskMiB,
		Metadata: p.Metadata, AgentPath: t.AgentPath, Defaults: d,
		TimeoutSeconds: p.TimeoutSeconds, AutoDeleteSeconds: p.AutoDeleteSeconds,
		DeleteOnTimeout: p.DeleteOnTimeout, NoAutoResume: p.NoAutoResume,
	}
	p.applyNetwork(sb)
	dir, err := s.localCopy(ctx, objstore.KindTemplate, t.ID, t.SnapshotDir)
	if err != nil {
		return nil, "", err
	}
	c, err := s.createFrom(ctx, sb, origin{dir: dir, agentToken: s.agentToken(t.OriginID)})
	return c.Sandbox, c.Token, err
}
