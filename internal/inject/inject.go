// Package inject is the egress interceptor that puts bound secrets into
// requests: it terminates a sandbox's TLS toward a host one of its secrets
// names (with a certificate from the server's CA, which sandboxes trust),
// lets package secrets swap the stand-in token for the real credential,
// and forwards the request over TLS verified against the host's trust
// store. Every request carrying a token is audited.
package inject

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stasis-sandbox/stasis/internal/egress"
	"github.com/stasis-sandbox/stasis/internal/secrets"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// Config configures an Interceptor.
type Config struct {
	Secrets *secrets.Service
	CA      *CA
	// Roots verify upstream servers (the host's trust store, plus any
	// --egress-ca-file).
	Roots  *x509.CertPool
	Logger *slog.Logger
}

// Interceptor implements egress.Interceptor.
type Interceptor struct {
	cfg  Config
	wg   sync.WaitGroup // audit writes
	bufs *bufferPool
}

// New returns an interceptor.
func New(cfg Config) *Interceptor {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Interceptor{cfg: cfg, bufs: newBufferPool()}
}

// Intercepts reports whether a secret bound to the sandbox names host.
func (i *Interceptor) Intercepts(sandboxID, host string, dst netip.AddrPort) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ok, err := i.cfg.Secrets.Names(ctx, sandboxID, host)
	if err != nil {
		i.cfg.Logger.Warn("egress: secret bindings unavailable; not intercepting", "sandbox", sandboxID, "err", err)
	}
	return ok
}

// Serve terminates the sandbox's TLS and serves its HTTP requests.
func (i *Interceptor) Serve(ctx context.Context, c *egress.Conn) (sent, recv int64, err error) {
	cc := &countingConn{Conn: c.Client}
	leaf, err := i.cfg.CA.Leaf(c.Host)
	if err != nil {
		return 0, 0, fmt.Errorf("certificate for %s: %w", c.Host, err)
	}
	tc := tls.Server(cc, &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"h2", "http/1.1"},
		MinVersion: tls.VersionTLS12})
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		return cc.read.Load(), cc.written.Load(), fmt.Errorf("TLS handshake with the sandbox: %w", err)
	}
	up := newUpstream(c, i.cfg.Roots)
	defer up.close()
	authority := c.Host
	if c.Dst.Port() != 443 {
		authority = net.JoinHostPort(c.Host, strconv.Itoa(int(c.Dst.Port())))
	}
	h := &handler{i: i, conn: c, authority: authority, rp: &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "https", authority
			pr.Out.Host = pr.In.Host
		},
		Transport: up,
		// Streams (SSE, and any body of unknown length) are flushed chunk
		// by chunk whatever this says; a body of known length is flushed
		// at least this often rather than after every write.
		FlushInterval: 10 * time.Millisecond,
		BufferPool:    i.bufs,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			i.cfg.Logger.Debug("egress: upstream request failed", "sandbox", c.SandboxID, "host", c.Host, "err", err)
			refuse(w, http.StatusBadGateway, secrets.CodeUpstream, "the upstream server could not be reached over verified TLS")
		},
	}}
	ln := &oneConnListener{c: tc, done: make(chan struct{})}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: time.Minute, IdleTimeout: 5 * time.Minute,
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				ln.Close()
			}
		},
	}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	srv.Serve(ln)
	<-ln.done
	return cc.read.Load(), cc.written.Load(), nil
}

// upstream sends requests on to the secret's host. HTTP/1.1 by default:
// a large body costs the proxy about half the CPU it does over HTTP/2
// (measured: BenchmarkDownload), and every API a provider names speaks
// it. gRPC, which needs HTTP/2, goes over HTTP/2.
type upstream struct {
	h1, h2 *http.Transport
}

func newUpstream(c *egress.Conn, roots *x509.CertPool) *upstream {
	dial := func(protos ...string) func(ctx context.Context, _, _ string) (net.Conn, error) {
		return func(ctx context.Context, _, _ string) (net.Conn, error) {
			raw, err := c.Dial(ctx)
			if err != nil {
				return nil, err
			}
			u := tls.Client(raw, &tls.Config{ServerName: c.Host, RootCAs: roots, NextProtos: protos,
				MinVersion: tls.VersionTLS12})
			if err := u.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			return u, nil
		}
	}
	tr := func(protos ...string) *http.Transport {
		return &http.Transport{
			DialTLSContext:      dial(protos...),
			DisableCompression:  true,
			MaxIdleConnsPerHost: 8,
			IdleConnTimeout:     90 * time.Second,
			WriteBufferSize:     64 << 10,
			ReadBufferSize:      64 << 10,
		}
	}
	u := &upstream{h1: tr("http/1.1"), h2: tr("h2", "http/1.1")}
	u.h1.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // no HTTP/2
	u.h2.ForceAttemptHTTP2 = true
	return u
}

func (u *upstream) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return u.h2.RoundTrip(r)
	}
	return u.h1.RoundTrip(r)
}

func (u *upstream) close() {
	u.h1.CloseIdleConnections()
	u.h2.CloseIdleConnections()
}

// bufferPool holds the proxy's body copy buffers: larger than the default
// 32 KiB, for fewer writes (and HTTP/2 frames) per large body.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}}
}

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(x []byte) { b.p.Put(&x) }

// Wait returns when audit rows being written are written.
func (i *Interceptor) Wait() { i.wg.Wait() }

type handler struct {
	i         *Interceptor
	conn      *egress.Conn
	authority string
	rp        *httputil.ReverseProxy
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	out, err := h.i.cfg.Secrets.Resolve(r.Context(), h.conn.SandboxID, h.conn.Host, r.Header)
	if err != nil {
		h.i.cfg.Logger.Error("egress: resolving a secret", "sandbox", h.conn.SandboxID, "host", h.conn.Host, "err", err)
		refuse(w, http.StatusBadGateway, "secret_unavailable", "the secret for this request could not be read")
		return
	}
	if out.SecretID == "" {
		h.rp.ServeHTTP(w, r) // no token of this sandbox: passed on as it is
		return
	}
	ev := &store.SecretAuditEvent{SecretID: out.SecretID, SandboxID: h.conn.SandboxID, Time: start.UTC(),
		Method: r.Method, Host: h.conn.Host, Path: r.URL.Path}
	if out.Refuse != "" {
		refuse(w, http.StatusForbidden, out.Refuse, out.Message)
		ev.Status, ev.ErrorCode = http.StatusForbidden, &out.Refuse
		h.record(ev, start)
		return
	}
	if out.Mismatch {
		code := secrets.CodeHost
		ev.ErrorCode = &code
	}
	sw := &statusWriter{ResponseWriter: w}
	h.rp.ServeHTTP(sw, r)
	ev.Status = sw.status
	if sw.upstream {
		st := sw.status
		ev.UpstreamStatus = &st
	} else if ev.ErrorCode == nil {
		code := secrets.CodeUpstream
		ev.ErrorCode = &code
	}
	h.record(ev, start)
}

// record writes the audit row off the request path.
func (h *handler) record(ev *store.SecretAuditEvent, start time.Time) {
	ms := time.Since(start).Milliseconds()
	ev.LatencyMs = &ms
	h.i.wg.Add(1)
	go func() {
		defer h.i.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := h.i.cfg.Secrets.Record(ctx, ev); err != nil {
			h.i.cfg.Logger.Error("egress: writing a secret's audit row", "secret", ev.SecretID, "err", err)
		}
	}()
}

// refuse answers the sandbox itself, in the API's error envelope.
func refuse(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Stasis-Error", code)
	w.WriteHeader(status)
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	body.Error.Code, body.Error.Message = code, msg
	json.NewEncoder(w).Encode(body)
}

// statusWriter records the status written, and whether it came from
// upstream (the proxy's own errors set X-Stasis-Error).
type statusWriter struct {
	http.ResponseWriter
	status   int
	upstream bool
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
		s.upstream = s.Header().Get("X-Stasis-Error") == ""
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.WriteHeader(http.StatusOK)
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// countingConn counts the bytes read from and written to the sandbox.
type countingConn struct {
	net.Conn
	read, written atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// oneConnListener hands out one connection, then blocks until Close.
type oneConnListener struct {
	mu   sync.Mutex
	c    net.Conn
	done chan struct{}
	once sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.c
	l.c = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, errors.New("listener closed")
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return &net.TCPAddr{} }
