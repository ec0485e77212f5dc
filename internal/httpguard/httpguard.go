// Package httpguard keeps clients from holding an HTTP server's connections
// without using them: a request body that stops sending is cut off after an
// idle time (a progress deadline, so a large upload that keeps flowing is
// never cut), and connections that have not made an authenticated request
// are bounded in number; more are answered 503 and closed.
//
// Wire a Guard into an http.Server with Serve; handlers call Authenticated
// once a request proved who it is.
package httpguard

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Config sets the limits. Zero values turn a limit off.
type Config struct {
	// MaxUnauthenticated bounds the connections that have not yet made an
	// authenticated request (waiting for headers, sending a body before
	// auth, or holding an unauthenticated keep-alive).
	MaxUnauthenticated int
	// BodyIdle is how long a request body may send nothing before the
	// request is cut off and its connection closed.
	BodyIdle time.Duration
}

// Guard enforces a Config on one server.
type Guard struct {
	cfg     Config
	pending atomic.Int64 // connections counted against MaxUnauthenticated
	conns   sync.Map     // net.Conn -> *conn, for the server's hooks
}

// conn is a connection's standing: counted while it has not authenticated.
type conn struct {
	g       *Guard
	counted atomic.Bool
}

// uncount stops counting c (once).
func (c *conn) uncount() {
	if c.counted.CompareAndSwap(true, false) {
		c.g.pending.Add(-1)
	}
}

type ctxKey struct{}

// New returns a guard with cfg's limits.
func New(cfg Config) *Guard { return &Guard{cfg: cfg} }

// Pending is how many connections have not (yet) authenticated.
func (g *Guard) Pending() int { return int(g.pending.Load()) }

// Serve runs srv on ln under the guard's limits: it installs the server's
// ConnContext and ConnState hooks and wraps its handler.
func (g *Guard) Serve(srv *http.Server, ln net.Listener) error {
	srv.ConnContext = g.connContext
	srv.ConnState = g.connState
	srv.Handler = g.handler(srv.Handler)
	return srv.Serve(&listener{Listener: ln, g: g})
}

// Authenticated records that the request's connection proved who it is:
// it no longer counts as unauthenticated. Requests not served through a
// Guard are ignored.
func Authenticated(ctx context.Context) {
	if c, ok := ctx.Value(ctxKey{}).(*conn); ok {
		c.uncount()
	}
}

func (g *Guard) connContext(ctx context.Context, nc net.Conn) context.Context {
	if c, ok := g.conns.Load(nc); ok {
		return context.WithValue(ctx, ctxKey{}, c)
	}
	return ctx
}

func (g *Guard) connState(nc net.Conn, state http.ConnState) {
	if state == http.StateClosed || state == http.StateHijacked {
		if c, ok := g.conns.LoadAndDelete(nc); ok {
			c.(*conn).uncount()
		}
	}
}

// listener refuses connections beyond MaxUnauthenticated before the server
// sees them.
type listener struct {
	net.Listener
	g *Guard
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		max := int64(l.g.cfg.MaxUnauthenticated)
		if max > 0 && l.g.pending.Add(1) > max {
			l.g.pending.Add(-1)
			go refuse(nc)
			continue
		}
		c := &conn{g: l.g}
		c.counted.Store(max > 0)
		l.g.conns.Store(nc, c)
		return nc, nil
	}
}

// busyBody is the 503 answer of a refused connection, in stasis's error
// envelope.
const busyBody = `{"error":{"code":"server_busy","message":"too many connections are waiting without having authenticated; retry shortly"}}` + "\n"

// refuse answers 503 on a connection the server will not serve, and closes
// it without resetting it: the write side first, then, after a short wait
// for the client to read the answer, the rest.
func refuse(nc net.Conn) {
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(nc, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(busyBody), busyBody)
	if cw, ok := nc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		io.Copy(io.Discard, io.LimitReader(nc, 64<<10))
	}
}

// handler cuts off request bodies that stall for BodyIdle.
func (g *Guard) handler(h http.Handler) http.Handler {
	if g.cfg.BodyIdle <= 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			rc := http.NewResponseController(w)
			// Also bounds a body the handler never reads, which the server
			// reads (to discard it) after the handler returns.
			if rc.SetReadDeadline(time.Now().Add(g.cfg.BodyIdle)) == nil {
				// A copy: the server looks at the original request's body
				// after the handler (100-continue, draining) by its type.
				r = r.WithContext(r.Context())
				r.Body = &idleBody{ReadCloser: r.Body, rc: rc, idle: g.cfg.BodyIdle}
			}
		}
		h.ServeHTTP(w, r)
	})
}

// idleBody moves the connection's read deadline forward at every read, so
// a body may take as long as it likes while bytes keep arriving.
type idleBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
	done bool
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.done {
		return b.ReadCloser.Read(p)
	}
	b.rc.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		// The body is over: what reads the connection next (the server
		// watching for the client going away during a long answer) must
		// not inherit the deadline. After any other error the deadline
		// stays, so the server's drain of the rest fails fast too.
		b.done = true
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}
