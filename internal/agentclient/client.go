// Package agentclient is stasisd's client for stasis-agent, the process
// inside every sandbox that runs commands and serves files. It speaks the
// protocol defined in internal/agentproto.
package agentclient

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// Client talks to one sandbox's agent. It is safe for concurrent use and keeps
// connections alive between requests.
type Client struct {
	addr   atomic.Pointer[string]
	token  atomic.Pointer[string]
	dialer *net.Dialer
	tr     *http.Transport
	hc     *http.Client
	warm   warmConns // for the next exec
}

// New returns a client for the agent at addr ("ip:port") using token.
func New(addr, token string) *Client {
	c := &Client{}
	c.addr.Store(&addr)
	c.token.Store(&token)
	c.dialer = &net.Dialer{Timeout: 10 * time.Second, KeepAliveConfig: agentproto.KeepAlive()}
	c.tr = &http.Transport{
		Proxy:               nil, // the agent is never behind a proxy
		DialContext:         c.dialer.DialContext,
		MaxIdleConns:        32,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     60 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		// Big buffers: every write into the sandbox's network stack is a
		// syscall gVisor intercepts, so 4 KiB chunks make file transfers slow.
		WriteBufferSize: 256 << 10,
		ReadBufferSize:  256 << 10,
	}
	c.hc = &http.Client{Transport: c.tr}
	return c
}

// SetAddr points the client at a new address (a restored sandbox may have
// one). Idle connections are dropped even if the address is unchanged: after
// a restore they are dead.
func (c *Client) SetAddr(addr string) {
	c.addr.Store(&addr)
	c.tr.CloseIdleConnections()
	c.warm.drop()
}

// SetToken changes the token the client presents.
func (c *Client) SetToken(token string) {
	c.token.Store(&token)
}

// CloseIdleConnections closes idle keep-alive connections, and the one
// dialed ahead for the next exec.
func (c *Client) CloseIdleConnections() {
	c.tr.CloseIdleConnections()
	c.warm.drop()
}

// Error is an error response from the agent.
type Error struct {
	Status  int    // HTTP status
	Code    string // agentproto.Code*
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("agent: %s (HTTP %d)", e.Code, e.Status)
	}
	return fmt.Sprintf("agent: %s: %s (HTTP %d)", e.Code, e.Message, e.Status)
}

// Sentinel errors, matched by errors.Is against an *Error.
var (
	ErrNotFound     = errors.New("agent: not found")
	ErrInvalidPath  = errors.New("agent: invalid path")
	ErrIsDir        = errors.New("agent: is a directory")
	ErrPermission   = errors.New("agent: permission denied")
	ErrNoSpace      = errors.New("agent: no space left")
	ErrUnauthorized = errors.New("agent: unauthorized")
)

// Is reports whether e is of the kind of the sentinel target.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Code == agentproto.CodeNotFound
	case ErrInvalidPath:
		return e.Code == agentproto.CodeInvalidPath
	case ErrIsDir:
		return e.Code == agentproto.CodeIsDirectory
	case ErrPermission:
		return e.Code == agentproto.CodePermissionDenied
	case ErrNoSpace:
		return e.Code == agentproto.CodeNoSpace
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized
	}
	return false
}

func (c *Client) url(path string, q url.Values) string {
	u := "http://" + *c.addr.Load() + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

func (c *Client) newRequest(ctx context.Context, method, path string, q url.Values, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+*c.token.Load())
	return req, nil
}

// do sends req and turns a non-2xx response into an *Error.
func (c *Client) do(req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent %s %s: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, decodeError(resp)
}

func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Status: resp.StatusCode}
	var body agentproto.ErrorBody
	if json.Unmarshal(b, &body) == nil && body.Error.Code != "" {
		e.Code, e.Message = body.Error.Code, body.Error.Message
	} else {
		e.Code = "http_" + fmt.Sprint(resp.StatusCode)
		e.Message = strings.TrimSpace(string(b))
	}
	if e.Status == http.StatusUnauthorized && e.Code == "" {
		e.Code = agentproto.CodeUnauthorized
	}
	return e
}

// discard drains (a little) and closes a response body so the connection can
// be reused.
func discard(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

func (c *Client) getJSON(ctx context.Context, path string, q url.Values, v any) error {
	req, err := c.newRequest(ctx, http.MethodGet, path, q, nil)
	if err != nil {
		return err
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer discard(resp)
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("agent GET %s: decode: %w", path, err)
	}
	return nil
}

// Health checks that the agent is up and accepts the token.
func (c *Client) Health(ctx context.Context) error {
	_, err := c.HealthInfo(ctx)
	return err
}

// HealthInfo is Health returning the agent's report.
func (c *Client) HealthInfo(ctx context.Context) (*agentproto.Health, error) {
	var h agentproto.Health
	if err := c.getJSON(ctx, agentproto.PathHealth, nil, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// readyPollInterval is WaitReady's pause between failed health checks, and
// readyAttemptTimeout bounds one check (a connect to an address that does not
// answer yet could otherwise hang for the kernel's SYN timeout).
const (
	readyPollInterval   = 2 * time.Millisecond
	readyAttemptTimeout = time.Second
)

// WaitReady polls Health until it succeeds or ctx is done. A wrong token ends
// the wait at once with ErrUnauthorized.
func (c *Client) WaitReady(ctx context.Context) error {
	return poll(ctx, c.Health)
}

// WaitListening polls until the agent accepts a TCP connection or ctx is
// done. Right after a restore that is the cheap readiness proof: the sandbox
// runs, its network is back, and so is the agent's listening socket (it
// closes with the agent). Health would also wait for the restored agent's
// first run inside gVisor, 7-15 ms more than later answers, which the first
// real request waits for anyway. The connection that proved it is kept for
// the next exec (see warmConns): closing it cost the restored agent an
// accept, a read and a close in its first run, and the first command a
// handshake of its own.
func (c *Client) WaitListening(ctx context.Context) error {
	return poll(ctx, func(ctx context.Context) error {
		addr := *c.addr.Load()
		conn, err := c.dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("agent %s: %w", addr, err)
		}
		c.warm.keep(conn, addr)
		return nil
	})
}

// poll runs check until it succeeds, fails with ErrUnauthorized, or ctx is done.
func poll(ctx context.Context, check func(context.Context) error) error {
	t := time.NewTimer(0)
	defer t.Stop()
	var last error
	for {
		select {
		case <-ctx.Done():
			if last == nil {
				return fmt.Errorf("agent not ready: %w", ctx.Err())
			}
			return fmt.Errorf("agent not ready: %w (last error: %v)", ctx.Err(), last)
		case <-t.C:
		}
		actx, cancel := context.WithTimeout(ctx, readyAttemptTimeout)
		last = check(actx)
		cancel()
		if last == nil || errors.Is(last, ErrUnauthorized) {
			return last
		}
		t.Reset(readyPollInterval)
	}
}

// RotateToken makes the agent accept newToken instead of the current token,
// then uses it.
func (c *Client) RotateToken(ctx context.Context, newToken string) error {
	if newToken == "" {
		return errors.New("agent: empty token")
	}
	b, err := json.Marshal(agentproto.TokenRequest{Token: newToken})
	if err != nil {
		return err
	}
	req, err := c.newRequest(ctx, http.MethodPost, agentproto.PathToken, nil, strings.NewReader(string(b)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header["X-Idempotency-Key"] = nil // replayable: setting a token twice is harmless
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	discard(resp)
	c.SetToken(newToken)
	return nil
}

// Quiesce tells the agent a checkpoint is next, so it drops what it can
// rebuild later (agentproto.PathQuiesce). It leaves no idle connection to
// the agent open, its own included: each is a socket and a goroutine with
// its buffers in the checkpoint, and after a restore from disk it is dead
// anyway. Requests and exec streams in progress are not touched.
func (c *Client) Quiesce(ctx context.Context) error {
	warm := c.warm.take(ctx, *c.addr.Load())
	c.CloseIdleConnections()
	newReq := func() (*http.Request, error) {
		req, err := c.newRequest(ctx, http.MethodPost, agentproto.PathQuiesce, nil, nil)
		if err != nil {
			return nil, err
		}
		req.Header["X-Idempotency-Key"] = nil // replayable
		req.Close = true
		return req, nil
	}
	if warm != nil {
		// The connection dialed ahead for the next exec carries it: the
		// agent has accepted that one already, so the pause does not wait
		// for a handshake through the sandbox's network stack. If the
		// agent closed it meanwhile, a new connection does (quiesce can be
		// repeated).
		req, err := newReq()
		if err != nil {
			warm.Close()
			return err
		}
		if err := quiesceOn(ctx, warm, req); err == nil || ctx.Err() != nil {
			return err
		}
	}
	req, err := newReq()
	if err != nil {
		return err
	}
	// The agent closes first after a Connection: close answer, so its end
	// would sit in TIME_WAIT in the sandbox's network stack and go into the
	// checkpoint that follows; a reset once the answer is read ends it.
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { resetOnClose(info.Conn) },
	}))
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	discard(resp)
	return nil
}

// quiesceOn sends the quiesce request req on conn, reads the answer and
// closes conn with a reset (see Quiesce).
func quiesceOn(ctx context.Context, conn net.Conn, req *http.Request) error {
	defer conn.Close()
	resetOnClose(conn)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("agent %s %s: %w", req.Method, req.URL.Path, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return fmt.Errorf("agent %s %s: %w", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeError(resp)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return nil
}

// resetOnClose makes closing conn send a reset instead of a FIN, for a
// connection whose exchange is over: the agent's end of it then closes at
// once instead of lingering in TIME_WAIT in the sandbox's network stack,
// where each such endpoint is saved and restored with every checkpoint.
func resetOnClose(conn any) {
	if tc, ok := conn.(interface{ SetLinger(int) error }); ok {
		tc.SetLinger(0)
	}
}

// FileInfo describes a file in the sandbox.
type FileInfo = agentproto.FileInfo

// Stat describes the file at path (following symlinks).
func (c *Client) Stat(ctx context.Context, path string) (*FileInfo, error) {
	var fi FileInfo
	if err := c.getJSON(ctx, agentproto.PathStat, url.Values{"path": {path}}, &fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

// ReadFile opens the file at path for reading. It returns the body, which the
// caller must close, and its size (-1 if the agent did not say).
func (c *Client) ReadFile(ctx context.Context, path string) (io.ReadCloser, int64, error) {
	req, err := c.newRequest(ctx, http.MethodGet, agentproto.PathFiles, url.Values{"path": {path}}, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, 0, err
	}
	return resp.Body, resp.ContentLength, nil
}

// ZipDir streams a zip archive of the directory at path; entry names start
// with the directory's base name. The caller must close the body. An error
// while the archive is being produced shows up as a read error.
func (c *Client) ZipDir(ctx context.Context, path string) (io.ReadCloser, error) {
	req, err := c.newRequest(ctx, http.MethodGet, agentproto.PathFiles, url.Values{"path": {path}, "format": {"zip"}}, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// WriteFile stores r's contents at path, creating parent directories. size is
// r's length, or -1 if unknown (the body is then sent chunked).
func (c *Client) WriteFile(ctx context.Context, path string, r io.Reader, size int64) error {
	if r == nil {
		r, size = http.NoBody, 0
	}
	body := io.NopCloser(r)
	req, err := c.newRequest(ctx, http.MethodPost, agentproto.PathFiles, url.Values{"path": {path}}, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.ContentLength = size
	if size == 0 {
		req.Body = http.NoBody
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer discard(resp)
	var res agentproto.WriteResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return fmt.Errorf("agent POST %s: decode: %w", agentproto.PathFiles, err)
	}
	if size >= 0 && res.Size != size {
		return fmt.Errorf("agent: wrote %d bytes of %d", res.Size, size)
	}
	return nil
}
