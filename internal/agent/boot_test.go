package agent_test

import (
	"context"
	"errors"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// bootAgent serves an agent whose start-up set-up is setup (Server.Boot).
func bootAgent(t *testing.T, setup func() error) (*agentclient.Client, <-chan error) {
	t.Helper()
	srv, err := agent.New(agent.Config{TokenHash: agentproto.TokenHash(testToken)}, reaper, log.New(testWriter{t}, "agent: ", 0))
	if err != nil {
		t.Fatal(err)
	}
	booted := srv.Boot(setup)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
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
	if err := <-booted; err == nil {
		t.Fatal("Boot reported no error")
	}
	ctx := testCtx(t)
	if err := c.Health(ctx); err != nil {
		t.Fatalf("health: %v", err)
	}
	_, err := c.Stat(ctx, "/")
	var ae *agentclient.Error
	if !errors.As(err, &ae) || ae.Status != 500 || !strings.Contains(ae.Message, "trust store is read-only") {
		t.Fatalf("stat after a failed set-up: %v; want a 500 naming the set-up's error", err)
	}
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
