package agent_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// The test binary makes itself a child subreaper and runs one reap-all
// Reaper, so it plays PID 1 for real: orphans of the commands it runs become
// its children and must be reaped, while the exit statuses of the commands
// must still reach their exec streams. Nothing in this package's tests may
// therefore start processes other than through the agent.
var reaper *agent.Reaper

func TestMain(m *testing.M) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "PR_SET_CHILD_SUBREAPER:", err)
		os.Exit(1)
	}
	reaper = agent.NewReaper(true)
	code := m.Run()
	reaper.Close()
	os.Exit(code)
}

const testToken = "test-token-0123456789"

// startAgent runs a real agent server on a random loopback port and returns a
// client for it.
func startAgent(t testing.TB, cfg agent.Config) (*agentclient.Client, string) {
	t.Helper()
	if cfg.TokenHash == ([sha256.Size]byte{}) {
		cfg.TokenHash = agentproto.TokenHash(testToken)
	}
	if cfg.Env == nil {
		cfg.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "AGENT_VAR=from-agent"}
	}
	srv, addr, done := serveAgent(t, cfg)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	c := agentclient.New(addr, testToken)
	t.Cleanup(c.CloseIdleConnections)
	return c, addr
}

// serveAgent starts a real agent server with cfg on a random loopback port;
// done yields Serve's result once the server is shut down.
func serveAgent(t testing.TB, cfg agent.Config) (srv *agent.Server, addr string, done <-chan error) {
	t.Helper()
	srv, err := agent.New(cfg, reaper, log.New(testWriter{t}, "agent: ", 0))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	return srv, ln.Addr().String(), served
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// testCtx bounds a test's waiting so that a hang fails instead of blocking
// the whole run. It is a safety net, not a timing assertion.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// procState returns the state letter of pid ("R", "S", "Z", ...) and its
// parent, or "" if the process does not exist.
func procState(pid int) (state string, ppid int) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return "", 0
	}
	ppid, _ = strconv.Atoi(f[1])
	return f[0], ppid
}

// waitGone waits until pid no longer exists (not even as a zombie).
func waitGone(t testing.TB, pid int) {
	t.Helper()
	eventually(t, fmt.Sprintf("process %d is gone", pid), func() bool {
		st, _ := procState(pid)
		return st == ""
	})
}

// eventually polls cond until it holds, failing the test if it does not
// within a generous bound.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// zombieChildren lists zombies whose parent is this process.
func zombieChildren() []int {
	ents, _ := os.ReadDir("/proc")
	var z []int
	me := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ppid := procState(pid); st == "Z" && ppid == me {
			z = append(z, pid)
		}
	}
	return z
}
