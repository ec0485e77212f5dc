package agent_test

import (
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// The agent's connections are probed for keep-alive only after
// agentproto.KeepAlive's idle time, not Go's default 15 s, which woke an
// idle sandbox between two health probes.
func TestListenKeepAlive(t *testing.T) {
	ln, err := agent.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	on := sockopt(t, conn.(*net.TCPConn), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
	idle := sockopt(t, conn.(*net.TCPConn), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
	if want := int(agentproto.KeepAlive().Idle / time.Second); on == 0 || idle != want {
		t.Fatalf("accepted connection: SO_KEEPALIVE %d, TCP_KEEPIDLE %d s; want on, %d s", on, idle, want)
	}
}

// The agent's listener is a plain TCP socket: Go would otherwise make it a
// Multipath TCP one where the kernel has it, and try that first in gVisor,
// which has not (a system call that every cold create waits for).
func TestListenPlainTCP(t *testing.T) {
	ln, err := agent.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if proto := sockopt(t, ln.(*net.TCPListener), unix.SOL_SOCKET, unix.SO_PROTOCOL); proto != unix.IPPROTO_TCP {
		t.Fatalf("listener protocol %d, want TCP (%d)", proto, unix.IPPROTO_TCP)
	}
}

// sockopt is the integer socket option level/opt of c's socket.
func sockopt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var optErr error
	if err := raw.Control(func(fd uintptr) { v, optErr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if optErr != nil {
		t.Fatal(optErr)
	}
	return v
}
