package agentclient

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// warmMaxAge bounds how long a connection dialed ahead waits for its exec.
// The agent closes a connection that sends no request headers within its
// ReadHeaderTimeout (30 s, in every agent so far); well inside that, the
// connection is surely still open when used.
const warmMaxAge = 15 * time.Second

// warmDialTimeout bounds a dial ahead of need: it is never worth waiting for.
const warmDialTimeout = 2 * time.Second

// warmDelay is how long after a command the next exec's connection is
// dialed. As a command ends the agent starts its next spare shell (15-20 ms
// in gVisor), and a handshake and accept at that moment compete with it on
// the sandbox's one vCPU (the agent's spare took longer to start with the
// dial right after the command, on a host too loaded to tell by how much).
// A command sent within the delay, as back to back ones are, cancels the
// dial and dials its own, as it would have to anyway; one sent later finds
// the connection ready.
const warmDelay = 30 * time.Millisecond

// warmConns holds at most one connection to the agent dialed ahead of the
// next exec: an exec connection is upgraded and never reused, so without it
// every command would first wait for a TCP handshake through the sandbox's
// network stack and for the agent to accept. To the agent it is an ordinary
// connection whose request comes a little later, so old agents serve it.
type warmConns struct {
	mu      sync.Mutex
	conn    net.Conn
	addr    string
	expiry  *time.Timer
	pending *time.Timer   // a dial waiting out warmDelay; nil if none
	dialing chan struct{} // non-nil while a dial is in flight; closed after
	gen     uint64        // bumped by drop, so that a dial in flight is discarded
}

// take returns the warm connection to addr if there is one and the agent
// has not closed it, else nil. A dial in flight is waited for (until ctx
// ends): it is further along than a new one would be.
func (w *warmConns) take(ctx context.Context, addr string) net.Conn {
	w.mu.Lock()
	w.cancelPending()
	if ch := w.dialing; ch != nil {
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		w.mu.Lock()
	}
	conn, connAddr := w.conn, w.addr
	if conn != nil {
		w.conn = nil
		w.expiry.Stop()
	}
	w.mu.Unlock()
	if conn == nil {
		return nil
	}
	if connAddr != addr || !stillOpen(conn) {
		conn.Close()
		return nil
	}
	return conn
}

// fill dials addr in the background after warmDelay unless a warm
// connection exists, is being dialed or waits to be.
func (w *warmConns) fill(d *net.Dialer, addr string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn != nil || w.dialing != nil || w.pending != nil {
		return
	}
	var pending *time.Timer
	pending = time.AfterFunc(warmDelay, func() {
		w.mu.Lock()
		if w.pending != pending { // cancelled by take or drop
			w.mu.Unlock()
			return
		}
		w.pending = nil
		done := make(chan struct{})
		w.dialing = done
		gen := w.gen
		w.mu.Unlock()
		w.dial(d, addr, gen)
		close(done)
	})
	w.pending = pending
}

// cancelPending stops a dial waiting out warmDelay. Called with w.mu held.
func (w *warmConns) cancelPending() {
	if w.pending != nil {
		w.pending.Stop()
		w.pending = nil
	}
}

// dial dials addr and keeps the connection as the warm one, unless drop
// was called since gen was read or one is there already.
func (w *warmConns) dial(d *net.Dialer, addr string, gen uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), warmDialTimeout)
	conn, err := d.DialContext(ctx, "tcp", addr)
	cancel()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.dialing = nil
	if err != nil {
		return
	}
	if w.gen != gen || w.conn != nil {
		conn.Close()
		return
	}
	w.hold(conn, addr)
}

// keep makes conn, dialed to addr for another purpose and not used, the
// warm connection, unless there is one already or one is being dialed.
func (w *warmConns) keep(conn net.Conn, addr string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn != nil || w.dialing != nil {
		conn.Close()
		return
	}
	w.cancelPending()
	w.hold(conn, addr)
}

// hold makes conn the warm connection until warmMaxAge. Called with w.mu
// held and no warm connection.
func (w *warmConns) hold(conn net.Conn, addr string) {
	w.conn, w.addr = conn, addr
	w.expiry = time.AfterFunc(warmMaxAge, func() {
		w.mu.Lock()
		mine := w.conn == conn
		if mine {
			w.conn = nil
		}
		w.mu.Unlock()
		if mine {
			conn.Close()
		}
	})
}

// drop closes the warm connection and discards any being dialed or
// waiting to be.
func (w *warmConns) drop() {
	w.mu.Lock()
	w.cancelPending()
	conn := w.conn
	w.conn = nil
	w.gen++
	if conn != nil {
		w.expiry.Stop()
	}
	w.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
}

// stillOpen reports whether the peer has neither closed conn nor sent
// anything on it (an agent sends nothing before a request), without
// blocking.
func stillOpen(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	open := false
	var buf [1]byte
	cerr := rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		open = n < 0 && errors.Is(err, syscall.EAGAIN)
		return true // answered either way: never wait
	})
	return cerr == nil && open
}
