package agent_test

import (
	"net"
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
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var on, idle int
	var optErr error
	raw.Control(func(fd uintptr) {
		if on, optErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE); optErr == nil {
			idle, optErr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		}
	})
	if optErr != nil {
		t.Fatal(optErr)
	}
	if want := int(agentproto.KeepAlive().Idle / time.Second); on == 0 || idle != want {
		t.Fatalf("accepted connection: SO_KEEPALIVE %d, TCP_KEEPIDLE %d s; want on, %d s", on, idle, want)
	}
}
