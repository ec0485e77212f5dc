package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/failpoint"
	"github.com/stasis-sandbox/stasis/internal/images"
	"github.com/stasis-sandbox/stasis/internal/objstore"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// buildTeam owns the short-lived sandboxes templates are built in, so they
// never show up in a user's list.
const buildTeam = "_builds"

// ReadyTimeout bounds how long a template's ready_cmd may take to succeed.
const ReadyTimeout = 120 * time.Second

// BuildSpec is how a template is made (Superserve's build_spec).
type BuildSpec struct {
	From     string `json:"from"`
	Steps    []Step `json:"steps,omitempty"`
	StartCmd string `json:"start_cmd,omitempty"`
	ReadyCmd string `json:"ready_cmd,omitempty"`
}

// Step is one build step; exactly one field is set.
type Step struct {
	Run     *string   `json:"run,omitempty"`
	Env     *EnvStep  `json:"env,omitempty"`
	Workdir *string   `json:"workdir,omitempty"`
	User    *UserStep `json:"user,omitempty"`
}

// EnvStep sets an environment variable for later steps and for sandboxes.
type EnvStep struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// UserStep switches (creating if needed) the user later steps and commands run as.
type UserStep struct {
	Name string `json:"name"`
	Sudo bool   `json:"sudo,omitempty"`
}

// TemplateParams is a template create request.
type TemplateParams struct {
	Name                     string
	VCPU, MemoryMiB, DiskMiB int
	Spec                     BuildSpec
}

func (p *TemplateParams) validate() error {
	if err := validateName(p.Name); err != nil {
		return err
	}
	if strings.HasPrefix(p.Name, "stasis/") {
		return invalid("template names starting with stasis/ are reserved for built-in templates")
	}
	if !templateNameRE.MatchString(p.Name) {
		return invalid("template name %s is not valid: use letters, digits, '.', '_' and '-', starting with a letter or digit, optionally as team/name", QuoteShort(p.Name))
	}
	if strings.TrimSpace(p.Spec.From) == "" {
		return invalid("build_spec.from is required: an OCI image reference or a built-in template (%v)", images.Builtins())
	}
	if len(p.Spec.From) > MaxImageRefLen {
		return invalid("build_spec.from is %d bytes long; the limit is %d", len(p.Spec.From), MaxImageRefLen)
	}
	if p.VCPU < 0 || p.VCPU > MaxVCPU {
		return invalid("vcpu must be between 1 and %d", MaxVCPU)
	}
	if p.MemoryMiB != 0 && (p.MemoryMiB < 64 || p.MemoryMiB > MaxMemoryMiB) {
		return invalid("memory_mib must be between 64 and %d", MaxMemoryMiB)
	}
	if p.DiskMiB != 0 && (p.DiskMiB < 16 || p.DiskMiB > MaxDiskMiB) {
		return invalid("disk_mib must be between 16 and %d", MaxDiskMiB)
	}
	if err := validateCommand("build_spec.start_cmd", p.Spec.StartCmd); err != nil {
		return err
	}
	if err := validateCommand("build_spec.ready_cmd", p.Spec.ReadyCmd); err != nil {
		return err
	}
	if len(p.Spec.Steps) > MaxTemplateSteps {
		return invalid("build_spec.steps has %d steps; the limit is %d", len(p.Spec.Steps), MaxTemplateSteps)
	}
	for i, st := range p.Spec.Steps {
		if err := st.validate(); err != nil {
			return invalid("build_spec.steps[%d]: %v", i, err)
		}
	}
	return nil
}

func validateCommand(field, cmd string) error {
	if len(cmd) > MaxCommandLen {
		return invalid("%s is %d bytes long; the limit is %d", field, len(cmd), MaxCommandLen)
	}
	if strings.IndexByte(cmd, 0) >= 0 {
		return invalid("%s contains a NUL byte", field)
	}
	return nil
}

func (st *Step) validate() error {
	n := 0
	if st.Run != nil {
		n++
		if strings.TrimSpace(*st.Run) == "" {
			return invalid("run must not be empty")
		}
		if err := validateCommand("run", *st.Run); err != nil {
			return err
		}
	}
	if st.Env != nil {
		n++
		if err := validateEnv("env", map[string]string{st.Env.Key: st.Env.Value}); err != nil {
			return err
		}
	}
	if st.Workdir != nil {
		n++
		w := *st.Workdir
		switch {
		case !strings.HasPrefix(w, "/"):
			return invalid("workdir must be an absolute path")
		case len(w) > MaxPathLen:
			return invalid("workdir %s is %d bytes long; the limit is %d", QuoteShort(w), len(w), MaxPathLen)
		case strings.ContainsAny(w, "\x00'"):
			return invalid("workdir %s must not contain NUL bytes or quotes", QuoteShort(w))
		}
	}
	if st.User != nil {
		n++
		if len(st.User.Name) > MaxUserNameLen || !userNameRE.MatchString(st.User.Name) {
			return invalid("user name %s is not valid: up to %d letters, digits, '.', '_' and '-', not starting with a digit, '.' or '-'", QuoteShort(st.User.Name), MaxUserNameLen)
		}
	}
	if n != 1 {
		return invalid("a step must have exactly one of run, env, workdir, user")
	}
	return nil
}

// specHash identifies what a build would produce, so an unchanged rebuild is a no-op.
func (p *TemplateParams) specHash() (string, string) {
	spec, _ := json.Marshal(p.Spec)
	h := sha256.Sum256(fmt.Appendf(nil, "%s|%d|%d|%d", spec, p.VCPU, p.MemoryMiB, p.DiskMiB))
	return string(spec), hex.EncodeToString(h[:])
}

// CreateTemplate stores a template and starts its first build.
func (s *Service) CreateTemplate(ctx context.Context, teamID string, p TemplateParams) (*store.Template, *store.Build, error) {
	if err := p.validate(); err != nil {
		return nil, nil, err
	}
	if err := s.checkRoom(); err != nil {
		return nil, nil, err
	}
	if p.VCPU == 0 {
		p.VCPU = s.cfg.DefaultVCPU
	}
	if p.MemoryMiB == 0 {
		p.MemoryMiB = s.cfg.DefaultMemMiB
	}
	spec, hash := p.specHash()
	t := &store.Template{ID: store.NewID(), TeamID: teamID, Name: p.Name, VCPU: p.VCPU, MemoryMiB: p.MemoryMiB,
		DiskMiB: p.DiskMiB, Spec: spec, SpecHash: hash, Status: store.BuildPending}
	if err := s.cfg.Store.InsertTemplate(ctx, t); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil, nil, newErr(ErrConflict, "template_exists", "a template named %q already exists; rebuild it with POST /templates/%s/builds", p.Name, p.Name)
		}
		return nil, nil, err
	}
	b, err := s.startBuild(ctx, t)
	return t, b, err
}

// GetTemplate finds a team's template by ID or name.
func (s *Service) GetTemplate(ctx context.Context, teamID, idOrName string) (*store.Template, error) {
	t, err := s.cfg.Store.GetTemplate(ctx, teamID, idOrName)
	if errors.Is(err, store.ErrNotFound) {
		return nil, newErr(ErrNotFound, "not_found", "template %s not found", Shorten(idOrName))
	}
	return t, err
}

// ListTemplates lists the team's templates whose names start with prefix.
func (s *Service) ListTemplates(ctx context.Context, teamID, prefix string) ([]*store.Template, error) {
	return s.cfg.Store.ListTemplates(ctx, teamID, prefix)
}

// Rebuild starts a new build of a template, unless its spec is unchanged and
// a build of it is ready or in progress: then that build is returned.
func (s *Service) Rebuild(ctx context.Context, teamID, idOrName string) (*store.Build, error) {
	t, err := s.GetTemplate(ctx, teamID, idOrName)
	if err != nil {
		return nil, err
	}
	if t.LatestBuildID != "" {
		if b, err := s.cfg.Store.GetBuild(ctx, t.ID, t.LatestBuildID); err == nil && b.SpecHash == t.SpecHash {
			switch b.Status {
			case store.BuildReady, store.BuildPending, store.BuildBuilding, store.BuildSnapshotting:
				return b, nil
			}
		}
	}
	if err := s.checkRoom(); err != nil {
		return nil, err
	}
	return s.startBuild(ctx, t)
}

// Builds lists a template's builds, newest first.
func (s *Service) Builds(ctx context.Context, teamID, idOrName string, limit int) ([]*store.Build, error) {
	t, err := s.GetTemplate(ctx, teamID, idOrName)
	if err != nil {
		return nil, err
	}
	return s.cfg.Store.ListBuilds(ctx, t.ID, limit)
}

// Build returns one build of a template.
func (s *Service) Build(ctx context.Context, teamID, idOrName, buildID string) (*store.Template, *store.Build, error) {
	t, err := s.GetTemplate(ctx, teamID, idOrName)
	if err != nil {
		return nil, nil, err
	}
	b, err := s.cfg.Store.GetBuild(ctx, t.ID, buildID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, newErr(ErrNotFound, "not_found", "build %s of template %s not found", Shorten(buildID), t.Name)
	}
	return t, b, err
}

// CancelBuild stops a build in progress; a finished build is left alone.
func (s *Service) CancelBuild(ctx context.Context, teamID, idOrName, buildID string) error {
	_, b, err := s.Build(ctx, teamID, idOrName, buildID)
	if err != nil {
		return err
	}
	if cancel := s.buildLog(b.ID).cancelFunc(); cancel != nil {
		cancel()
	}
	return nil
}

// DeleteTemplate cancels its builds and removes it with its snapshot.
// Sandboxes already started from it keep running.
func (s *Service) DeleteTemplate(ctx context.Context, teamID, idOrName string) error {
	t, err := s.GetTemplate(ctx, teamID, idOrName)
	if err != nil {
		return err
	}
	builds, _ := s.cfg.Store.ListBuilds(ctx, t.ID, 0)
	for _, b := range builds {
		if cancel := s.buildLog(b.ID).cancelFunc(); cancel != nil {
			cancel()
		}
	}
	if err := s.cfg.Store.DeleteTemplate(ctx, t.ID); err != nil {
		return err
	}
	os.RemoveAll(s.tsnaps.SandboxDir(t.ID))
	s.deleteObjects(objstore.KindTemplate, t.ID)
	return nil
}

func (s *Service) startBuild(ctx context.Context, t *store.Template) (*store.Build, error) {
	// One build of a template at a time across the cluster: the builder
	// holds the template's build lease until it finishes.
	ok, err := s.cfg.Store.TryLease(ctx, buildLease(t.ID), s.holder(), buildLeaseTTL)
	if err != nil {
		return nil, err
	}
	if !ok {
		if cur, err := s.cfg.Store.GetTemplate(ctx, "", t.ID); err == nil && cur.LatestBuildID != "" {
			if b, err := s.cfg.Store.GetBuild(ctx, t.ID, cur.LatestBuildID); err == nil {
				return b, nil // the build another node is running
			}
		}
		return nil, newErr(ErrConflict, "build_in_progress", "template %s is being built on another node; retry when that build ends", t.Name)
	}
	b := &store.Build{ID: store.NewID(), TemplateID: t.ID, Status: store.BuildPending, SpecHash: t.SpecHash}
	if err := s.cfg.Store.InsertBuild(ctx, b); err != nil {
		s.cfg.Store.ReleaseLease(ctx, buildLease(t.ID), s.holder())
		return nil, err
	}
	t.LatestBuildID = b.ID
	if t.SnapshotDir == "" {
		t.Status = store.BuildPending
	}
	if err := s.cfg.Store.UpdateTemplate(ctx, t); err != nil {
		return nil, err
	}
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	log := s.buildLog(b.ID)
	log.setCancel(cancel)
	go func() {
		defer cancel()
		lctx, stopLease := context.WithCancel(bctx)
		renewed := make(chan struct{})
		go func() {
			defer close(renewed)
			s.keepBuildLease(lctx, t.ID, cancel)
		}()
		s.runBuild(bctx, t.ID, b.ID, log)
		stopLease()
		<-renewed
		s.cfg.Store.ReleaseLease(context.WithoutCancel(ctx), buildLease(t.ID), s.holder())
	}()
	return b, nil
}

// buildError is a build failure with Superserve's stable code prefix.
type buildError struct{ code, msg string }

func (e *buildError) Error() string { return e.code + ": " + e.msg }

func failBuild(code, format string, args ...any) error {
	return &buildError{code: code, msg: fmt.Sprintf(format, args...)}
}

// runBuild builds a template: boot its image in a build sandbox, run the
// steps, launch start_cmd, wait for ready_cmd, and snapshot the running
// sandbox. Sandboxes created from the template restore that snapshot.
func (s *Service) runBuild(ctx context.Context, templateID, buildID string, log *buildLog) {
	t, err := s.cfg.Store.GetTemplate(ctx, "", templateID)
	if err != nil {
		return
	}
	b, err := s.cfg.Store.GetBuild(ctx, templateID, buildID)
	if err != nil {
		return
	}
	now := time.Now().UTC()
	b.Status, b.StartedAt = store.BuildBuilding, &now
	s.cfg.Store.UpdateBuild(ctx, b)
	if t.SnapshotDir == "" {
		t.Status = store.BuildBuilding
		s.cfg.Store.UpdateTemplate(ctx, t)
	}
	log.system("build %s of template %s started", buildID, t.Name)

	var spec BuildSpec
	json.Unmarshal([]byte(t.Spec), &spec)
	result, err := s.build(ctx, t, b, spec, log)

	// Re-read: the template may have been deleted meanwhile.
	final := context.WithoutCancel(ctx)
	t2, terr := s.cfg.Store.GetTemplate(final, "", templateID)
	end := time.Now().UTC()
	b.FinalizedAt = &end
	switch {
	case err == nil && terr == nil:
		old := t2.SnapshotDir
		t2.Status, t2.Error = store.BuildReady, ""
		t2.SnapshotDir, t2.SnapshotBytes = result.dir, result.bytes
		t2.OriginID, t2.AgentPath, t2.BaseImage, t2.Defaults = result.originID, result.agentPath, result.base, result.defaults
		t2.BuiltAt = &end
		s.cfg.Store.UpdateTemplate(final, t2)
		if old != "" && old != result.dir {
			os.RemoveAll(old)
		}
		s.uploadSnapshot(objstore.KindTemplate, t2.ID, 0, result.dir)
		b.Status = store.BuildReady
		log.system("template %s is ready (%d MB snapshot)", t.Name, result.bytes>>20)
	case err == nil:
		os.RemoveAll(result.dir) // template deleted during the build
		b.Status = store.BuildCancelled
	case ctx.Err() != nil:
		b.Status, b.Error = store.BuildCancelled, "build was cancelled"
		if terr == nil && t2.SnapshotDir == "" {
			// Nothing to start from: failed, the only other final template
			// status the SDKs know, with their code for a cancelled build.
			t2.Status, t2.Error = store.BuildFailed, "cancelled: "+b.Error
			s.cfg.Store.UpdateTemplate(final, t2)
		}
	default:
		var be *buildError
		if !errors.As(err, &be) {
			be = &buildError{code: "build_failed", msg: err.Error()}
		}
		b.Status, b.Error = store.BuildFailed, be.Error()
		log.stream("stderr", be.Error()+"\n")
		if terr == nil {
			t2.Error = be.Error()
			if t2.SnapshotDir == "" {
				t2.Status = store.BuildFailed
			}
			s.cfg.Store.UpdateTemplate(final, t2)
		}
	}
	b.Log = log.text()
	s.cfg.Store.UpdateBuild(final, b)
	log.finish(b.Status)
	s.metrics.Observe("template_build", end.Sub(now))
}

type buildResult struct {
	dir, originID, agentPath, base string
	bytes                          int64
	defaults                       store.ExecDefaults
}

func (s *Service) build(ctx context.Context, t *store.Template, b *store.Build, spec BuildSpec, log *buildLog) (*buildResult, error) {
	// 1. The image.
	base, img, err := s.resolveFrom(ctx, spec.From, log)
	if err != nil {
		return nil, failBuild("image_pull_failed", "%v", err)
	}
	// 2. A build sandbox booted from it (owned by the hidden build team).
	if err := s.cfg.Store.EnsureTeam(ctx, buildTeam, "template builds"); err != nil {
		return nil, err
	}
	sb := &store.Sandbox{
		ID: store.NewID(), TeamID: buildTeam, Name: "build-" + t.Name, Status: store.StatusStarting,
		Template: t.Name, BaseImage: base, VCPU: t.VCPU, MemoryMiB: t.MemoryMiB, DiskMiB: t.DiskMiB,
		AgentPath: s.agentPath,
	}
	if err := s.insertSandbox(ctx, sb); err != nil {
		return nil, err
	}
	bx := s.box(sb.ID)
	bx.mu.Lock()
	defer func() {
		cctx := context.WithoutCancel(ctx)
		s.deleteLocked(cctx, bx, sb.ID)
		bx.mu.Unlock()
	}()
	log.system("booting build sandbox from %s", spec.From)
	inst, err := s.cfg.Driver.Create(ctx, s.spec(sb, img))
	if err != nil {
		return nil, failBuild("build_failed", "could not boot the image: %v", err)
	}
	agent := agentclient.New(inst.AgentAddr(), s.agentToken(sb.ID))
	if err := s.waitReady(ctx, agent); err != nil {
		return nil, failBuild("build_failed", "could not boot the image: %v", err)
	}
	if err := s.cfg.Driver.LimitCPU(ctx, sb.ID, sb.VCPU); err != nil {
		return nil, failBuild("build_failed", "could not boot the image: %v", err)
	}
	bx.agent = agent
	if img.StartCmd != "" {
		log.system("starting the image's service: %s", img.StartCmd)
		if err := startImageCmd(ctx, agent, img.StartCmd, img.ReadyCmd); err != nil {
			return nil, failBuild("build_failed", "could not start the image's service: %v", err)
		}
	}

	// 3. The steps.
	d := store.ExecDefaults{Env: map[string]string{}, Workdir: img.Workdir, User: img.User}
	if len(s.cfg.EgressCA) > 0 {
		d.Env = trustEnv()
	}
	run := func(cmd, user string) (agentclient.ExitStatus, error) {
		return agent.Run(ctx, agentclient.ExecRequest{Command: cmd, WorkingDir: d.Workdir, Env: d.Env, User: user, TimeoutS: 3600},
			log.writer("stdout"), log.writer("stderr"))
	}
	for i, st := range spec.Steps {
		switch {
		case st.Run != nil:
			log.system("step %d/%d: run %s", i+1, len(spec.Steps), *st.Run)
			res, err := run(*st.Run, d.User)
			if err != nil {
				return nil, err
			}
			if res.ExitCode != 0 {
				return nil, failBuild("step_failed", "%s", strings.TrimSpace(fmt.Sprintf("step %d (%s) exited with code %d %s", i+1, *st.Run, res.ExitCode, res.Error)))
			}
		case st.Env != nil:
			log.system("step %d/%d: env %s", i+1, len(spec.Steps), st.Env.Key)
			d.Env[st.Env.Key] = st.Env.Value
		case st.Workdir != nil:
			log.system("step %d/%d: workdir %s", i+1, len(spec.Steps), *st.Workdir)
			if res, err := run("mkdir -p '"+*st.Workdir+"'", "root"); err != nil || res.ExitCode != 0 {
				return nil, failBuild("step_failed", "step %d: cannot create workdir %s", i+1, *st.Workdir)
			}
			d.Workdir = *st.Workdir
		case st.User != nil:
			log.system("step %d/%d: user %s", i+1, len(spec.Steps), st.User.Name)
			n := st.User.Name
			add := "id -u " + n + " >/dev/null 2>&1 || useradd -m -s /bin/sh " + n + " 2>/dev/null || adduser -D " + n
			if res, err := run(add, "root"); err != nil || res.ExitCode != 0 {
				return nil, failBuild("step_failed", "step %d: cannot create user %s", i+1, n)
			}
			d.User = n
		}
		failpoint.Hit("build.after-step")
	}
	// 4. The start command, left running, and the readiness check.
	if spec.StartCmd != "" {
		log.system("start_cmd: %s", spec.StartCmd)
		pid, err := launchStartCmd(ctx, agent, spec.StartCmd, d, log.writer("stderr"))
		if err != nil {
			return nil, err
		}
		if spec.ReadyCmd == "" {
			spec.ReadyCmd = "kill -0 " + pid
		}
		if err := s.waitTemplateReady(ctx, agent, spec.ReadyCmd, pid, d, log); err != nil {
			return nil, err
		}
	} else if spec.ReadyCmd != "" {
		if err := s.waitTemplateReady(ctx, agent, spec.ReadyCmd, "", d, log); err != nil {
			return nil, err
		}
	}
	// 5. The snapshot of the running sandbox.
	b.Status = store.BuildSnapshotting
	s.cfg.Store.UpdateBuild(ctx, b)
	log.system("snapshotting")
	if err := s.freezeForCheckpoint(ctx, agent, sb.ID); err != nil {
		return nil, failBuild("snapshot_failed", "%v", err)
	}
	tmp, err := s.tsnaps.Begin(t.ID)
	if err != nil {
		return nil, failBuild("snapshot_failed", "%v", err)
	}
	if err := s.cfg.Driver.Checkpoint(ctx, sb.ID, tmp); err != nil {
		os.RemoveAll(tmp)
		return nil, failBuild("snapshot_failed", "%v", err)
	}
	dir, size, err := s.tsnaps.Commit(tmp)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, failBuild("snapshot_failed", "%v", err)
	}
	return &buildResult{dir: dir, bytes: size, originID: sb.ID, agentPath: sb.AgentPath, base: base, defaults: d}, nil
}

// waitTemplateReady polls ready_cmd (default: that pid is alive) until it
// succeeds, failing early when the start command (pid) has died.
func (s *Service) waitTemplateReady(ctx context.Context, agent *agentclient.Client, readyCmd, pid string, d store.ExecDefaults, log *buildLog) error {
	log.system("waiting for ready_cmd: %s", readyCmd)
	if err := awaitStartCmd(ctx, agent, readyCmd, pid, d, log.writer("stderr")); err != nil {
		return err
	}
	log.system("ready")
	return nil
}

// resolveFrom turns a build's `from` into a resolvable base reference and its image.
func (s *Service) resolveFrom(ctx context.Context, from string, log *buildLog) (string, *images.Image, error) {
	for _, b := range images.Builtins() {
		if from == b {
			img, err := s.cfg.Images.Ensure(ctx, from, log.writer("system"))
			return from, img, err
		}
	}
	if s.cfg.OCI == nil {
		return "", nil, errors.New("pulling OCI images is not enabled on this server")
	}
	oi, err := s.cfg.OCI.Pull(ctx, from, log.writer("system"))
	if err != nil {
		return "", nil, err
	}
	// Pin the digest, so later restores find exactly this root filesystem.
	base := "oci:" + repository(from) + "@" + oi.Digest
	img, err := s.image(ctx, base)
	return base, img, err
}

// repository strips the tag and digest from an image reference.
func repository(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	slash := strings.LastIndex(ref, "/")
	if i := strings.LastIndex(ref, ":"); i > slash {
		ref = ref[:i]
	}
	return ref
}
