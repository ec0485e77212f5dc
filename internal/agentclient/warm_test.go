package agentclient_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentclient"
)

// countingListener records the connections the agent accepts.
type countingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *countingListener) accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *countingListener) all() []net.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns
}

func (l *countingListener) last() net.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns[len(l.conns)-1]
}

func startCountedAgent(t *testing.T) (*agentclient.Client, *countingListener) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: inner}
	serveAgent(t, ln, agent.Config{})
	c := agentclient.New(ln.Addr().String(), token)
	t.Cleanup(c.CloseIdleConnections)
	return c, ln
}

func runEcho(t *testing.T, c *agentclient.Client, word string) {
	t.Helper()
	var out bytes.Buffer
	st, err := c.Run(testCtx(t), agentclient.ExecRequest{Command: "echo " + word}, &out, nil)
	if err != nil || st.ExitCode != 0 || out.String() != word+"\n" {
		t.Fatalf("echo %s: %q %+v %v", word, out.String(), st, err)
	}
}

// After a command, the client dials the next command's connection ahead,
// and the next command uses it instead of dialing.
func TestExecUsesConnectionDialedAhead(t *testing.T) {
	c, ln := startCountedAgent(t)
	runEcho(t, c, "one")
	eventually(t, "a connection dialed ahead", func() bool { return ln.accepted() == 2 })
	runEcho(t, c, "two")
	if n := ln.accepted(); n != 2 {
		t.Fatalf("the second command made the agent accept %d connections in all, want 2 (it should use the one dialed ahead)", n)
	}
	eventually(t, "the next connection dialed ahead", func() bool { return ln.accepted() == 3 })

	// CloseIdleConnections closes it: the agent sees end of file.
	warm := ln.last()
	c.CloseIdleConnections()
	if _, err := warm.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection dialed ahead is still open after CloseIdleConnections")
	}
}

// The connection that proved a restored agent listening is the first
// command's: the agent accepts one connection for both, not two.
func TestExecUsesConnectionOfWaitListening(t *testing.T) {
	c, ln := startCountedAgent(t)
	if err := c.WaitListening(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the probe accepted", func() bool { return ln.accepted() == 1 })
	runEcho(t, c, "one")
	if n := ln.accepted(); n != 1 {
		t.Fatalf("WaitListening and the first command made the agent accept %d connections, want 1 (the command should use the probe's)", n)
	}
}

// A connection dialed ahead that the agent has closed meanwhile (its header
// timeout, a restart) is not used: the command dials a new one.
func TestExecSkipsConnectionClosedByAgent(t *testing.T) {
	c, ln := startCountedAgent(t)
	runEcho(t, c, "one")
	eventually(t, "a connection dialed ahead", func() bool { return ln.accepted() == 2 })
	ln.last().Close()
	runEcho(t, c, "two")
	if n := ln.accepted(); n < 3 {
		t.Fatalf("the agent accepted %d connections in all; the second command should have dialed a new one", n)
	}
}

// Quiesce leaves no connection to the agent open, its own included: each
// would be a socket and a serving goroutine in the checkpoint that follows.
func TestQuiesceLeavesNoConnectionOpen(t *testing.T) {
	c, ln := startCountedAgent(t)
	if err := c.Health(testCtx(t)); err != nil { // kept alive for the next request
		t.Fatal(err)
	}
	runEcho(t, c, "one")
	eventually(t, "a connection dialed ahead", func() bool { return ln.accepted() == 3 })
	if err := c.Quiesce(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	conns := ln.all()
	if len(conns) != 3 {
		t.Fatalf("the agent accepted %d connections, want 3 (health, exec, dialed ahead and used by quiesce)", len(conns))
	}
	for i, conn := range conns {
		// A safety net, not a timing: an open connection never ends.
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
			t.Errorf("connection %d still open after Quiesce (read: %v)", i, err)
		}
	}
}

// Quiesce sends its request on the connection dialed ahead for the next
// exec, which the agent has already accepted, instead of dialing: the pause
// waits for no handshake. One the agent has closed meanwhile is not used.
func TestQuiesceUsesConnectionDialedAhead(t *testing.T) {
	c, ln := startCountedAgent(t)
	runEcho(t, c, "one")
	eventually(t, "a connection dialed ahead", func() bool { return ln.accepted() == 2 })
	if err := c.Quiesce(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if n := ln.accepted(); n != 2 {
		t.Fatalf("quiesce made the agent accept %d connections in all, want 2 (it should use the one dialed ahead)", n)
	}

	runEcho(t, c, "two")
	eventually(t, "the next connection dialed ahead", func() bool { return ln.accepted() == 4 })
	ln.last().Close()
	if err := c.Quiesce(testCtx(t)); err != nil {
		t.Fatalf("quiesce with the connection dialed ahead closed by the agent: %v", err)
	}
	if n := ln.accepted(); n != 5 {
		t.Fatalf("the agent accepted %d connections in all, want 5 (quiesce dialing a new one)", n)
	}
}

// A command's and Quiesce's connections end with a reset from stasisd's
// side once their exchange is over, so that neither end waits in TIME_WAIT.
// The agent's end would otherwise (whenever it closes first, as it does
// after the exit frame and after a Connection: close answer) live on in the
// sandbox's network stack, saved and restored with every checkpoint for as
// long as TIME_WAIT lasts (in the bench they piled up over 18 pause/resume
// cycles, ~1.7 each, none expired). Here the agent runs on the
// host, whose table shows both ends; which end closes first is a race, so
// the test counts both.
func TestAgentConnectionsLeaveNoTimeWait(t *testing.T) {
	c, ln := startCountedAgent(t)
	runEcho(t, c, "one")
	eventually(t, "a connection dialed ahead", func() bool { return ln.accepted() == 2 })
	if err := c.Quiesce(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	conns := ln.all()
	if len(conns) != 2 {
		t.Fatalf("the agent accepted %d connections, want 2 (exec, dialed ahead and used by quiesce)", len(conns))
	}
	checked := conns
	states := func() []string {
		var all []string
		for _, conn := range checked {
			all = append(all, tcpStates(t, conn.LocalAddr(), conn.RemoteAddr())...)
			all = append(all, tcpStates(t, conn.RemoteAddr(), conn.LocalAddr())...)
		}
		return all
	}
	eventually(t, "both ends of the connections closed", func() bool {
		for _, st := range states() {
			if st != tcpTimeWait && st != tcpClose {
				return false
			}
		}
		return true
	})
	for _, st := range states() {
		if st == tcpTimeWait {
			t.Fatalf("an end of the command's or Quiesce's connection is in TIME_WAIT (states %v), want none", states())
		}
	}
}

// TCP states as /proc/net/tcp writes them.
const (
	tcpTimeWait = "06"
	tcpClose    = "07"
)

// tcpStates lists the states of the host's IPv4 TCP sockets from local to
// remote (at most one, unless ports were reused).
func tcpStates(t *testing.T, local, remote net.Addr) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	l, r := procNetAddr(t, local), procNetAddr(t, remote)
	var states []string
	for _, line := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 3 && f[1] == l && f[2] == r {
			states = append(states, f[3])
		}
	}
	return states
}

// procNetAddr writes a 127.0.0.1 address as /proc/net/tcp does.
func procNetAddr(t *testing.T, a net.Addr) string {
	ta := a.(*net.TCPAddr)
	if !ta.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("address %v: want 127.0.0.1", a)
	}
	return fmt.Sprintf("0100007F:%04X", ta.Port)
}
