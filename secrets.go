package stasis

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Auth types of a secret.
const (
	AuthBearer  = "bearer"  // Authorization: Bearer VALUE
	AuthBasic   = "basic"   // HTTP Basic, USERNAME:VALUE
	AuthAPIKey  = "api-key" // HEADER: PREFIX+VALUE
	AuthCustom  = "custom"  // header templates with {{ value }}
	AuthPerHost = "per_host"
)

// SecretAuthRule says how a secret's value is attached to a request.
type SecretAuthRule struct {
	Type     string            `json:"type"`
	Header   string            `json:"header,omitempty"`   // AuthAPIKey
	Prefix   string            `json:"prefix,omitempty"`   // AuthAPIKey, e.g. "Token "
	Username string            `json:"username,omitempty"` // AuthBasic (empty: the client's, else "x")
	Headers  map[string]string `json:"headers,omitempty"`  // AuthCustom
	Hosts    []string          `json:"hosts,omitempty"`    // a PerHost rule's hosts
}

// SecretAuth is one rule for every host, or per-host rules (the first
// whose Hosts match applies).
type SecretAuth struct {
	Rule    SecretAuthRule
	PerHost []SecretAuthRule
}

func (a SecretAuth) MarshalJSON() ([]byte, error) {
	if len(a.PerHost) > 0 {
		return json.Marshal(map[string]any{"per_host": a.PerHost})
	}
	return json.Marshal(a.Rule)
}

// SecretCreateOptions is a new secret: a Provider shortcut, or Auth and
// Hosts.
type SecretCreateOptions struct {
	Name     string
	Value    string // never returned by any call
	Provider string
	Auth     *SecretAuth
	Hosts    []string // names or *.domain wildcards
}

// SecretInfo describes a stored secret; it holds no value.
type SecretInfo struct {
	ID               string         `json:"id"`
	Name             string         `json:"name"`
	AuthType         string         `json:"auth_type"`
	AuthConfig       map[string]any `json:"auth_config"`
	ProviderShortcut string         `json:"provider_shortcut,omitempty"`
	Hosts            []string       `json:"hosts"`
	CreatedAt        time.Time      `json:"created_at"`
	UpdatedAt        time.Time      `json:"updated_at"`
	LastUsedAt       *time.Time     `json:"last_used_at,omitempty"`
}

func (s *SecretInfo) UnmarshalJSON(b []byte) error {
	type plain SecretInfo
	var w struct {
		plain
		ProviderShortcut *string `json:"provider_shortcut"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*s = SecretInfo(w.plain)
	if w.ProviderShortcut != nil {
		s.ProviderShortcut = *w.ProviderShortcut
	}
	return nil
}

// SecretBinding is a secret bound to a sandbox's environment variable.
type SecretBinding struct {
	EnvKey     string `json:"env_key"`
	SecretName string `json:"secret_name"`
	// Revoked: the secret was deleted; its stand-in no longer resolves.
	Revoked bool `json:"revoked,omitempty"`
}

// SecretSandbox is a sandbox a secret is bound to.
type SecretSandbox struct {
	SandboxID   string `json:"sandbox_id"`
	SandboxName string `json:"sandbox_name"`
	EnvKey      string `json:"env_key"`
	Status      Status `json:"status"`
}

// AuditEvent is one request a secret's stand-in token was sent with.
type AuditEvent struct {
	ID             int64     `json:"id"`
	Time           time.Time `json:"ts"`
	SandboxID      string    `json:"sandbox_id"`
	SandboxName    *string   `json:"sandbox_name"` // nil once the sandbox is deleted
	SecretID       string    `json:"secret_id"`
	Method         string    `json:"method"`
	Host           string    `json:"host"`
	Path           string    `json:"path"` // without the query string
	Status         int       `json:"status"`
	UpstreamStatus *int      `json:"upstream_status"` // nil when the proxy answered itself
	LatencyMs      *int64    `json:"latency_ms"`
	ErrorCode      *string   `json:"error_code"` // e.g. secret_revoked, secret_detached
}

// AuditOptions select audit events; zero fields do not filter.
type AuditOptions struct {
	Limit  int    // 1-200 (default 50)
	Before int64  // events older than this event id (the last one seen)
	Status string // "2xx", "3xx", "4xx", "5xx" or "errors"
}

// Provider is a built-in secret shortcut.
type Provider struct {
	Name       string         `json:"name"`
	Display    string         `json:"display"`
	AuthType   string         `json:"auth_type"`
	AuthConfig map[string]any `json:"auth_config"`
	Hosts      []string       `json:"hosts"`
	TokenShape string         `json:"token_shape"` // prefix of the stand-in tokens, e.g. "sk-ant-api03-..."
}

// Secrets manages stored credentials. A bound sandbox only ever sees a
// stand-in token; stasisd swaps in the real value on HTTPS requests to the
// secret's hosts.
type Secrets struct{ c *Client }

// Secrets returns the secrets API of the client.
func (c *Client) Secrets() *Secrets { return &Secrets{c: c} }

func secretPath(name string) string { return "/secrets/" + url.PathEscape(name) }

// Create stores a secret.
func (s *Secrets) Create(ctx context.Context, opts SecretCreateOptions) (*SecretInfo, error) {
	body := map[string]any{"name": opts.Name, "value": opts.Value}
	if opts.Provider != "" {
		body["provider"] = opts.Provider
	}
	if opts.Auth != nil {
		body["auth"] = opts.Auth
	}
	if opts.Hosts != nil {
		body["hosts"] = opts.Hosts
	}
	var out SecretInfo
	if err := s.c.doJSON(ctx, call{method: http.MethodPost, path: "/secrets", json: body}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// List returns the team's secrets.
func (s *Secrets) List(ctx context.Context) ([]SecretInfo, error) {
	var out []SecretInfo
	err := s.c.doJSON(ctx, call{method: http.MethodGet, path: "/secrets"}, &out)
	return out, err
}

// Get returns the secret called name.
func (s *Secrets) Get(ctx context.Context, name string) (*SecretInfo, error) {
	var out SecretInfo
	if err := s.c.doJSON(ctx, call{method: http.MethodGet, path: secretPath(name)}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Rotate replaces the secret's value; the next request injects it.
func (s *Secrets) Rotate(ctx context.Context, name, value string) (*SecretInfo, error) {
	var out SecretInfo
	if err := s.c.doJSON(ctx, call{method: http.MethodPatch, path: secretPath(name), json: map[string]string{"value": value}}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Delete deletes the secret, revoking it in every sandbox it is bound to.
func (s *Secrets) Delete(ctx context.Context, name string) error {
	return s.c.doJSON(ctx, call{method: http.MethodDelete, path: secretPath(name)}, nil)
}

// Audit returns requests made with the secret, newest first.
func (s *Secrets) Audit(ctx context.Context, name string, opts AuditOptions) ([]AuditEvent, error) {
	q := url.Values{}
	if opts.Limit != 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Before != 0 {
		q.Set("before", strconv.FormatInt(opts.Before, 10))
	}
	if opts.Status != "" {
		q.Set("status", opts.Status)
	}
	var out []AuditEvent
	err := s.c.doJSON(ctx, call{method: http.MethodGet, path: secretPath(name) + "/audit", query: q}, &out)
	return out, err
}

// Sandboxes returns the sandboxes the secret is bound to.
func (s *Secrets) Sandboxes(ctx context.Context, name string) ([]SecretSandbox, error) {
	var out []SecretSandbox
	err := s.c.doJSON(ctx, call{method: http.MethodGet, path: secretPath(name) + "/sandboxes"}, &out)
	return out, err
}

// Providers lists the built-in provider shortcuts.
func (c *Client) Providers(ctx context.Context) ([]Provider, error) {
	var out []Provider
	err := c.doJSON(ctx, call{method: http.MethodGet, path: "/providers"}, &out)
	return out, err
}

// AttachSecret binds a secret to an environment variable of the sandbox,
// for commands started from now on.
func (c *Client) AttachSecret(ctx context.Context, id, envKey, secretName string) error {
	if err := checkID(id); err != nil {
		return err
	}
	return c.doJSON(ctx, call{method: http.MethodPost, path: "/sandboxes/" + url.PathEscape(id) + "/secrets",
		json: map[string]string{"env_key": envKey, "secret_name": secretName}}, nil)
}

// DetachSecret removes a binding: its stand-in token stops working at once.
func (c *Client) DetachSecret(ctx context.Context, id, envKey string) error {
	if err := checkID(id); err != nil {
		return err
	}
	return c.doJSON(ctx, call{method: http.MethodDelete, path: "/sandboxes/" + url.PathEscape(id) + "/secrets/" + url.PathEscape(envKey)}, nil)
}

// AttachSecret is Client.AttachSecret for this sandbox.
func (s *Sandbox) AttachSecret(ctx context.Context, envKey, secretName string) error {
	return s.c.AttachSecret(ctx, s.ID, envKey, secretName)
}

// DetachSecret is Client.DetachSecret for this sandbox.
func (s *Sandbox) DetachSecret(ctx context.Context, envKey string) error {
	return s.c.DetachSecret(ctx, s.ID, envKey)
}
