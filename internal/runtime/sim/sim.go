//go:build stasis_sim

package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentproto"
	"github.com/stasis-sandbox/stasis/internal/runtime"
)

// StateFile is what Checkpoint writes into a snapshot dir: the sandbox's ID,
// so Restore can tell a checkpoint of this sandbox from anything else.
const StateFile = "sim-state"

type instance struct {
	tokenHash string // hex SHA-256 of the agent token it accepts
	frozen    bool
	rootFS    string
}

// Driver is the simulated runtime. Every instance has the driver's one
// loopback address; its fake agent tells instances apart by their token.
type Driver struct {
	addr netip.Addr
	srv  *http.Server
	ln   net.Listener
	born time.Time

	mu    sync.Mutex
	insts map[string]*instance
	byTok map[string]string // token hash → instance ID
}

var _ runtime.Driver = (*Driver)(nil)

// New starts the fake agent on a free loopback address 127.X.Y.1 at
// runtime.AgentPort (the port the service dials); several simulated nodes
// on one host each get their own address.
func New() (*Driver, error) {
	d := &Driver{insts: map[string]*instance{}, byTok: map[string]string{}, born: time.Now()}
	var err error
	for try := 0; try < 64; try++ {
		a := netip.AddrFrom4([4]byte{127, byte(2 + rand.IntN(250)), byte(1 + rand.IntN(254)), 1})
		d.ln, err = net.Listen("tcp", netip.AddrPortFrom(a, runtime.AgentPort).String())
		if err == nil {
			d.addr = a
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("sim runtime: no free loopback address for the fake agent: %w", err)
	}
	d.srv = &http.Server{Handler: http.HandlerFunc(d.serveAgent), ReadHeaderTimeout: 10 * time.Second}
	go d.srv.Serve(d.ln)
	return d, nil
}

// Addr is the loopback address every instance of this driver reports.
func (d *Driver) Addr() netip.Addr { return d.addr }

// Close stops the fake agent.
func (d *Driver) Close() error { return d.srv.Close() }

func tokenHashOf(env []string) (string, error) {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, agentproto.EnvTokenSHA256+"="); ok {
			return v, nil
		}
	}
	return "", errors.New("sim runtime: spec has no " + agentproto.EnvTokenSHA256)
}

func (d *Driver) start(spec runtime.Spec) (*runtime.Instance, error) {
	h, err := tokenHashOf(spec.Env)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.insts[spec.ID]; ok {
		delete(d.byTok, old.tokenHash)
	}
	d.insts[spec.ID] = &instance{tokenHash: h, rootFS: spec.RootFS}
	d.byTok[h] = spec.ID
	return &runtime.Instance{ID: spec.ID, Addr: d.addr}, nil
}

// Create registers an instance; its agent answers at once.
func (d *Driver) Create(ctx context.Context, spec runtime.Spec) (*runtime.Instance, error) {
	return d.start(spec)
}

// LimitCPU checks that the instance exists; there is no CPU to limit.
func (d *Driver) LimitCPU(ctx context.Context, id string, vcpu int) error {
	if !d.has(id) {
		return runtime.ErrNotFound
	}
	return nil
}

// Checkpoint writes a tiny state file naming the sandbox.
func (d *Driver) Checkpoint(ctx context.Context, id, dir string) error {
	if !d.has(id) {
		return runtime.ErrNotFound
	}
	return os.WriteFile(filepath.Join(dir, StateFile), []byte(id), 0o600)
}

// Restore starts the instance again from a checkpoint of this sandbox.
func (d *Driver) Restore(ctx context.Context, spec runtime.Spec, dir string) (*runtime.Instance, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		return nil, fmt.Errorf("sim restore %s: %w", spec.ID, err)
	}
	if string(b) != spec.ID {
		return nil, fmt.Errorf("sim restore %s: checkpoint is of sandbox %q", spec.ID, b)
	}
	return d.start(spec)
}

func (d *Driver) setFrozen(id string, frozen bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	in, ok := d.insts[id]
	if !ok {
		return runtime.ErrNotFound
	}
	in.frozen = frozen
	return nil
}

// Freeze marks the instance frozen: its agent stops answering.
func (d *Driver) Freeze(ctx context.Context, id string) error { return d.setFrozen(id, true) }

// Thaw lets its agent answer again.
func (d *Driver) Thaw(ctx context.Context, id string) error { return d.setFrozen(id, false) }

// Destroy forgets the instance; unknown IDs are fine.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if in, ok := d.insts[id]; ok {
		delete(d.byTok, in.tokenHash)
		delete(d.insts, id)
	}
	return nil
}

// List returns every instance.
func (d *Driver) List(ctx context.Context) ([]runtime.Instance, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]runtime.Instance, 0, len(d.insts))
	for id, in := range d.insts {
		out = append(out, runtime.Instance{ID: id, Addr: d.addr, Frozen: in.frozen, RootFS: in.rootFS})
	}
	return out, nil
}

func (d *Driver) has(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.insts[id]
	return ok
}

// serveAgent is the fake agent of every instance: the bearer token says
// which instance a request is for, as each real agent only accepts its own.
func (d *Driver) serveAgent(w http.ResponseWriter, r *http.Request) {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	d.mu.Lock()
	id, ok := d.byTok[agentproto.TokenHashHex(tok)]
	var frozen bool
	if ok {
		frozen = d.insts[id].frozen
	}
	d.mu.Unlock()
	switch {
	case !ok:
		agentError(w, http.StatusUnauthorized, agentproto.CodeUnauthorized, "unknown token")
		return
	case frozen:
		// A real frozen agent accepts the connection and never answers.
		agentError(w, http.StatusServiceUnavailable, "frozen", "sim instance is frozen")
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == agentproto.PathHealth:
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(agentproto.Health{Pid: 1, UptimeMs: time.Since(d.born).Milliseconds(), Version: agentproto.Version})
	case r.Method == http.MethodPost && r.URL.Path == agentproto.PathQuiesce:
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPost && r.URL.Path == agentproto.PathToken:
		var req agentproto.TokenRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Token == "" {
			agentError(w, http.StatusBadRequest, "invalid_request", "want {\"token\":...}")
			return
		}
		d.mu.Lock()
		if in, ok := d.insts[id]; ok {
			delete(d.byTok, in.tokenHash)
			in.tokenHash = agentproto.TokenHashHex(req.Token)
			d.byTok[in.tokenHash] = id
		}
		d.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	default:
		agentError(w, http.StatusNotImplemented, "not_implemented", "the sim runtime runs no processes and has no files")
	}
}

func agentError(w http.ResponseWriter, status int, code, msg string) {
	var body agentproto.ErrorBody
	body.Error.Code, body.Error.Message = code, msg
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}
