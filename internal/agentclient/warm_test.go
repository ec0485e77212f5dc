package agentclient_test

import (
	"bytes"
	"net"
	"os"
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
	ln.mu.Lock()
	conns := ln.conns
	ln.mu.Unlock()
	if len(conns) != 4 {
		t.Fatalf("the agent accepted %d connections, want 4 (health, exec, dialed ahead, quiesce)", len(conns))
	}
	for i, conn := range conns {
		// A safety net, not a timing: an open connection never ends.
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
			t.Errorf("connection %d still open after Quiesce (read: %v)", i, err)
		}
	}
}
