package stasis

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Version is the SDK version sent in the User-Agent header.
const Version = "0.1.0"

const (
	// DefaultURL is used when no URL is configured anywhere.
	DefaultURL = "http://127.0.0.1:8080"
	// DefaultMaxOutputBytes caps buffered command output (10 MiB).
	DefaultMaxOutputBytes = 10 << 20
	// DefaultMaxAttempts is how many times an idempotent request is tried.
	DefaultMaxAttempts = 3
	// DefaultRequestTimeout bounds one control-plane request.
	DefaultRequestTimeout = 2 * time.Minute

	envURL    = "STASIS_URL"
	envAPIKey = "STASIS_API_KEY"

	baseBackoff = 100 * time.Millisecond
	maxBackoff  = 30 * time.Second

	// execGrace is added to a command's timeout for the client-side
	// deadline, so the server's own timeout answers first.
	execGrace = 5 * time.Second
)

// Client talks to one stasisd. It is safe for concurrent use.
type Client struct {
	baseURL        string
	apiKey         string
	hc             *http.Client
	userAgent      string
	maxOutput      int64
	maxAttempts    int
	requestTimeout time.Duration
	previewDomain  string

	// sleep waits between retries; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error
}

// Option configures a Client.
type Option func(*options)

type options struct {
	baseURL         string
	apiKey          string
	hc              *http.Client
	userAgent       string
	maxOutput       int64
	maxAttempts     int
	requestTimeout  time.Duration
	credentialsFile *string
	previewDomain   string
}

// WithBaseURL sets the stasisd URL, e.g. "http://127.0.0.1:8080".
func WithBaseURL(u string) Option { return func(o *options) { o.baseURL = u } }

// WithAPIKey sets the API key sent as X-API-Key.
func WithAPIKey(key string) Option { return func(o *options) { o.apiKey = key } }

// WithHTTPClient sets the HTTP client (default: a client without a global
// timeout; deadlines come from contexts and per-call timeouts).
func WithHTTPClient(hc *http.Client) Option { return func(o *options) { o.hc = hc } }

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option { return func(o *options) { o.userAgent = ua } }

// WithMaxOutputBytes caps the output a buffered Commands.Run (or a
// session's collected Result) keeps in memory. Default 10 MiB.
func WithMaxOutputBytes(n int64) Option { return func(o *options) { o.maxOutput = n } }

// WithMaxAttempts sets how many times idempotent requests (GET, DELETE)
// are tried on 429/502/503/504 and network errors. 1 disables retries.
func WithMaxAttempts(n int) Option { return func(o *options) { o.maxAttempts = n } }

// WithRequestTimeout bounds each control-plane request (default 2 minutes).
// Command execution and file transfers are bounded by their context and
// their own timeouts instead.
func WithRequestTimeout(d time.Duration) Option { return func(o *options) { o.requestTimeout = d } }

// WithCredentialsFile overrides the credentials file consulted last
// (default $HOME/.config/stasis/credentials). An empty path disables it.
func WithCredentialsFile(path string) Option {
	return func(o *options) { o.credentialsFile = &path }
}

// DefaultCredentialsFile returns $HOME/.config/stasis/credentials, the file
// `make run` writes, or "" when there is no home directory.
func DefaultCredentialsFile() string {
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return ""
	}
	return filepath.Join(home, ".config", "stasis", "credentials")
}

// NewClient returns a Client. Each setting comes from the first source that
// has it: an Option, the environment (STASIS_URL, STASIS_API_KEY), then the
// credentials file (lines STASIS_URL=... and STASIS_API_KEY=...). The URL
// defaults to DefaultURL; a missing API key is an error matching ErrAuth.
func NewClient(opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	credPath := DefaultCredentialsFile()
	if o.credentialsFile != nil {
		credPath = *o.credentialsFile
	}
	// The credentials file is read only if something is still missing.
	var (
		creds    map[string]string
		credsErr error
		loaded   bool
	)
	pick := func(opt, env string) string {
		if opt != "" {
			return opt
		}
		if v := strings.TrimSpace(os.Getenv(env)); v != "" {
			return v
		}
		if credPath == "" {
			return ""
		}
		if !loaded {
			loaded = true
			creds, credsErr = readCredentials(credPath)
			if errors.Is(credsErr, os.ErrNotExist) {
				credsErr = nil
			}
		}
		return creds[env]
	}
	baseURL, apiKey := pick(o.baseURL, envURL), pick(o.apiKey, envAPIKey)
	if credsErr != nil {
		return nil, fmt.Errorf("stasis: reading credentials file: %w", credsErr)
	}
	c := &Client{
		baseURL:        baseURL,
		apiKey:         apiKey,
		hc:             o.hc,
		userAgent:      o.userAgent,
		maxOutput:      o.maxOutput,
		maxAttempts:    o.maxAttempts,
		requestTimeout: o.requestTimeout,
		previewDomain:  o.previewDomain,
		sleep:          sleepCtx,
	}
	if c.previewDomain == "" {
		c.previewDomain = DefaultPreviewDomain
	}
	if c.baseURL == "" {
		c.baseURL = DefaultURL
	}
	u, err := url.Parse(c.baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errorf(ErrValidation, "bad stasis URL %q: want http(s)://host[:port]", c.baseURL)
	}
	c.baseURL = strings.TrimRight(c.baseURL, "/")
	if c.apiKey == "" {
		where := "set STASIS_API_KEY"
		if credPath != "" {
			where += " or run `make run` (it writes " + credPath + ")"
		}
		return nil, errorf(ErrAuth, "no API key: %s", where)
	}
	if c.hc == nil {
		c.hc = &http.Client{}
	}
	if c.userAgent == "" {
		c.userAgent = "stasis-go/" + Version
	}
	if c.maxOutput <= 0 {
		c.maxOutput = DefaultMaxOutputBytes
	}
	if c.maxAttempts <= 0 {
		c.maxAttempts = DefaultMaxAttempts
	}
	if c.requestTimeout <= 0 {
		c.requestTimeout = DefaultRequestTimeout
	}
	return c, nil
}

// BaseURL returns the stasisd URL the client talks to.
func (c *Client) BaseURL() string { return c.baseURL }

// readCredentials parses KEY=VALUE lines; blank lines, # comments and an
// optional "export " prefix are allowed, values may be quoted.
func readCredentials(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		m[strings.TrimSpace(k)] = v
	}
	return m, sc.Err()
}

// ---------------------------------------------------------------------------
// HTTP core

// call describes one HTTP request.
type call struct {
	method  string
	path    string     // path below the base URL, e.g. "/sandboxes"
	query   url.Values // optional
	header  http.Header
	json    any       // JSON body, or
	body    io.Reader // a raw body (not replayable)
	ctype   string    // content type for body
	timeout time.Duration
	// dataPlane requests hand 401/403/503 to the token-refresh logic
	// instead of backing off on 503.
	dataPlane bool
}

func (cl *call) idempotent() bool {
	return cl.method == http.MethodGet || cl.method == http.MethodDelete
}

func retryableStatus(code int, dataPlane bool) bool {
	switch code {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusGatewayTimeout:
		return true
	case http.StatusServiceUnavailable:
		return !dataPlane
	}
	return false
}

// do sends cl and returns a 2xx response whose body the caller must close.
// Non-2xx answers become *APIError. Idempotent calls are retried with
// backoff on 429/502/503/504 and network errors, honouring Retry-After.
func (c *Client) do(ctx context.Context, cl call) (*http.Response, error) {
	var payload []byte
	if cl.json != nil {
		var err error
		if payload, err = json.Marshal(cl.json); err != nil {
			return nil, fmt.Errorf("stasis: encoding request: %w", err)
		}
	}
	u := c.baseURL + cl.path
	if len(cl.query) > 0 {
		u += "?" + cl.query.Encode()
	}
	attempts := 1
	if cl.idempotent() && cl.body == nil {
		attempts = c.maxAttempts
	}
	what := cl.method + " " + cl.path
	for attempt := 1; ; attempt++ {
		rctx, cancel := ctx, context.CancelFunc(func() {})
		if cl.timeout > 0 {
			rctx, cancel = context.WithTimeout(ctx, cl.timeout)
		}
		var body io.Reader
		switch {
		case payload != nil:
			body = bytes.NewReader(payload)
		case cl.body != nil:
			body = cl.body
		}
		req, err := http.NewRequestWithContext(rctx, cl.method, u, body)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("stasis: %s: %w", what, err)
		}
		for k, vs := range cl.header {
			req.Header[k] = vs
		}
		req.Header.Set("User-Agent", c.userAgent)
		if !cl.dataPlane { // the data plane authenticates with the access token
			req.Header.Set("X-API-Key", c.apiKey)
		}
		if payload != nil {
			req.Header.Set("Content-Type", "application/json")
		} else if cl.body != nil {
			ct := cl.ctype
			if ct == "" {
				ct = "application/octet-stream"
			}
			req.Header.Set("Content-Type", ct)
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			rerr := rctx.Err()
			cancel()
			if ctx.Err() != nil || rerr != nil {
				return nil, ctxError(what, err, ctx, rerr)
			}
			if attempt < attempts {
				if serr := c.sleep(ctx, backoff(attempt)); serr != nil {
					return nil, ctxError(what, serr, ctx, nil)
				}
				continue
			}
			return nil, fmt.Errorf("stasis: %s: %w", what, err)
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
			return resp, nil
		}
		apiErr := apiErrorFrom(resp)
		resp.Body.Close()
		cancel()
		if attempt < attempts && retryableStatus(resp.StatusCode, cl.dataPlane) {
			d := backoff(attempt)
			if resp.StatusCode == http.StatusTooManyRequests {
				if ra, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
					d = ra
				}
			}
			if serr := c.sleep(ctx, d); serr != nil {
				return nil, ctxError(what, serr, ctx, nil)
			}
			continue
		}
		return nil, apiErr
	}
}

// doJSON sends cl and decodes a JSON answer into out (when non-nil).
func (c *Client) doJSON(ctx context.Context, cl call, out any) error {
	if cl.timeout == 0 {
		cl.timeout = c.requestTimeout
	}
	resp, err := c.do(ctx, cl)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		if ctx.Err() != nil {
			return ctxError(cl.method+" "+cl.path, err, ctx, nil)
		}
		return fmt.Errorf("stasis: %s %s: decoding response: %w", cl.method, cl.path, err)
	}
	return nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// ctxError turns a failure caused by a context into ErrTimeout (deadline)
// or a wrapped context.Canceled.
func ctxError(what string, err error, ctx context.Context, inner error) error {
	cause := ctx.Err()
	if cause == nil {
		cause = inner
	}
	if cause == nil {
		cause = err
	}
	if errors.Is(cause, context.DeadlineExceeded) {
		return timeoutError(what, cause)
	}
	if errors.Is(cause, context.Canceled) {
		return fmt.Errorf("stasis: %s: %w", what, context.Canceled)
	}
	return fmt.Errorf("stasis: %s: %w", what, err)
}

func backoff(attempt int) time.Duration {
	d := baseBackoff << (attempt - 1)
	if d <= 0 || d > maxBackoff {
		d = maxBackoff
	}
	jitter := 0.8 + 0.4*rand.Float64()
	d = time.Duration(float64(d) * jitter)
	return min(d, maxBackoff)
}

// parseRetryAfter reads delta-seconds or an HTTP date, capped at maxBackoff.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		return min(time.Duration(n*float64(time.Second)), maxBackoff), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), maxBackoff), true
	}
	return 0, false
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ---------------------------------------------------------------------------
// Control plane

// CreateOptions describes a new sandbox.
type CreateOptions struct {
	// Name is a human-readable name (not unique). Empty lets the server
	// pick one.
	Name string
	// Template names the template to boot from: a built-in such as
	// "stasis/minimal" or a user template's name or id (see
	// Client.CreateTemplate). Empty uses the server's default.
	Template string
	// Snapshot boots from a saved snapshot's id (see Sandbox.SaveSnapshot)
	// instead of a template.
	Snapshot string
	// Timeout pauses the sandbox automatically after this much active time,
	// counted from creation and again from every resume, busy or not
	// (rounded up to whole seconds). Zero uses the server's default.
	Timeout time.Duration
	// AutoDelete deletes the sandbox this long after it was paused (rounded
	// up to whole seconds). Zero means never.
	AutoDelete time.Duration
	// Metadata is free-form key/value labels; List can filter on them.
	Metadata map[string]string
	// EnvVars are set for every command run in the sandbox.
	EnvVars map[string]string
	// Network sets the sandbox's egress rules; nil keeps the server's
	// defaults (or a snapshot's rules).
	Network *Network
	// PrivatePreview makes the sandbox's preview URLs need its access
	// token (a stasis extension).
	PrivatePreview bool
	// Secrets binds stored secrets to environment variables (env var →
	// secret name): the sandbox sees stand-in tokens, the real values are
	// swapped in at egress (see Secrets).
	Secrets map[string]string
}

func seconds(d time.Duration) int {
	s := int(d / time.Second)
	if d%time.Second != 0 {
		s++
	}
	return s
}

// Create boots a sandbox and returns it once it is active.
func (c *Client) Create(ctx context.Context, opts CreateOptions) (*Sandbox, error) {
	body := map[string]any{}
	if opts.Name != "" { // the server names unnamed sandboxes
		body["name"] = opts.Name
	}
	if opts.Template != "" {
		body["from_template"] = opts.Template
	}
	if opts.Snapshot != "" {
		body["from_snapshot"] = opts.Snapshot
	}
	if opts.Timeout < 0 || opts.AutoDelete < 0 {
		return nil, errorf(ErrValidation, "negative timeout or auto-delete")
	}
	if opts.Timeout > 0 {
		body["timeout_seconds"] = seconds(opts.Timeout)
	}
	if opts.AutoDelete > 0 {
		body["auto_delete_seconds"] = seconds(opts.AutoDelete)
	}
	if opts.Metadata != nil {
		body["metadata"] = opts.Metadata
	}
	if opts.EnvVars != nil {
		body["env_vars"] = opts.EnvVars
	}
	if len(opts.Secrets) > 0 {
		body["secrets"] = opts.Secrets
	}
	if opts.Network != nil {
		body["network"] = opts.Network.wire()
	}
	if opts.PrivatePreview {
		body["preview_private"] = true
	}
	var w sandboxWire
	if err := c.doJSON(ctx, call{method: http.MethodPost, path: "/sandboxes", json: body}, &w); err != nil {
		return nil, err
	}
	return c.newSandbox(w, "POST /sandboxes")
}

// Connect attaches to an existing sandbox by id. It calls activate, so the
// returned sandbox is active (a paused one is resumed) with a fresh token.
func (c *Client) Connect(ctx context.Context, id string) (*Sandbox, error) {
	w, err := c.postToken(ctx, id, "activate")
	if err != nil {
		return nil, err
	}
	return c.newSandbox(w, "POST /sandboxes/{id}/activate")
}

// ListOptions filters List.
type ListOptions struct {
	// Metadata keeps only sandboxes whose metadata has all these pairs.
	Metadata map[string]string
}

// List returns the sandboxes visible to the API key. opts may be nil.
func (c *Client) List(ctx context.Context, opts *ListOptions) ([]SandboxInfo, error) {
	q := url.Values{}
	if opts != nil {
		for k, v := range opts.Metadata {
			q.Set("metadata."+k, v)
		}
	}
	var out []SandboxInfo
	if err := c.doJSON(ctx, call{method: http.MethodGet, path: "/sandboxes", query: q}, &out); err != nil {
		return nil, err
	}
	if out == nil {
		out = []SandboxInfo{}
	}
	return out, nil
}

// Get returns a sandbox's current info without activating it.
func (c *Client) Get(ctx context.Context, id string) (*SandboxInfo, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	var info SandboxInfo
	if err := c.doJSON(ctx, call{method: http.MethodGet, path: "/sandboxes/" + url.PathEscape(id)}, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// KillByID deletes a sandbox by id. It is idempotent: deleting a sandbox
// that is already gone (404) succeeds.
func (c *Client) KillByID(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	err := c.doJSON(ctx, call{method: http.MethodDelete, path: "/sandboxes/" + url.PathEscape(id)}, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// UpdateOptions changes a sandbox. Zero fields are left unchanged.
type UpdateOptions struct {
	// Metadata replaces the sandbox's metadata when non-nil.
	Metadata map[string]string
	// Timeout sets the timeout: the active time after which the sandbox is
	// paused (rounded up to whole seconds).
	Timeout time.Duration
	// ClearTimeout removes the timeout.
	ClearTimeout bool
	// AutoDelete sets the delete-after-pause window; on a paused sandbox
	// it counts from now.
	AutoDelete time.Duration
	// ClearAutoDelete removes the auto-delete window.
	ClearAutoDelete bool
	// Network replaces the sandbox's egress rules (both lists) when
	// non-nil; the sandbox must be active. It applies to new connections
	// at once.
	Network *Network
}

func (o UpdateOptions) body() (map[string]any, error) {
	b := map[string]any{}
	if o.Metadata != nil {
		b["metadata"] = o.Metadata
	}
	switch {
	case o.Timeout < 0 || o.AutoDelete < 0:
		return nil, errorf(ErrValidation, "negative timeout or auto-delete")
	case o.ClearTimeout && o.Timeout != 0, o.ClearAutoDelete && o.AutoDelete != 0:
		return nil, errorf(ErrValidation, "both setting and clearing a value")
	}
	if o.ClearTimeout {
		b["timeout_seconds"] = nil
	} else if o.Timeout > 0 {
		b["timeout_seconds"] = seconds(o.Timeout)
	}
	if o.ClearAutoDelete {
		b["auto_delete_seconds"] = nil
	} else if o.AutoDelete > 0 {
		b["auto_delete_seconds"] = seconds(o.AutoDelete)
	}
	if o.Network != nil {
		b["network"] = o.Network.wire()
	}
	return b, nil
}

// UpdateByID changes a sandbox by id without activating it: a paused
// sandbox stays paused. Applying the same update twice is harmless.
func (c *Client) UpdateByID(ctx context.Context, id string, opts UpdateOptions) error {
	_, err := c.update(ctx, id, opts)
	return err
}

func (c *Client) update(ctx context.Context, id string, opts UpdateOptions) (*SandboxInfo, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	b, err := opts.body()
	if err != nil {
		return nil, err
	}
	var raw json.RawMessage
	if err := c.doJSON(ctx, call{method: http.MethodPatch, path: "/sandboxes/" + url.PathEscape(id), json: b}, &raw); err != nil {
		return nil, err
	}
	var info SandboxInfo
	if len(bytes.TrimSpace(raw)) == 0 || json.Unmarshal(raw, &info) != nil || info.ID == "" {
		return nil, nil
	}
	return &info, nil
}

// PauseByID checkpoints a sandbox to disk and returns its new info.
func (c *Client) PauseByID(ctx context.Context, id string) (*SandboxInfo, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	var info SandboxInfo
	if err := c.doJSON(ctx, call{method: http.MethodPost, path: "/sandboxes/" + url.PathEscape(id) + "/pause"}, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// ResumeByID restores a paused sandbox and returns it, holding the fresh
// access token the resume issued.
func (c *Client) ResumeByID(ctx context.Context, id string) (*Sandbox, error) {
	w, err := c.postToken(ctx, id, "resume")
	if err != nil {
		return nil, err
	}
	return c.newSandbox(w, "POST /sandboxes/{id}/resume")
}

// postToken POSTs a token-issuing endpoint (resume or activate).
func (c *Client) postToken(ctx context.Context, id, action string) (sandboxWire, error) {
	var w sandboxWire
	if err := checkID(id); err != nil {
		return w, err
	}
	err := c.doJSON(ctx, call{method: http.MethodPost, path: "/sandboxes/" + url.PathEscape(id) + "/" + action}, &w)
	if err == nil && w.AccessToken == "" {
		err = fmt.Errorf("stasis: POST /sandboxes/%s/%s: response has no access_token", id, action)
	}
	return w, err
}

func checkID(id string) error {
	if id == "" || strings.ContainsAny(id, "/?#") {
		return errorf(ErrValidation, "bad sandbox id %q", id)
	}
	return nil
}
