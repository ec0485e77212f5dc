// Package sandbox is the sandbox service: the lifecycle state machine
// (create, pause, resume, delete), data-plane access to a sandbox's agent,
// and recovery of sandboxes after stasisd restarts. It sits between the HTTP
// API and the runtime driver, with the store as the source of truth.
package sandbox

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
	"github.com/stasis-sandbox/stasis/internal/egress"
	"github.com/stasis-sandbox/stasis/internal/images"
	"github.com/stasis-sandbox/stasis/internal/metrics"
	"github.com/stasis-sandbox/stasis/internal/objstore"
	"github.com/stasis-sandbox/stasis/internal/oci"
	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/snapshot"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// Config wires the service to its dependencies.
type Config struct {
	Store store.Store
	// NodeName is this server's name in a cluster: it owns the sandboxes it
	// creates ("" on a single node).
	NodeName        string
	Driver          runtime.Driver
	Images          *images.Manager
	SnapshotDir     string // checkpoints live in SnapshotDir/<sandbox id>/
	AgentPath       string // host path of the static stasis-agent binary
	AgentDir        string // content-addressed copies of agent binaries (restore needs the same bytes)
	MaxLivePerTeam  int    // sandboxes holding compute per team (0: unlimited)
	NodeKey         []byte // secret from which per-sandbox agent tokens are derived
	Logger          *slog.Logger
	DefaultTemplate string // used when a create names no template
	DefaultVCPU     int
	DefaultMemMiB   int
	DefaultDiskMiB  int           // writable-layer quota of a sandbox (0: unlimited)
	ReadyTimeout    time.Duration // how long a new or restored agent has to answer
	// WarmWindow keeps a paused sandbox frozen in RAM this long after its
	// snapshot is durable, so resuming it is a thaw (0: stop at once).
	WarmWindow  time.Duration
	Metrics     *metrics.Registry
	OCI         *oci.Puller    // pulls OCI images for templates (nil: built-in images only)
	TemplateDir string         // template snapshots live in TemplateDir/<template id>/
	Storage     StorageGuard   // refuses new sandboxes when the disk is low (nil: never)
	Secrets     SecretBindings // stand-in tokens of bound secrets (nil: none)
	// EgressCA (PEM) is added to every new sandbox's trust store, and the
	// usual CA-bundle variables point at it (nil: nothing is installed).
	EgressCA []byte
	// Uploads sends sealed snapshots to an object store, so other nodes
	// can restore them; SnapshotCache holds snapshots downloaded from it
	// (both nil: snapshots stay on this node's disk only).
	Uploads       *objstore.Uploader
	SnapshotCache *objstore.Cache
}

// SecretBindings is the part of the secrets service the lifecycle needs.
type SecretBindings interface {
	// Env returns the stand-in tokens a sandbox's commands get, by env key.
	Env(ctx context.Context, sandboxID string) (map[string]string, error)
	// Inherit gives a sandbox started from another's state that one's
	// bindings, with the same tokens (its processes hold them).
	Inherit(ctx context.Context, from, to string) error
}

// Service runs the sandbox lifecycle. It is safe for concurrent use.
type Service struct {
	cfg       Config
	agentPath string     // this run's agent, installed under AgentDir
	admitMu   sync.Mutex // makes the per-team limit check and the state change atomic
	log       *slog.Logger
	snaps     *snapshot.Dir
	metrics   *metrics.Registry

	mu    sync.Mutex
	boxes map[string]*box

	tsnaps *snapshot.Dir // template snapshots
	saved  *snapshot.Dir // saved snapshots
	roots  *trustRoots   // nil without an egress CA
	// background is the work that finishes a lifecycle step after its
	// caller was answered: checkpoint seals, new sandboxes' agent secrets.
	background sync.WaitGroup

	logsMu sync.Mutex
	logs   map[string]*buildLog // by build ID, for builds run by this process

	health   *healthState // see RunHealthChecks
	policies policyCache  // compiled egress rules, by sandbox ID
	timers   timerWake    // wakes RunTimers when a deadline may have changed
}

// box is the in-memory side of one sandbox. mu serialises lifecycle
// operations (create, pause, resume, delete) on it.
type box struct {
	mu        sync.Mutex
	agent     *agentclient.Client // nil unless the sandbox is running
	warmUntil time.Time           // paused but still frozen in RAM until then (zero: not warm); set with setWarm
	inRAM     atomic.Bool         // !warmUntil.IsZero(), readable without mu
	sealing   *sealing            // the paused sandbox's checkpoint being sealed, if any
	loading   *loading            // the check of a lazily restored sandbox's memory, if running
	sessions  *runEnd             // ends when the sandbox stops: streaming sessions end
}

// runEnd is the end of a sandbox's current run (pause, delete), which its
// streaming sessions wait for.
type runEnd struct {
	done chan struct{}
	why  string // what ended the run; written before done is closed
}

// reason says what ended the run, once done is closed.
func (e *runEnd) reason() string { return e.why }

// sessionsDone returns the end of the sandbox's current run.
func (b *box) sessionsDone() *runEnd {
	if b.sessions == nil {
		b.sessions = &runEnd{done: make(chan struct{})}
	}
	return b.sessions
}

// endSessions tells every streaming session of the current run to finish,
// and why (a sentence such as "the sandbox was paused"): their connections
// to a paused or deleted sandbox would otherwise hang.
func (b *box) endSessions(why string) {
	if b.sessions != nil {
		b.sessions.why = why
		close(b.sessions.done)
		b.sessions = nil
	}
}

// New returns a service. Call Recover before serving requests.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Driver == nil || cfg.Images == nil {
		return nil, errors.New("sandbox: store, driver and images are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DefaultTemplate == "" {
		cfg.DefaultTemplate = "stasis/base"
	}
	if cfg.DefaultVCPU == 0 {
		cfg.DefaultVCPU = 1
	}
	if cfg.DefaultMemMiB == 0 {
		cfg.DefaultMemMiB = 1024
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 30 * time.Second
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New()
	}
	snaps, err := snapshot.New(cfg.SnapshotDir)
	if err != nil {
		return nil, err
	}
	agentPath, err := installAgent(cfg.AgentPath, cfg.AgentDir)
	if err != nil {
		return nil, err
	}
	if cfg.TemplateDir == "" {
		cfg.TemplateDir = filepath.Join(filepath.Dir(cfg.SnapshotDir), "templates")
	}
	tsnaps, err := snapshot.New(cfg.TemplateDir)
	if err != nil {
		return nil, err
	}
	saved, err := snapshot.New(filepath.Join(filepath.Dir(cfg.SnapshotDir), "saved"))
	if err != nil {
		return nil, err
	}
	var roots *trustRoots
	if len(cfg.EgressCA) > 0 {
		roots = &trustRoots{dir: filepath.Join(filepath.Dir(cfg.SnapshotDir), "roots"), ca: cfg.EgressCA}
	}
	return &Service{cfg: cfg, agentPath: agentPath, log: cfg.Logger, snaps: snaps, tsnaps: tsnaps, saved: saved, roots: roots,
		metrics: cfg.Metrics, boxes: map[string]*box{}, logs: map[string]*buildLog{}, health: newHealthState()}, nil
}

// installAgent copies the agent binary to dir/<content hash>/stasis-agent
// (once) and returns that path. Sandboxes record the path they started
// with, so a stasis upgrade never restores a checkpoint under other bytes.
func installAgent(src, dir string) (string, error) {
	if dir == "" {
		return src, nil
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return "", fmt.Errorf("agent binary: %w", err)
	}
	sum := sha256.Sum256(b)
	dst := filepath.Join(dir, hex.EncodeToString(sum[:8]), "stasis-agent")
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		return "", err
	}
	return dst, os.Rename(tmp, dst)
}

// admit enforces the per-team limit on sandboxes holding compute; change
// runs under the same lock, so concurrent requests cannot both squeeze in.
func (s *Service) admit(ctx context.Context, teamID string, change func() error) error {
	s.admitMu.Lock()
	defer s.admitMu.Unlock()
	if s.cfg.MaxLivePerTeam > 0 {
		n, err := s.cfg.Store.CountLive(ctx, teamID)
		if err != nil {
			return err
		}
		if n >= s.cfg.MaxLivePerTeam {
			s.metrics.Fail("admit", "too_many_sandboxes")
			return newErr(ErrLimit, "too_many_sandboxes",
				"your team already has %d running sandboxes (the limit); pause or delete one first", n)
		}
	}
	return change()
}

// newAgentClient returns a client for a running sandbox's agent, looking up
// its address in the runtime (nil if it is not running).
func (s *Service) newAgentClient(ctx context.Context, id string) *agentclient.Client {
	if inst, ok, _ := s.running(ctx, id); ok {
		return agentclient.New(inst.AgentAddr(), s.agentToken(id))
	}
	return nil
}

// running looks a sandbox up in the runtime's list of running ones.
func (s *Service) running(ctx context.Context, id string) (runtime.Instance, bool, error) {
	list, err := s.cfg.Driver.List(ctx)
	if err != nil {
		return runtime.Instance{}, false, err
	}
	for _, inst := range list {
		if inst.ID == id {
			return inst, true, nil
		}
	}
	return runtime.Instance{}, false, nil
}

func (s *Service) box(id string) *box {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.boxes[id]
	if !ok {
		b = &box{}
		s.boxes[id] = b
	}
	return b
}

// setWarm records that the paused sandbox stays frozen in RAM until t (zero:
// it is not, or no longer, in RAM).
func (b *box) setWarm(t time.Time) {
	b.warmUntil = t
	b.inRAM.Store(!t.IsZero())
}

// PauseState tells where a paused sandbox is: durable means its snapshot is
// sealed on disk (it survives a restart or a host crash), inMemory that it is
// also still frozen in RAM (a resume is a thaw).
func (s *Service) PauseState(sb *store.Sandbox) (durable, inMemory bool) {
	if sb.Status != store.StatusPaused {
		return false, false
	}
	durable = sb.SnapshotDir != "" && fileExists(filepath.Join(sb.SnapshotDir, snapshot.ManifestName))
	s.mu.Lock()
	b := s.boxes[sb.ID]
	s.mu.Unlock()
	return durable, b != nil && b.inRAM.Load()
}

func (s *Service) forget(id string) {
	s.mu.Lock()
	delete(s.boxes, id)
	s.mu.Unlock()
}

// agentToken derives the sandbox's agent secret from the node key, so it
// never has to be stored.
func (s *Service) agentToken(id string) string {
	return AgentToken(s.cfg.NodeKey, id)
}

// AgentToken is the agent secret of sandbox id under nodeKey (the data
// dir's node.key). The sandbox's agent only ever holds its hash.
func AgentToken(nodeKey []byte, id string) string {
	m := hmac.New(sha256.New, nodeKey)
	m.Write([]byte("stasis-agent:" + id))
	return hex.EncodeToString(m.Sum(nil))
}

// EnvdToken is sandbox id's access token for E2B's envd protocol. E2B
// clients keep it for the sandbox's whole life (a resume does not rotate
// it), so it is derived from the node key rather than issued and stored.
func (s *Service) EnvdToken(id string) string {
	m := hmac.New(sha256.New, s.cfg.NodeKey)
	m.Write([]byte("stasis-e2b-envd:" + id))
	return hex.EncodeToString(m.Sum(nil))
}

// spec builds the runtime spec of a sandbox. It must be identical for a
// create and every later restore of the same sandbox.
func (s *Service) spec(sb *store.Sandbox, img *images.Image) runtime.Spec {
	env := append([]string(nil), img.Env...)
	keys := make([]string, 0, len(sb.Env))
	for k := range sb.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+sb.Env[k])
	}
	env = append(env,
		// Only the hash: code in the sandbox can read this environment in
		// /proc/1/environ.
		agentproto.EnvTokenSHA256+"="+agentproto.TokenHashHex(s.agentToken(sb.ID)),
		"STASIS_DEFAULT_USER="+img.User,
		"STASIS_DEFAULT_WORKDIR="+img.Workdir,
		"STASIS_NAMESERVER="+egress.ResolverAddr.String(),
	)
	if len(s.cfg.EgressCA) > 0 {
		// A public certificate; the agent installs it before the first command.
		env = append(env, agentproto.EnvEgressCA+"="+string(s.cfg.EgressCA))
	}
	agent := sb.AgentPath
	if agent == "" {
		agent = s.agentPath
	}
	return runtime.Spec{
		ID:        sb.ID,
		Hostname:  "sandbox-" + sb.ID[:8],
		RootFS:    s.rootFS(img),
		AgentPath: agent,
		Env:       env,
		VCPU:      sb.VCPU,
		MemoryMiB: sb.MemoryMiB,
		DiskMiB:   sb.DiskMiB,
	}
}

// issueToken creates a new data-plane token for the sandbox's current generation.
func (s *Service) issueToken(ctx context.Context, sb *store.Sandbox) (string, error) {
	return s.addToken(ctx, sb.ID, sb.TokenGeneration)
}

// addToken stores a new data-plane token of generation gen for sandbox id.
func (s *Service) addToken(ctx context.Context, id string, gen int) (string, error) {
	tok := store.NewSecret("sst_")
	if err := s.cfg.Store.AddAccessToken(ctx, id, gen, tok); err != nil {
		return "", err
	}
	return tok, nil
}

// issueTokenAhead starts issuing sb's first token while the sandbox
// starts, off the path the client waits on; the returned func waits for it.
// The token is handed out only if the start succeeds: a failed sandbox's
// token is never known to anyone.
func (s *Service) issueTokenAhead(ctx context.Context, sb *store.Sandbox) func() (string, error) {
	id, gen := sb.ID, sb.TokenGeneration
	type result struct {
		tok string
		err error
	}
	done := make(chan result, 1)
	go func() {
		tok, err := s.addToken(ctx, id, gen)
		done <- result{tok, err}
	}()
	return func() (string, error) {
		r := <-done
		return r.tok, r.err
	}
}

// setStatus persists a status change (and the error message that goes with
// it), arming the timer that belongs to the new status: the timeout counts
// active time from this (re)start, auto-delete counts continuous paused time.
func (s *Service) setStatus(ctx context.Context, sb *store.Sandbox, status, msg string) error {
	sb.Status, sb.Error = status, msg
	sb.PauseAt, sb.DeleteAt = nil, nil
	now := time.Now()
	switch status {
	case store.StatusActive:
		sb.PauseAt = deadline(now, sb.TimeoutSeconds)
	case store.StatusPaused:
		sb.DeleteAt = deadline(now, sb.AutoDeleteSeconds)
	}
	return s.update(ctx, sb)
}

// insertSandbox stores a new sandbox owned by this node.
func (s *Service) insertSandbox(ctx context.Context, sb *store.Sandbox) error {
	sb.Node = s.cfg.NodeName
	err := s.cfg.Store.InsertSandbox(ctx, sb)
	s.timers.kick() // its deadlines may be the next
	return err
}

func deadline(from time.Time, seconds *int) *time.Time {
	if seconds == nil {
		return nil
	}
	t := from.Add(time.Duration(*seconds) * time.Second)
	return &t
}

// lifecycleCtx detaches a lifecycle operation from its request: once started,
// a create/pause/resume/delete finishes even if the client goes away, so the
// store never records a state the runtime is not in.
func lifecycleCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
}

// Get returns a sandbox of the team.
func (s *Service) Get(ctx context.Context, teamID, id string) (*store.Sandbox, error) {
	sb, err := s.cfg.Store.GetSandbox(ctx, teamID, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound(id)
	}
	return sb, err
}

// List returns the team's sandboxes whose metadata contains filter.
func (s *Service) List(ctx context.Context, teamID string, filter map[string]string) ([]*store.Sandbox, error) {
	return s.cfg.Store.ListSandboxes(ctx, teamID, filter)
}

// baseOf names what sb's root filesystem comes from.
func baseOf(sb *store.Sandbox) string {
	if sb.BaseImage != "" {
		return sb.BaseImage
	}
	return sb.Template
}

// LinkAddr is the address at which the host reaches running sandbox id.
func (s *Service) LinkAddr(ctx context.Context, id string) (netip.Addr, error) {
	inst, ok, err := s.running(ctx, id)
	if err != nil {
		return netip.Addr{}, err
	}
	if !ok {
		return netip.Addr{}, newErr(ErrUnavailable, "unavailable", "sandbox %s is not running", id)
	}
	return inst.Addr, nil
}
