package stasis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Status is a sandbox's lifecycle state.
type Status string

// Sandbox statuses. A sandbox is active or paused most of the time; the
// -ing states are transitions, failed means it could not boot or resume.
const (
	StatusStarting Status = "starting"
	StatusActive   Status = "active"
	StatusPausing  Status = "pausing"
	StatusPaused   Status = "paused"
	StatusResuming Status = "resuming"
	StatusFailed   Status = "failed"
)

// SandboxInfo describes a sandbox as the control plane reports it. It
// marshals to and from the wire JSON (snake_case, seconds).
type SandboxInfo struct {
	ID        string
	Name      string
	Status    Status
	VCPUCount int
	MemoryMiB int
	CreatedAt time.Time
	// Timeout is the active time after which the sandbox is paused
	// (counted again from every resume); zero when none is set.
	Timeout time.Duration
	// AutoDelete is how long after pausing the sandbox is deleted; zero
	// when none is set.
	AutoDelete time.Duration
	// AutoDeleteAt is when a paused sandbox will be deleted; zero if not
	// scheduled.
	AutoDeleteAt time.Time
	Metadata     map[string]string
	// Template is the template the sandbox was created from, if known.
	Template string
	// Network is the sandbox's egress rules (empty lists: the server's
	// defaults).
	Network Network
	// Secrets are the secrets bound to the sandbox's environment.
	Secrets []SecretBinding
}

// sandboxWire is the JSON shape of a sandbox on the wire.
type sandboxWire struct {
	ID                string            `json:"id"`
	Name              string            `json:"name"`
	Status            Status            `json:"status"`
	VCPUCount         int               `json:"vcpu_count"`
	MemoryMiB         int               `json:"memory_mib"`
	CreatedAt         time.Time         `json:"created_at"`
	TimeoutSeconds    *int              `json:"timeout_seconds,omitempty"`
	AutoDeleteSeconds *int              `json:"auto_delete_seconds,omitempty"`
	AutoDeleteAt      *time.Time        `json:"auto_delete_at,omitempty"`
	Metadata          map[string]string `json:"metadata"`
	Template          json.RawMessage   `json:"template,omitempty"`
	AccessToken       string            `json:"access_token,omitempty"`
	Network           *networkWire      `json:"network,omitempty"`
	Secrets           []SecretBinding   `json:"secrets,omitempty"`
}

func (w sandboxWire) info() SandboxInfo {
	in := SandboxInfo{
		ID:        w.ID,
		Name:      w.Name,
		Status:    w.Status,
		VCPUCount: w.VCPUCount,
		MemoryMiB: w.MemoryMiB,
		CreatedAt: w.CreatedAt,
		Metadata:  w.Metadata,
		Secrets:   w.Secrets,
	}
	if in.Metadata == nil {
		in.Metadata = map[string]string{}
	}
	if w.Network != nil {
		in.Network = Network{AllowOut: w.Network.AllowOut, DenyOut: w.Network.DenyOut}
	}
	if w.TimeoutSeconds != nil {
		in.Timeout = time.Duration(*w.TimeoutSeconds) * time.Second
	}
	if w.AutoDeleteSeconds != nil {
		in.AutoDelete = time.Duration(*w.AutoDeleteSeconds) * time.Second
	}
	if w.AutoDeleteAt != nil {
		in.AutoDeleteAt = *w.AutoDeleteAt
	}
	// The template may be a name or an object naming it.
	if len(w.Template) > 0 {
		var s string
		if json.Unmarshal(w.Template, &s) == nil {
			in.Template = s
		} else {
			var o struct{ Name, ID string }
			if json.Unmarshal(w.Template, &o) == nil {
				in.Template = o.Name
				if in.Template == "" {
					in.Template = o.ID
				}
			}
		}
	}
	return in
}

// MarshalJSON encodes the wire form.
func (s SandboxInfo) MarshalJSON() ([]byte, error) {
	w := sandboxWire{
		ID: s.ID, Name: s.Name, Status: s.Status, VCPUCount: s.VCPUCount,
		MemoryMiB: s.MemoryMiB, CreatedAt: s.CreatedAt, Metadata: s.Metadata, Secrets: s.Secrets,
	}
	if w.Metadata == nil {
		w.Metadata = map[string]string{}
	}
	if s.Timeout > 0 {
		n := seconds(s.Timeout)
		w.TimeoutSeconds = &n
	}
	if s.AutoDelete > 0 {
		n := seconds(s.AutoDelete)
		w.AutoDeleteSeconds = &n
	}
	if !s.AutoDeleteAt.IsZero() {
		t := s.AutoDeleteAt
		w.AutoDeleteAt = &t
	}
	if s.Template != "" {
		w.Template, _ = json.Marshal(s.Template)
	}
	if len(s.Network.AllowOut)+len(s.Network.DenyOut) > 0 {
		w.Network = s.Network.wire()
	}
	return json.Marshal(w)
}

// UnmarshalJSON decodes the wire form.
func (s *SandboxInfo) UnmarshalJSON(b []byte) error {
	var w sandboxWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*s = w.info()
	return nil
}

// Sandbox is a handle on one sandbox, holding its data-plane access token.
// Get one from Client.Create, Client.Connect or Client.ResumeByID. It is
// safe for concurrent use.
type Sandbox struct {
	// ID is the sandbox's id.
	ID string
	// Name is the sandbox's name.
	Name string
	// Commands runs processes in the sandbox.
	Commands *Commands
	// Files reads and writes the sandbox's filesystem.
	Files *Files

	c *Client

	mu     sync.Mutex
	token  string
	info   SandboxInfo
	flight *refreshFlight
}

type refreshFlight struct {
	done  chan struct{}
	token string
	err   error
}

func (c *Client) newSandbox(w sandboxWire, what string) (*Sandbox, error) {
	if w.ID == "" {
		return nil, fmt.Errorf("stasis: %s: response has no sandbox id", what)
	}
	if w.AccessToken == "" {
		return nil, fmt.Errorf("stasis: %s: response has no access_token", what)
	}
	s := &Sandbox{ID: w.ID, Name: w.Name, c: c, token: w.AccessToken, info: w.info()}
	s.Commands = &Commands{s: s}
	s.Files = &Files{s: s}
	return s, nil
}

// Snapshot returns the sandbox info from the last control-plane answer this
// handle saw (create, connect, resume, pause, token refresh); it makes no
// request. Use Info for the current state.
func (s *Sandbox) Snapshot() SandboxInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

func (s *Sandbox) setInfo(in SandboxInfo) {
	s.mu.Lock()
	s.info = in
	s.mu.Unlock()
}

// Info fetches the sandbox's current info.
func (s *Sandbox) Info(ctx context.Context) (*SandboxInfo, error) {
	in, err := s.c.Get(ctx, s.ID)
	if err == nil {
		s.setInfo(*in)
	}
	return in, err
}

// Pause checkpoints the sandbox (memory, processes, filesystem) to disk.
// Running processes continue where they left off on resume.
func (s *Sandbox) Pause(ctx context.Context) error {
	in, err := s.c.PauseByID(ctx, s.ID)
	if err == nil {
		s.setInfo(*in)
	}
	return err
}

// Resume restores a paused sandbox. The access token rotates; Commands and
// Files pick up the new one.
func (s *Sandbox) Resume(ctx context.Context) error {
	w, err := s.c.postToken(ctx, s.ID, "resume")
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.token = w.AccessToken
	s.info = w.info()
	s.mu.Unlock()
	return nil
}

// Kill deletes the sandbox. It is idempotent.
func (s *Sandbox) Kill(ctx context.Context) error {
	return s.c.KillByID(ctx, s.ID)
}

// Update changes the sandbox's metadata, timeout or auto-delete window.
func (s *Sandbox) Update(ctx context.Context, opts UpdateOptions) error {
	in, err := s.c.update(ctx, s.ID, opts)
	if err == nil && in != nil {
		s.setInfo(*in)
	}
	return err
}

// ---------------------------------------------------------------------------
// Data-plane plumbing: access tokens.

func (s *Sandbox) accessToken() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.token
}

// needsRefresh reports whether a data-plane failure may be cured by
// activating the sandbox: a stale token (401) or a sandbox that is not
// running (503). A 403 is not: stasisd uses it for file permissions.
func needsRefresh(err error) bool {
	var ae *APIError
	if !errors.As(err, &ae) {
		return false
	}
	switch ae.StatusCode {
	case http.StatusUnauthorized, http.StatusServiceUnavailable:
		return true
	}
	return false
}

// refresh replaces the stale token by calling activate. Concurrent callers
// share one activate; a caller whose stale token was already replaced gets
// the new one without another activate.
func (s *Sandbox) refresh(ctx context.Context, stale string) (string, error) {
	s.mu.Lock()
	if s.token != stale {
		t := s.token
		s.mu.Unlock()
		return t, nil
	}
	f := s.flight
	if f == nil {
		f = &refreshFlight{done: make(chan struct{})}
		s.flight = f
		// Detached from ctx so one impatient caller does not fail the
		// others; bounded by the request timeout.
		actx := context.WithoutCancel(ctx)
		go func() {
			w, err := s.c.postToken(actx, s.ID, "activate")
			s.mu.Lock()
			if err == nil {
				s.token = w.AccessToken
				s.info = w.info()
			}
			f.token, f.err = s.token, err
			s.flight = nil
			s.mu.Unlock()
			close(f.done)
		}()
	}
	s.mu.Unlock()
	select {
	case <-f.done:
		return f.token, f.err
	case <-ctx.Done():
		return "", ctxError("activate", ctx.Err(), ctx, nil)
	}
}

// withToken runs send with the current token; if it fails in a way
// activation may cure, it activates once and retries once.
func (s *Sandbox) withToken(ctx context.Context, send func(token string) error) error {
	tok := s.accessToken()
	err := send(tok)
	if !needsRefresh(err) || ctx.Err() != nil {
		return err
	}
	fresh, rerr := s.refresh(ctx, tok)
	if rerr != nil {
		return fmt.Errorf("%w (activating sandbox %s to retry: %w)", err, s.ID, rerr)
	}
	return send(fresh)
}

// dataCall returns a data-plane call for this sandbox.
func (s *Sandbox) dataCall(method, path string, q url.Values, token string) call {
	return call{
		method: method,
		path:   path,
		query:  q,
		header: http.Header{
			"X-Superserve-Sandbox-Id": {s.ID},
			"X-Access-Token":          {token},
		},
		dataPlane: true,
	}
}
