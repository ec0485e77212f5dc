package agent_test

import (
	"context"
	"errors"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// bootAgent serves an agent whose start-up set-up is setup (Server.Boot).
func bootAgent(t *testing.T, setup func() error) (*agentclient.Client, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return bootAgentOn(t, agent.Config{}, ln, setup)
}

// bootAgentOn is bootAgent with cfg, on ln.
func bootAgentOn(t *testing.T, cfg agent.Config, ln net.Listener, setup func() error) (*agentclient.Client, <-chan error) {
	t.Helper()
	cfg.TokenHash = agentproto.TokenHash(testToken)
	srv, err := agent.New(cfg, reaper, log.New(testWriter{t}, "agent: ", 0))
	if err != nil {
		t.Fatal(err)
	}
	booted := srv.Boot(setup)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	})
	c := agentclient.New(ln.Addr().String(), testToken)
	t.Cleanup(c.CloseIdleConnections)
	return c, booted
}

// The agent answers /health while its set-up (resolver, trust store) still
// runs, so that stasisd learns it is up sooner; every other request waits
// for the set-up, so that the first command finds what it installs.
func TestHealthAnswersBeforeBootButRequestsWait(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "installed")
	release := make(chan struct{})
	c, booted := bootAgent(t, func() error {
		<-release
		return os.WriteFile(marker, []byte("ca"), 0o644)
	})
	ctx := testCtx(t)
	if err := c.Health(ctx); err != nil {
		t.Fatalf("health during the set-up: %v", err)
	}
	stat := make(chan error, 1)
	go func() {
		_, err := c.Stat(ctx, marker)
		stat <- err
	}()
	select {
	case err := <-stat:
		t.Fatalf("a request was answered before the set-up was done (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-booted; err != nil {
		t.Fatal(err)
	}
	if err := <-stat; err != nil {
		t.Fatalf("the request that waited for the set-up: %v; want the file it installed", err)
	}
}

// A failed set-up is the answer to every request but /health (and
// cmd/stasis-agent then exits, ending the sandbox).
func TestFailedBootIsEveryRequestsError(t *testing.T) {
	c, booted := bootAgent(t, func() error { return errors.New("trust store is read-only") })
	ctx := testCtx(t)
	if err := c.Health(ctx); err != nil {
		t.Fatalf("health: %v", err)
	}
	if err := <-booted; err == nil {
		t.Fatal("Boot reported no error")
	}
	_, err := c.Stat(ctx, "/")
	var ae *agentclient.Error
	if !errors.As(err, &ae) || ae.Status != 500 || !strings.Contains(ae.Message, "trust store is read-only") {
		t.Fatalf("stat after a failed set-up: %v; want a 500 naming the set-up's error", err)
	}
}

// An unknown default user fails the set-up (New no longer looks it up: in
// gVisor that is a read through the gofer before the first answer).
func TestBootRejectsUnknownDefaultUser(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ran := false
	c, booted := bootAgentOn(t, agent.Config{DefaultUser: "no-such-user-xyz"}, ln, func() error { ran = true; return nil })
	ctx := testCtx(t)
	if err := c.Health(ctx); err != nil {
		t.Fatalf("health: %v", err)
	}
	if err := <-booted; err == nil || !strings.Contains(err.Error(), "no-such-user-xyz") {
		t.Fatalf("Boot with an unknown default user: %v", err)
	}
	if ran {
		t.Error("the set-up ran for an unknown default user")
	}
	var ae *agentclient.Error
	if _, err := c.Stat(ctx, "/"); !errors.As(err, &ae) || ae.Status != 500 || !strings.Contains(ae.Message, "default user") {
		t.Fatalf("stat: %v; want a 500 naming the default user", err)
	}
}

// The set-up starts only once the first /health has been answered (in
// gVisor it would compete with that answer, which stasisd waits for), and
// a first request of another kind starts it too.
func TestBootStartsAfterFirstAnswer(t *testing.T) {
	for _, first := range []string{"health", "stat"} {
		t.Run(first, func(t *testing.T) {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ln := &writeCounter{Listener: inner}
			var answeredBefore int64 = -1
			c, booted := bootAgentOn(t, agent.Config{}, ln, func() error {
				answeredBefore = ln.written.Load()
				return nil
			})
			ctx := testCtx(t)
			if first == "health" {
				err = c.Health(ctx)
			} else {
				_, err = c.Stat(ctx, "/")
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := <-booted; err != nil {
				t.Fatal(err)
			}
			if first == "health" && answeredBefore == 0 {
				t.Error("the set-up started before the first /health was answered")
			}
		})
	}
}

// writeCounter counts the bytes written on the connections it accepts.
type writeCounter struct {
	net.Listener
	written atomic.Int64
}

func (l *writeCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: c, n: &l.written}, nil
}

type countedConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// An idle reaper (the agent's until its set-up runs) can be closed without
// ever running, and Run may be called more than once. (That a running one
// hands statuses to commands is what every exec test shows; this package's
// tests may start processes only through the agent, see TestMain.)
func TestIdleReaperCloses(t *testing.T) {
	agent.NewIdleReaper(false).Close()
	r := agent.NewIdleReaper(false)
	r.Run()
	r.Run()
	r.Close()
}
