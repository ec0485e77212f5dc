package agentclient_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// The agent runs in this test process with a Reaper that waits only for the
// commands it starts (this process is not a subreaper here).
var reaper = agent.NewReaper(false)

const token = "client-test-token"

func serveAgent(t testing.TB, ln net.Listener, cfg agent.Config) {
	t.Helper()
	if cfg.TokenHash == ([sha256.Size]byte{}) {
		cfg.TokenHash = agentproto.TokenHash(token)
	}
	if cfg.Env == nil {
		cfg.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
	}
	srv, err := agent.New(cfg, reaper, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
}

func startAgent(t testing.TB, cfg agent.Config) (*agentclient.Client, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveAgent(t, ln, cfg)
	c := agentclient.New(ln.Addr().String(), token)
	t.Cleanup(c.CloseIdleConnections)
	return c, ln.Addr().String()
}

// testCtx is a safety net against hangs, not a timing assertion.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func pidAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && !strings.HasPrefix(s[i+1:], " Z")
}

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

func TestRun(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	var out, errOut bytes.Buffer
	st, err := c.Run(testCtx(t), agentclient.ExecRequest{
		Command: `printf "%s" "$GREETING"; echo oops >&2; exit 4`,
		Env:     map[string]string{"GREETING": "hi there"},
	}, &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "hi there" || errOut.String() != "oops\n" || st != (agentclient.ExitStatus{ExitCode: 4}) {
		t.Fatalf("got %q %q %+v", out.String(), errOut.String(), st)
	}
	// Stdin is closed: cat ends at once.
	st, err = c.Run(testCtx(t), agentclient.ExecRequest{Command: "cat"}, nil, nil)
	if err != nil || st.ExitCode != 0 {
		t.Fatalf("cat: %+v %v", st, err)
	}
}

func TestRunConcurrent(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			st, err := c.Run(testCtx(t), agentclient.ExecRequest{Command: fmt.Sprintf("echo %d; exit %d", i, i%7)}, &out, nil)
			if err == nil && (st.ExitCode != i%7 || out.String() != fmt.Sprintf("%d\n", i)) {
				err = fmt.Errorf("command %d: %q %+v", i, out.String(), st)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestRunWriterErrorStopsCommand(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	_, err := c.Run(testCtx(t), agentclient.ExecRequest{Command: "echo x; sleep 100"}, failingWriter{}, nil)
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Run: %v", err)
	}
}

func TestStartFailureIsAnExitEvent(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{Command: "true", WorkingDir: "/no/such/dir"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Pid() != 0 {
		t.Errorf("pid %d", p.Pid())
	}
	ev, err := p.Next()
	if err != nil || ev.Kind != agentclient.EventExit || ev.Exit.ExitCode != agentproto.ExitCodeStartFailed || ev.Exit.Error == "" {
		t.Fatalf("first event %+v %v", ev, err)
	}
	if _, err := p.Next(); err != io.EOF {
		t.Fatalf("then %v, want io.EOF", err)
	}
	st, err := c.Run(testCtx(t), agentclient.ExecRequest{Command: "true", WorkingDir: "/no/such/dir"}, nil, nil)
	if err != nil || st.ExitCode != -1 || !strings.Contains(st.Error, "/no/such/dir") {
		t.Fatalf("Run: %+v %v", st, err)
	}
}

// Cancelling Start's context drops the connection and the agent kills the
// command.
func TestStartContextCancelKills(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	ctx, cancel := context.WithCancel(testCtx(t))
	p, err := c.Start(ctx, agentclient.ExecRequest{Command: "echo up; sleep 100"})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.Next()
	if err != nil || string(ev.Data) != "up\n" {
		t.Fatalf("first event %+v %v", ev, err)
	}
	pid := p.Pid()
	if !pidAlive(pid) {
		t.Fatalf("shell %d not running", pid)
	}
	cancel()
	if _, err := p.Next(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after cancel: %v, want context.Canceled", err)
	}
	eventually(t, "the shell is killed and reaped", func() bool { return !pidAlive(pid) })
	if _, err := p.Write([]byte("x")); err == nil {
		t.Error("Write after cancel succeeded")
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestProcessCloseAfterExit(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{Command: "exit 0"})
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := p.Next()
		if err != nil {
			t.Fatal(err)
		}
		if ev.Kind == agentclient.EventExit {
			break
		}
	}
	p.Close()
	if _, err := p.Write([]byte("late")); !errors.Is(err, agentclient.ErrProcessClosed) {
		t.Errorf("Write after exit: %v", err)
	}
	if err := p.Signal("TERM"); !errors.Is(err, agentclient.ErrProcessClosed) {
		t.Errorf("Signal after exit: %v", err)
	}
}

func TestWaitReady(t *testing.T) {
	// Nothing listening yet: WaitReady keeps polling until the agent comes up.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := agentclient.New(addr, token)
	defer c.CloseIdleConnections()
	ready := make(chan error, 1)
	go func() { ready <- c.WaitReady(testCtx(t)) }()
	// Let it fail at least once against the closed port.
	if err := c.Health(testCtx(t)); err == nil {
		t.Fatal("health succeeded with nothing listening")
	}
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("could not re-listen on %s: %v", addr, err)
	}
	serveAgent(t, ln, agent.Config{})
	if err := <-ready; err != nil {
		t.Fatalf("WaitReady: %v", err)
	}

	// A wrong token ends the wait at once instead of polling until ctx ends.
	bad := agentclient.New(addr, "nope")
	defer bad.CloseIdleConnections()
	if err := bad.WaitReady(testCtx(t)); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Fatalf("WaitReady with bad token: %v", err)
	}

	// Nobody ever answers: the context decides.
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln2.Addr().String()
	ln2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := agentclient.New(dead, token).WaitReady(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitReady on dead address: %v", err)
	}
}

func TestWaitListening(t *testing.T) {
	// A listener that never answers HTTP is enough: WaitListening only
	// needs the agent's socket to accept.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := agentclient.New(ln.Addr().String(), token).WaitListening(testCtx(t)); err != nil {
		t.Fatalf("WaitListening on a listening socket: %v", err)
	}

	// Nothing listening: it keeps trying until the context ends, and says
	// what the last attempt saw.
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln2.Addr().String()
	ln2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err = agentclient.New(dead, token).WaitListening(ctx)
	// The last attempt is usually refused, but on a loaded machine the
	// deadline can cut it short mid-dial: either way it names the address.
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), dead) {
		t.Fatalf("WaitListening on dead address: %v", err)
	}
}

func TestSetAddrAndToken(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	c, _ := startAgent(t, agent.Config{DefaultWorkdir: dirA})
	_, addrB := startAgent(t, agent.Config{DefaultWorkdir: dirB, TokenHash: agentproto.TokenHash("token-b")})
	pwd := func() (string, error) {
		var out bytes.Buffer
		_, err := c.Run(testCtx(t), agentclient.ExecRequest{Command: "pwd"}, &out, nil)
		return strings.TrimSpace(out.String()), err
	}
	if got, err := pwd(); err != nil || got != dirA {
		t.Fatalf("agent A: %q %v", got, err)
	}
	c.SetAddr(addrB)
	if _, err := pwd(); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Fatalf("agent B with A's token: %v", err)
	}
	c.SetToken("token-b")
	if got, err := pwd(); err != nil || got != dirB {
		t.Fatalf("agent B: %q %v", got, err)
	}
}

func TestErrorsIs(t *testing.T) {
	for _, tc := range []struct {
		err  *agentclient.Error
		want error
	}{
		{&agentclient.Error{Status: 404, Code: "not_found"}, agentclient.ErrNotFound},
		{&agentclient.Error{Status: 400, Code: "invalid_path"}, agentclient.ErrInvalidPath},
		{&agentclient.Error{Status: 400, Code: "is_directory"}, agentclient.ErrIsDir},
		{&agentclient.Error{Status: 403, Code: "permission_denied"}, agentclient.ErrPermission},
		{&agentclient.Error{Status: 507, Code: "no_space"}, agentclient.ErrNoSpace},
		{&agentclient.Error{Status: 401, Code: "unauthorized"}, agentclient.ErrUnauthorized},
	} {
		wrapped := fmt.Errorf("ctx: %w", tc.err)
		if !errors.Is(wrapped, tc.want) {
			t.Errorf("%v is not %v", tc.err, tc.want)
		}
		if errors.Is(wrapped, agentclient.ErrNotFound) != (tc.want == agentclient.ErrNotFound) {
			t.Errorf("%v matches ErrNotFound wrongly", tc.err)
		}
	}
}

func TestFilesRoundTrip(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	ctx := testCtx(t)
	p := t.TempDir() + "/a/b.txt"
	if err := c.WriteFile(ctx, p, strings.NewReader("content"), 7); err != nil {
		t.Fatal(err)
	}
	fi, err := c.Stat(ctx, p)
	if err != nil || fi.Size != 7 || fi.IsDir {
		t.Fatalf("stat %+v %v", fi, err)
	}
	rc, size, err := c.ReadFile(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "content" || size != 7 {
		t.Fatalf("read %q %d", b, size)
	}
	// A size that does not match the body is an error, not a silent truncation.
	if err := c.WriteFile(ctx, p, strings.NewReader("short"), 10); err == nil {
		t.Fatal("WriteFile with wrong size succeeded")
	}
	if _, err := c.Stat(ctx, p+"-missing"); !errors.Is(err, agentclient.ErrNotFound) {
		t.Fatalf("stat missing: %v", err)
	}
}

// BenchmarkExecTrue measures a whole exec round trip of /bin/sh -c true
// (connect, upgrade, start, fork/exec, exit) on loopback.
func BenchmarkExecTrue(b *testing.B) {
	c, _ := startAgent(b, agent.Config{})
	ctx := context.Background()
	for b.Loop() {
		st, err := c.Run(ctx, agentclient.ExecRequest{Command: "true"}, nil, nil)
		if err != nil || st.ExitCode != 0 {
			b.Fatalf("%+v %v", st, err)
		}
	}
}

// BenchmarkHealth measures a plain authenticated request on a kept-alive
// connection.
func BenchmarkHealth(b *testing.B) {
	c, _ := startAgent(b, agent.Config{})
	ctx := context.Background()
	for b.Loop() {
		if err := c.Health(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecOutput1MB measures an exec whose command prints 1 MiB: the
// output's trip through the pipe, the agent's frames and the client.
func BenchmarkExecOutput1MB(b *testing.B) {
	c, _ := startAgent(b, agent.Config{})
	ctx := context.Background()
	var out bytes.Buffer
	for b.Loop() {
		out.Reset()
		st, err := c.Run(ctx, agentclient.ExecRequest{Command: "head -c 1048576 /dev/zero"}, &out, nil)
		if err != nil || st.ExitCode != 0 || out.Len() != 1<<20 {
			b.Fatalf("%+v %v: %d bytes", st, err, out.Len())
		}
	}
}
