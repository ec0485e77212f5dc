package stasis_test

// End-to-end tests: the SDK against a real stasisd running real gVisor
// sandboxes (internal/testenv). They need root and the runsc/images built
// by `make`; run them with `go test -run E2E .`.

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

const template = "stasis/minimal"

// e2eTimeout bounds each test so a regression fails instead of hanging; no
// assertion depends on how long anything takes.
const e2eTimeout = 3 * time.Minute

func newClient(t *testing.T, srv *testenv.Server) *stasis.Client {
	t.Helper()
	c, err := stasis.NewClient(stasis.WithBaseURL(srv.URL), stasis.WithAPIKey(srv.APIKey), stasis.WithCredentialsFile(""))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func createSandbox(t *testing.T, ctx context.Context, c *stasis.Client, name string) *stasis.Sandbox {
	t.Helper()
	sb, err := c.Create(ctx, stasis.CreateOptions{Name: name, Template: template, Metadata: map[string]string{"test": t.Name()}})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	t.Cleanup(func() { sb.Kill(context.Background()) })
	return sb
}

func mustRun(t *testing.T, ctx context.Context, sb *stasis.Sandbox, cmd string) *stasis.Result {
	t.Helper()
	res, err := sb.Commands.Run(ctx, cmd, nil)
	if err != nil {
		t.Fatalf("run %q: %v", cmd, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("run %q: exit %d, stderr %q", cmd, res.ExitCode, res.Stderr)
	}
	return res
}

// lockedBuffer collects callback output and signals when it contains a
// string.
type lockedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	waiters []waiter
}

type waiter struct {
	s  string
	ch chan struct{}
}

func (b *lockedBuffer) Write(p []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	kept := b.waiters[:0]
	for _, w := range b.waiters {
		if strings.Contains(b.buf.String(), w.s) {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	b.waiters = kept
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// await returns a channel closed once the buffer contains s.
func (b *lockedBuffer) await(s string) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := make(chan struct{})
	if strings.Contains(b.buf.String(), s) {
		close(ch)
	} else {
		b.waiters = append(b.waiters, waiter{s, ch})
	}
	return ch
}

func waitFor(t *testing.T, ctx context.Context, ch <-chan struct{}, what string, got func() string) {
	t.Helper()
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatalf("never saw %s; output so far %q", what, got())
	}
}

func TestE2E(t *testing.T) {
	srv := testenv.StartServer(t)
	c := newClient(t, srv)

	t.Run("Lifecycle", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		label := fmt.Sprintf("lifecycle-%d", time.Now().UnixNano())
		sb, err := c.Create(ctx, stasis.CreateOptions{
			Name: "lifecycle", Template: template,
			Timeout: 10 * time.Minute, AutoDelete: time.Hour,
			Metadata: map[string]string{"suite": label, "role": "primary"},
			EnvVars:  map[string]string{"GREETING": "hello from env"},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Kill(context.Background())
		snap := sb.Snapshot()
		if snap.Status != stasis.StatusActive || snap.Name != "lifecycle" || snap.Timeout != 10*time.Minute ||
			snap.AutoDelete != time.Hour || snap.Metadata["suite"] != label || snap.CreatedAt.IsZero() {
			t.Fatalf("created %+v", snap)
		}

		if got := mustRun(t, ctx, sb, `echo "$GREETING"`).Stdout; got != "hello from env\n" {
			t.Fatalf("env var: %q", got)
		}

		// A second sandbox with other metadata, to see List filter.
		other, err := c.Create(ctx, stasis.CreateOptions{Name: "other", Template: template, Metadata: map[string]string{"suite": label, "role": "secondary"}})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Kill(context.Background())
		list, err := c.List(ctx, &stasis.ListOptions{Metadata: map[string]string{"suite": label, "role": "primary"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].ID != sb.ID {
			t.Fatalf("filtered list: %+v", list)
		}
		list, err = c.List(ctx, &stasis.ListOptions{Metadata: map[string]string{"suite": label}})
		if err != nil || len(list) != 2 {
			t.Fatalf("list by suite: %v %+v", err, list)
		}

		// Update on the handle, then by id.
		if err := sb.Update(ctx, stasis.UpdateOptions{ClearTimeout: true}); err != nil {
			t.Fatal(err)
		}
		info, err := sb.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Timeout != 0 || info.Status != stasis.StatusActive {
			t.Fatalf("after clearing timeout: %+v", info)
		}

		// Pause; UpdateByID leaves a paused sandbox paused.
		if err := sb.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if info, err = c.Get(ctx, sb.ID); err != nil || info.Status != stasis.StatusPaused {
			t.Fatalf("after pause: %v %+v", err, info)
		}
		md := map[string]string{"suite": label, "role": "primary", "stage": "paused"}
		for i := 0; i < 2; i++ { // applying it twice is harmless
			if err := c.UpdateByID(ctx, sb.ID, stasis.UpdateOptions{Metadata: md}); err != nil {
				t.Fatal(err)
			}
		}
		if info, err = c.Get(ctx, sb.ID); err != nil || info.Status != stasis.StatusPaused || info.Metadata["stage"] != "paused" {
			t.Fatalf("after UpdateByID: %v %+v", err, info)
		}

		// A command on a paused sandbox resumes it transparently, with its
		// processes' state intact.
		if got := mustRun(t, ctx, sb, `echo "$GREETING"`).Stdout; got != "hello from env\n" {
			t.Fatalf("after pause: %q", got)
		}
		if info, err = sb.Info(ctx); err != nil || info.Status != stasis.StatusActive {
			t.Fatalf("after transparent resume: %v %+v", err, info)
		}

		// Explicit pause and resume.
		if err := sb.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if err := sb.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		if sb.Snapshot().Status != stasis.StatusActive {
			t.Fatalf("after resume: %+v", sb.Snapshot())
		}
		mustRun(t, ctx, sb, "true")

		// Connect from another client activates and works.
		c2 := newClient(t, srv)
		sb2, err := c2.Connect(ctx, sb.ID)
		if err != nil {
			t.Fatal(err)
		}
		mustRun(t, ctx, sb2, "true")

		// Kill is idempotent; the sandbox is gone everywhere.
		if err := sb.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.KillByID(ctx, sb.ID); err != nil {
			t.Fatalf("second kill: %v", err)
		}
		if _, err := c.Get(ctx, sb.ID); !errors.Is(err, stasis.ErrNotFound) {
			t.Fatalf("get after kill: %v", err)
		}
		if _, err := c.Connect(ctx, sb.ID); !errors.Is(err, stasis.ErrNotFound) {
			t.Fatalf("connect after kill: %v", err)
		}
		if err := c.UpdateByID(ctx, sb.ID, stasis.UpdateOptions{Metadata: md}); !errors.Is(err, stasis.ErrNotFound) {
			t.Fatalf("update after kill: %v", err)
		}
		var apiErr *stasis.APIError
		if _, err := sb.Commands.Run(ctx, "true", nil); !errors.As(err, &apiErr) {
			t.Fatalf("run after kill: %v", err)
		}
	})

	t.Run("Errors", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		bad, err := stasis.NewClient(stasis.WithBaseURL(srv.URL), stasis.WithAPIKey("wrong"), stasis.WithCredentialsFile(""))
		if err != nil {
			t.Fatal(err)
		}
		_, err = bad.List(ctx, nil)
		var apiErr *stasis.APIError
		if !errors.Is(err, stasis.ErrAuth) || !errors.As(err, &apiErr) || apiErr.StatusCode != 401 {
			t.Fatalf("wrong key: %v", err)
		}
		if _, err := c.Connect(ctx, "no-such-sandbox"); !errors.Is(err, stasis.ErrNotFound) {
			t.Fatalf("connect to missing: %v", err)
		}
		if _, err := c.Create(ctx, stasis.CreateOptions{Name: "x", Template: "no/such-template"}); !errors.As(err, &apiErr) || apiErr.StatusCode >= 500 {
			t.Fatalf("unknown template: %v", err)
		}
	})

	t.Run("StreamingBeforeEnd", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		sb := createSandbox(t, ctx, c, "stream")
		// The command prints a, then waits for a file that the test only
		// creates after its callback saw "a": if output were delivered at
		// the end, the command could never finish.
		var out lockedBuffer
		gotA := out.await("a\n")
		go func() {
			select {
			case <-gotA:
				sb.Files.Write(ctx, "/tmp/go", nil)
			case <-ctx.Done():
			}
		}()
		var errOut lockedBuffer
		res, err := sb.Commands.Run(ctx, `echo a; echo warn >&2; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo b`, &stasis.RunOptions{
			Timeout:  2 * time.Minute,
			OnStdout: out.Write,
			OnStderr: errOut.Write,
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 || res.Stdout != "a\nb\n" || out.String() != "a\nb\n" || errOut.String() != "warn\n" || res.Stderr != "warn\n" {
			t.Fatalf("result %+v, callbacks %q %q", res, out.String(), errOut.String())
		}
	})

	t.Run("RunOptions", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		sb := createSandbox(t, ctx, c, "runopts")
		res, err := sb.Commands.Run(ctx, `pwd; echo "$FOO"; exit 5`, &stasis.RunOptions{Dir: "/tmp", Env: map[string]string{"FOO": "bar"}})
		if err != nil {
			t.Fatal(err)
		}
		if res.Stdout != "/tmp\nbar\n" || res.ExitCode != 5 {
			t.Fatalf("%+v", res)
		}
		// The command's own timeout kills it.
		res, err = sb.Commands.Run(ctx, "sleep 60", &stasis.RunOptions{Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode == 0 {
			t.Fatalf("timed-out command: %+v", res)
		}
		// The buffered output cap.
		_, err = sb.Commands.Run(ctx, "yes | head -c 100000", &stasis.RunOptions{MaxOutputBytes: 10000})
		if !errors.Is(err, stasis.ErrOutputTooLarge) {
			t.Fatalf("cap: %v", err)
		}
		// Cancelling the context abandons a streamed command.
		cctx, ccancel := context.WithCancel(ctx)
		_, err = sb.Commands.Run(cctx, "echo started; sleep 60", &stasis.RunOptions{OnStdout: func([]byte) { ccancel() }})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancel: %v", err)
		}
	})

	t.Run("SpawnStdin", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		sb := createSandbox(t, ctx, c, "stdin")
		var out lockedBuffer
		sess, err := sb.Commands.Spawn(ctx, "cat", &stasis.SpawnOptions{OnStdout: out.Write})
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		if _, err := io.WriteString(sess.Stdin, "hello\n"); err != nil {
			t.Fatal(err)
		}
		// The echo arrives while cat still runs.
		waitFor(t, ctx, out.await("hello\n"), "the first echo", out.String)
		big := make([]byte, 200<<10)
		rand.Read(big)
		if _, err := sess.Stdin.Write(big); err != nil {
			t.Fatal(err)
		}
		if err := sess.Stdin.Close(); err != nil {
			t.Fatal(err)
		}
		res, err := sess.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 || res.Stdout != "hello\n"+string(big) {
			t.Fatalf("exit %d, %d bytes of stdout", res.ExitCode, len(res.Stdout))
		}
	})

	t.Run("SpawnSignal", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		sb := createSandbox(t, ctx, c, "signal")
		var out lockedBuffer
		sess, err := sb.Commands.Spawn(ctx, "echo started; sleep 60", &stasis.SpawnOptions{OnStdout: out.Write})
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		waitFor(t, ctx, out.await("started"), "the start", out.String)
		if err := sess.Signal(ctx, "SIGTERM"); err != nil {
			t.Fatal(err)
		}
		res, err := sess.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// sleep 60 ran to completion would exit 0.
		if res.ExitCode == 0 {
			t.Fatalf("signalled sleep: %+v", res)
		}
	})

	t.Run("SpawnPTY", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		sb := createSandbox(t, ctx, c, "pty")
		var out lockedBuffer
		sess, err := sb.Commands.Spawn(ctx, "/bin/sh", &stasis.SpawnOptions{
			PTY: &stasis.PTYSize{Cols: 80, Rows: 24}, OnStdout: out.Write,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		io.WriteString(sess.Stdin, "[ -t 0 ] && echo is-a-tty; stty size\n")
		waitFor(t, ctx, out.await("24 80"), "the initial size", out.String)
		if !strings.Contains(out.String(), "is-a-tty") {
			t.Fatalf("stdin is not a terminal: %q", out.String())
		}
		if err := sess.Resize(ctx, 100, 30); err != nil {
			t.Fatal(err)
		}
		io.WriteString(sess.Stdin, "stty size; echo $((6*7))\n")
		waitFor(t, ctx, out.await("30 100"), "the new size", out.String)
		waitFor(t, ctx, out.await("42"), "42", out.String)
		io.WriteString(sess.Stdin, "exit 7\n")
		res, err := sess.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 7 {
			t.Fatalf("exit %d, output %q", res.ExitCode, out.String())
		}
	})

	t.Run("SessionSurvivesOtherPause", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		a := createSandbox(t, ctx, c, "steady")
		b := createSandbox(t, ctx, c, "paused-neighbour")
		var out lockedBuffer
		sess, err := a.Commands.Spawn(ctx, "cat", &stasis.SpawnOptions{OnStdout: out.Write})
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		io.WriteString(sess.Stdin, "before\n")
		waitFor(t, ctx, out.await("before\n"), "before", out.String)
		if err := b.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		io.WriteString(sess.Stdin, "during\n")
		waitFor(t, ctx, out.await("during\n"), "during", out.String)
		if err := b.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		mustRun(t, ctx, b, "true")
		io.WriteString(sess.Stdin, "after\n")
		sess.Stdin.Close()
		res, err := sess.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 || res.Stdout != "before\nduring\nafter\n" {
			t.Fatalf("%+v", res)
		}
	})

	t.Run("TokenRefreshAfterOtherClientResumes", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		sb := createSandbox(t, ctx, c, "token")
		mustRun(t, ctx, sb, "echo 1 > /tmp/state")

		// Another client (another process, as far as the server knows)
		// pauses and resumes the sandbox, rotating its access token.
		other := newClient(t, srv)
		if _, err := other.PauseByID(ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
		sb2, err := other.ResumeByID(ctx, sb.ID)
		if err != nil {
			t.Fatal(err)
		}
		mustRun(t, ctx, sb2, "true")

		// The first handle's token is stale; it refreshes and carries on.
		if got := mustRun(t, ctx, sb, "cat /tmp/state").Stdout; got != "1\n" {
			t.Fatalf("state %q", got)
		}
		if got, err := sb.Files.ReadText(ctx, "/tmp/state"); err != nil || got != "1\n" {
			t.Fatalf("read %q %v", got, err)
		}
		// And so does a spawn, after the other client rotates it again.
		if _, err := other.PauseByID(ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := other.ResumeByID(ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
		sess, err := sb.Commands.Spawn(ctx, "cat /tmp/state", nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := sess.Wait(ctx)
		if err != nil || res.Stdout != "1\n" {
			t.Fatalf("spawn after rotation: %v %+v", err, res)
		}
	})

	t.Run("Files", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		sb := createSandbox(t, ctx, c, "files")
		bin := make([]byte, 1<<20+17)
		rand.Read(bin)
		if err := sb.Files.Write(ctx, "/home/user/out/deep/blob.bin", bin); err != nil {
			t.Fatal(err)
		}
		if err := sb.Files.Write(ctx, "/home/user/out/hello.txt", []byte("hello\n")); err != nil {
			t.Fatal(err)
		}
		got, err := sb.Files.Read(ctx, "/home/user/out/deep/blob.bin")
		if err != nil || !bytes.Equal(got, bin) {
			t.Fatalf("read back %d bytes, %v", len(got), err)
		}
		if s, err := sb.Files.ReadText(ctx, "/home/user/out/hello.txt"); err != nil || s != "hello\n" {
			t.Fatalf("%q %v", s, err)
		}
		if got := mustRun(t, ctx, sb, "wc -c < /home/user/out/deep/blob.bin").Stdout; strings.TrimSpace(got) != fmt.Sprint(len(bin)) {
			t.Fatalf("size seen by the sandbox: %q", got)
		}
		if _, err := sb.Files.Read(ctx, "/home/user/missing"); !errors.Is(err, stasis.ErrNotFound) {
			t.Fatalf("missing: %v", err)
		}
		fi, err := sb.Files.Stat(ctx, "/home/user/out")
		if err != nil || !fi.IsDir {
			t.Fatalf("stat dir: %+v %v", fi, err)
		}
		fi, err = sb.Files.Stat(ctx, "/home/user/out/deep/blob.bin")
		if err != nil || fi.IsDir || fi.Size != int64(len(bin)) {
			t.Fatalf("stat file: %+v %v", fi, err)
		}

		z, err := sb.Files.DownloadDir(ctx, "/home/user/out")
		if err != nil {
			t.Fatal(err)
		}
		zr, err := zip.NewReader(bytes.NewReader(z), int64(len(z)))
		if err != nil {
			t.Fatal(err)
		}
		entries := map[string][]byte{}
		for _, f := range zr.File {
			if f.FileInfo().IsDir() {
				continue
			}
			rc, _ := f.Open()
			b, _ := io.ReadAll(rc)
			rc.Close()
			entries[f.Name] = b
		}
		if len(entries) != 2 || !bytes.Equal(entries["out/deep/blob.bin"], bin) || string(entries["out/hello.txt"]) != "hello\n" {
			names := []string{}
			for n := range entries {
				names = append(names, n)
			}
			t.Fatalf("zip entries %v", names)
		}
	})
}
