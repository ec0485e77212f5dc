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
	dialing bool
	gen     uint64 // bumped by drop, so that a dial in flight is discarded
}

// take returns the warm connection to addr if there is one and the agent
// has not closed it, else nil.
func (w *warmConns) take(addr string) net.Conn {
	w.mu.Lock()
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

// fill dials addr in the background unless a warm connection exists or is
// being dialed.
func (w *warmConns) fill(d *net.Dialer, addr string) {
	w.mu.Lock()
	if w.conn != nil || w.dialing {
		w.mu.Unlock()
		return
	}
	w.dialing = true
	gen := w.gen
	w.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), warmDialTimeout)
		conn, err := d.DialContext(ctx, "tcp", addr)
		cancel()
		w.mu.Lock()
		defer w.mu.Unlock()
		w.dialing = false
		if err != nil {
			return
		}
		if w.gen != gen || w.conn != nil {
			conn.Close()
			return
		}
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
	}()
}

// drop closes the warm connection and discards any being dialed.
func (w *warmConns) drop() {
	w.mu.Lock()
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
