package agentclient

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// acceptCounter accepts connections on a loopback listener and counts them.
func acceptCounter(t *testing.T) (addr string, accepted *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted = new(atomic.Int32)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			t.Cleanup(func() { c.Close() })
		}
	}()
	return ln.Addr().String(), accepted
}

// A command sent before warmDelay has passed (back to back) cancels the
// dial ahead: it dials its own connection, and none is dialed beside it to
// compete with the agent's next spare shell.
func TestWarmDialCancelledByTake(t *testing.T) {
	addr, accepted := acceptCounter(t)
	var w warmConns
	t.Cleanup(w.drop)
	w.fill(&net.Dialer{}, addr)
	if conn := w.take(context.Background(), addr); conn != nil {
		t.Fatal("take returned a connection before warmDelay had passed")
	}
	time.Sleep(5 * warmDelay)
	if n := accepted.Load(); n != 0 {
		t.Fatalf("%d connections dialed after take cancelled the dial ahead", n)
	}

	// Uncancelled, the dial happens after the delay and take gets it.
	w.fill(&net.Dialer{}, addr)
	deadline := time.Now().Add(10 * time.Second)
	for accepted.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if accepted.Load() != 1 {
		t.Fatal("no connection dialed ahead after warmDelay")
	}
	for {
		w.mu.Lock()
		ready := w.conn != nil
		w.mu.Unlock()
		if ready || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	conn := w.take(context.Background(), addr)
	if conn == nil {
		t.Fatal("take did not return the connection dialed ahead")
	}
	conn.Close()
}

// Connections to the agent, warm ones included, are probed for keep-alive
// only after agentproto.KeepAlive's idle time: Go's default 15 s woke an
// idle sandbox between two health probes.
func TestDialKeepAlive(t *testing.T) {
	addr, _ := acceptCounter(t)
	c := New(addr, "token")
	conn, err := c.dialer.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var idle int
	var optErr error
	raw.Control(func(fd uintptr) { idle, optErr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE) })
	if want := int(agentproto.KeepAlive().Idle / time.Second); optErr != nil || idle != want {
		t.Fatalf("TCP_KEEPIDLE = %d s (%v), want %d s", idle, optErr, want)
	}
}
