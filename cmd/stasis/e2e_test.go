package main

// End-to-end tests: the built stasis binary against a real stasisd with
// real gVisor sandboxes (internal/testenv). Needs root and `make`'s runsc
// and images.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

const testTemplate = "stasis/minimal"

// e2eTimeout only keeps a broken build from hanging; no assertion depends
// on how long anything takes.
const e2eTimeout = 3 * time.Minute

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// cliBinary builds this package's current source once per test binary.
func cliBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "stasis-cli-test-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "stasis")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New("go build: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// cli runs the binary with a controlled environment.
type cli struct {
	t   *testing.T
	bin string
	env []string
}

func newCLI(t *testing.T, srv *testenv.Server) *cli {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "TERM=xterm"}
	if srv != nil {
		env = append(env, "STASIS_URL="+srv.URL, "STASIS_API_KEY="+srv.APIKey)
	}
	return &cli{t: t, bin: cliBinary(t), env: env}
}

func (c *cli) with(env ...string) *cli {
	return &cli{t: c.t, bin: c.bin, env: append(append([]string(nil), c.env...), env...)}
}

type result struct {
	stdout, stderr string
	code           int
}

func (c *cli) runIn(stdin io.Reader, args ...string) result {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = c.env
	cmd.Stdin = stdin
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("stasis %q: %v", args, err)
	}
	return result{out.String(), errOut.String(), code}
}

func (c *cli) run(args ...string) result {
	c.t.Helper()
	return c.runIn(nil, args...)
}

// ok runs and requires exit status 0.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	r := c.run(args...)
	if r.code != 0 {
		c.t.Fatalf("stasis %q: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func (c *cli) create(name string, extra ...string) string {
	c.t.Helper()
	id := strings.TrimSpace(c.ok(append([]string{"create", "--name", name, "--template", testTemplate}, extra...)...))
	if id == "" || strings.ContainsAny(id, " \n") {
		c.t.Fatalf("create printed %q", id)
	}
	c.t.Cleanup(func() { c.run("kill", id) })
	return id
}

// syncBuffer collects output and signals when it contains a string.
type syncBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	cond chan struct{} // closed and replaced on every write
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{cond: make(chan struct{})} }

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	close(b.cond)
	b.cond = make(chan struct{})
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor blocks until the output contains s.
func (b *syncBuffer) waitFor(t *testing.T, ctx context.Context, s string) {
	t.Helper()
	b.waitForAfter(t, ctx, "", s)
}

// waitForAfter blocks until s appears after the first marker in the output.
func (b *syncBuffer) waitForAfter(t *testing.T, ctx context.Context, marker, s string) {
	t.Helper()
	for {
		b.mu.Lock()
		out := b.buf.String()
		_, rest, ok := strings.Cut(out, marker)
		found, ch := ok && strings.Contains(rest, s), b.cond
		b.mu.Unlock()
		if found {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("never saw %q; output: %q", s, b.String())
		}
	}
}

func TestCLIHelpAndConfig(t *testing.T) {
	c := newCLI(t, nil)
	if r := c.run("help"); r.code != 0 || !strings.Contains(r.stdout, "Commands:") || !strings.Contains(r.stdout, "cp") {
		t.Fatalf("help: %+v", r)
	}
	for _, cmd := range []string{"create", "ls", "info", "exec", "shell", "pause", "resume", "kill", "cp"} {
		for _, h := range []string{"-h", "--help"} {
			r := c.run(cmd, h)
			if r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: stasis "+cmd) || r.stderr != "" {
				t.Errorf("%s %s: %+v", cmd, h, r)
			}
		}
		if r := c.run("help", cmd); r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: stasis "+cmd) {
			t.Errorf("help %s: %+v", cmd, r)
		}
	}
	if r := c.run("frobnicate"); r.code != 2 || !strings.Contains(r.stderr, "unknown command") {
		t.Errorf("unknown command: %+v", r)
	}
	if r := c.run("info"); r.code != 2 || !strings.Contains(r.stderr, "Usage: stasis info") {
		t.Errorf("missing argument: %+v", r)
	}
	if r := c.run("ls"); r.code != 1 || !strings.Contains(r.stderr, "no API key: set STASIS_API_KEY or run `make run`") {
		t.Errorf("no key: %+v", r)
	}
	r := c.with("STASIS_API_KEY=k", "STASIS_URL=http://127.0.0.1:1").run("ls")
	if r.code != 1 || !strings.Contains(r.stderr, "cannot reach stasisd at http://127.0.0.1:1") {
		t.Errorf("unreachable: %+v", r)
	}
}

func TestCLIE2E(t *testing.T) {
	srv := testenv.StartServer(t)
	c := newCLI(t, srv)

	t.Run("Config", func(t *testing.T) {
		t.Parallel()
		// Flags alone.
		bare := newCLI(t, nil)
		if r := bare.run("--url", srv.URL, "--api-key", srv.APIKey, "ls", "--json"); r.code != 0 {
			t.Fatalf("flags: %+v", r)
		}
		if r := bare.run("ls", "--json", "--url", srv.URL, "--api-key", srv.APIKey); r.code != 0 {
			t.Fatalf("flags after the command: %+v", r)
		}
		// The credentials file `make run` writes.
		home := t.TempDir()
		os.MkdirAll(filepath.Join(home, ".config", "stasis"), 0o700)
		os.WriteFile(filepath.Join(home, ".config", "stasis", "credentials"),
			[]byte("STASIS_URL="+srv.URL+"\nSTASIS_API_KEY="+srv.APIKey+"\n"), 0o600)
		if r := bare.with("HOME="+home).run("ls", "--json"); r.code != 0 {
			t.Fatalf("credentials file: %+v", r)
		}
		// A wrong key.
		if r := c.with("STASIS_API_KEY=wrong").run("ls"); r.code != 1 || !strings.Contains(r.stderr, "authentication failed") {
			t.Fatalf("wrong key: %+v", r)
		}
	})

	t.Run("Lifecycle", func(t *testing.T) {
		t.Parallel()
		suite := "cli-" + t.Name()[len("TestCLIE2E/"):] + "-" + time.Now().Format("150405.000")
		id := c.create("cli-life", "--timeout", "10m", "--auto-delete", "3600",
			"--metadata", "suite="+suite, "--metadata", "role=main", "--env", "GREETING=hi there")
		id2 := c.create("cli-other", "--metadata", "suite="+suite, "--metadata", "role=other")

		var info map[string]any
		if err := json.Unmarshal([]byte(c.ok("info", id, "--json")), &info); err != nil {
			t.Fatal(err)
		}
		md, _ := info["metadata"].(map[string]any)
		if info["id"] != id || info["name"] != "cli-life" || info["status"] != "active" ||
			info["timeout_seconds"] != 600.0 || info["auto_delete_seconds"] != 3600.0 || md["role"] != "main" {
			t.Fatalf("info --json: %v", info)
		}
		text := c.ok("info", id)
		for _, want := range []string{"ID:", id, "Status:", "active", "cli-life", "role=main", "10m0s"} {
			if !strings.Contains(text, want) {
				t.Errorf("info lacks %q:\n%s", want, text)
			}
		}
		if out := c.ok("exec", id, "--", `echo "$GREETING"`); out != "hi there\n" {
			t.Errorf("env from create: %q", out)
		}
		// A unique prefix of the id names the sandbox, as in docker.
		if out := c.ok("info", id[:8], "--json"); !strings.Contains(out, `"id": "`+id+`"`) {
			t.Errorf("info by prefix: %s", out)
		}
		if out := c.ok("exec", id[:8], "--", "echo by-prefix"); out != "by-prefix\n" {
			t.Errorf("exec by prefix: %q", out)
		}

		table := c.ok("ls")
		if !strings.HasPrefix(table, "ID ") || !strings.Contains(table, "STATUS") || !strings.Contains(table, id) || !strings.Contains(table, "cli-life") {
			t.Errorf("ls table:\n%s", table)
		}
		var list []map[string]any
		json.Unmarshal([]byte(c.ok("ls", "--json", "--metadata", "suite="+suite, "--metadata", "role=main")), &list)
		if len(list) != 1 || list[0]["id"] != id {
			t.Errorf("ls --metadata: %v", list)
		}

		if out := c.ok("pause", id); !strings.Contains(out, id) || !strings.Contains(out, "paused") {
			t.Errorf("pause: %q", out)
		}
		json.Unmarshal([]byte(c.ok("info", id, "--json")), &info)
		if info["status"] != "paused" {
			t.Errorf("after pause: %v", info["status"])
		}
		if out := c.ok("resume", id); !strings.Contains(out, "active") {
			t.Errorf("resume: %q", out)
		}
		json.Unmarshal([]byte(c.ok("info", id, "--json")), &info)
		if info["status"] != "active" {
			t.Errorf("after resume: %v", info["status"])
		}

		// Several ids at once; a bad one fails the command but not the others.
		r := c.run("pause", id, id2[:8], "no-such-sandbox")
		if r.code != 1 || strings.Count(r.stdout, "paused") != 2 || !strings.Contains(r.stdout, id2+" paused") ||
			r.stderr != "stasis: sandbox no-such-sandbox not found\n" {
			t.Errorf("pause several: %+v", r)
		}
		// The server's message names the sandbox; the CLI does not repeat it.
		r = c.run("pause", id)
		if r.code != 1 || r.stderr != "stasis: sandbox "+id+" is paused; only an active sandbox can be paused\n" {
			t.Errorf("pause a paused sandbox: %+v", r)
		}

		// kill takes several ids; an unknown or already deleted one is an
		// error, not a success.
		out := c.ok("kill", id, id2)
		if !strings.Contains(out, id+" killed") || !strings.Contains(out, id2+" killed") {
			t.Errorf("kill: %q", out)
		}
		for _, gone := range []string{id, "nonexistent"} {
			if r := c.run("kill", gone); r.code != 1 || r.stdout != "" || r.stderr != "stasis: sandbox "+gone+" not found\n" {
				t.Errorf("kill %s: %+v", gone, r)
			}
		}
		r = c.run("info", id)
		if r.code != 1 || !strings.Contains(r.stderr, "sandbox "+id+" not found") {
			t.Errorf("info after kill: %+v", r)
		}
		if r := c.run("exec", id, "--", "true"); r.code != 1 || !strings.Contains(r.stderr, "sandbox "+id+" not found") {
			t.Errorf("exec after kill: %+v", r)
		}
	})

	t.Run("Exec", func(t *testing.T) {
		t.Parallel()
		id := c.create("cli-exec")
		if r := c.run("exec", id, "--", "sh", "-c", "exit 3"); r.code != 3 {
			t.Errorf("exit code: %+v", r)
		}
		if r := c.run("exec", id, "--", "echo out; echo err >&2; exit 4"); r.code != 4 || r.stdout != "out\n" || r.stderr != "err\n" {
			t.Errorf("streams: %+v", r)
		}
		if out := c.ok("exec", id, "--", "echo", "a  b", "it's"); out != "a  b it's\n" {
			t.Errorf("argv quoting: %q", out)
		}
		if out := c.ok("exec", id, "--cwd", "/tmp", "--env", "X=y z", "--", `pwd; echo "$X"`); out != "/tmp\ny z\n" {
			t.Errorf("cwd/env: %q", out)
		}
		// stdin is piped through when it is not a terminal.
		in := make([]byte, 100<<10)
		rand.Read(in)
		r := c.runIn(bytes.NewReader(in), "exec", id, "--", "cat")
		if r.code != 0 || r.stdout != string(in) {
			t.Errorf("piped stdin: exit %d, %d bytes back, stderr %q", r.code, len(r.stdout), r.stderr)
		}
		r = c.runIn(strings.NewReader("a\nb\nc\n"), "exec", id, "--", "wc -l")
		if strings.TrimSpace(r.stdout) != "3" {
			t.Errorf("wc -l: %+v", r)
		}
		var res map[string]any
		r = c.run("exec", id, "--json", "--", "echo hi; exit 2")
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || r.code != 2 || res["stdout"] != "hi\n" || res["exit_code"] != 2.0 {
			t.Errorf("--json: %+v %v", r, err)
		}
	})

	// Output reaches the terminal while the command still runs: the
	// command waits for a file the test creates only after seeing "a".
	t.Run("ExecStreamsLive", func(t *testing.T) {
		t.Parallel()
		id := c.create("cli-live")
		for _, mode := range []string{"stdin-terminal", "stdin-pipe"} {
			t.Run(mode, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
				defer cancel()
				gate := "/tmp/go-" + mode
				cmd := exec.CommandContext(ctx, c.bin, "exec", id, "--",
					"echo a; while [ ! -e "+gate+" ]; do sleep 0.1; done; echo b")
				cmd.Env = c.env
				if mode == "stdin-terminal" {
					ptmx, tty, err := pty.Open()
					if err != nil {
						t.Fatal(err)
					}
					defer ptmx.Close()
					defer tty.Close()
					cmd.Stdin = tty
				} else {
					pr, pw, _ := os.Pipe()
					defer pw.Close() // stays open: the command must not need EOF
					defer pr.Close()
					cmd.Stdin = pr
				}
				out := newSyncBuffer()
				cmd.Stdout = out
				var errOut bytes.Buffer
				cmd.Stderr = &errOut
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				out.waitFor(t, ctx, "a\n")
				if strings.Contains(out.String(), "b") {
					t.Fatalf("b before the gate: %q", out.String())
				}
				c.ok("exec", id, "--", "touch "+gate)
				if err := cmd.Wait(); err != nil {
					t.Fatalf("%v: %s", err, errOut.String())
				}
				if out.String() != "a\nb\n" {
					t.Fatalf("stdout %q", out.String())
				}
			})
		}
	})

	t.Run("Shell", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		id := c.create("cli-shell")
		ptmx, tty, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer ptmx.Close()
		defer tty.Close()
		pty.Setsize(ptmx, &pty.Winsize{Rows: 24, Cols: 80})
		before, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, c.bin, "shell", id)
		cmd.Env = c.env
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		out := newSyncBuffer()
		go io.Copy(out, ptmx)

		io.WriteString(ptmx, "echo $((6*7))\r")
		out.waitFor(t, ctx, "42")
		// The remote terminal follows the local window. The resize comes
		// while a command runs, never while readline edits a line: a
		// SIGWINCH mid-line made readline redraw it, and on a loaded
		// machine the line was lost (CI failed here twice). So: start a
		// loop that waits (remotely) for the new size, see it running,
		// then resize.
		io.WriteString(ptmx, `echo waiting-$((2+2)); while [ "$(stty size)" != "30 100" ]; do sleep 0.1; done; echo resized-$((1+1))`+"\r")
		out.waitFor(t, ctx, "waiting-4")
		pty.Setsize(ptmx, &pty.Winsize{Rows: 30, Cols: 100}) // the kernel sends SIGWINCH
		// Ctrl-D only ends the shell once readline reads again: typed
		// while the loop still ran, the remote terminal was in canonical
		// mode and the ^D was taken as EOF for nobody (CI hung here).
		out.waitForAfter(t, ctx, "resized-2", "# ")
		io.WriteString(ptmx, "\x04") // Ctrl-D
		if err := cmd.Wait(); err != nil {
			t.Fatalf("shell: %v\noutput: %q", err, out.String())
		}
		after, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		if after.Lflag != before.Lflag || after.Iflag != before.Iflag || after.Oflag != before.Oflag {
			t.Fatalf("terminal not restored: lflag %#x -> %#x", before.Lflag, after.Lflag)
		}
		// Without a terminal, shell refuses politely.
		if r := c.run("shell", id); r.code != 2 || !strings.Contains(r.stderr, "terminal") {
			t.Fatalf("shell without a terminal: %+v", r)
		}
	})

	// A command cut off by the sandbox's timeout says so, on both exec
	// paths: a session (stdin not a terminal) and /exec/stream (a terminal).
	t.Run("Timeout", func(t *testing.T) {
		t.Parallel()
		id := c.create("cli-timeout", "--timeout", "5")
		const want = "stasis: the sandbox reached its timeout (5s of active time) and was paused"
		r := c.run("exec", id, "--", "sleep 600")
		if r.code != 255 || !strings.HasPrefix(r.stderr, want) {
			t.Errorf("piped: %+v", r)
		}
		// The exec resumes the paused sandbox, which re-arms the timeout.
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		ptmx, tty, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer ptmx.Close()
		defer tty.Close()
		cmd := exec.CommandContext(ctx, c.bin, "exec", id, "--", "sleep 600")
		cmd.Env = c.env
		var errOut bytes.Buffer
		cmd.Stdin, cmd.Stderr = tty, &errOut
		var ee *exec.ExitError
		if err := cmd.Run(); !errors.As(err, &ee) || ee.ExitCode() != 255 || !strings.HasPrefix(errOut.String(), want) {
			t.Errorf("terminal: %v, stderr %q", err, errOut.String())
		}
	})

	// shell ID -- COMMAND runs the command in a terminal, like docker exec -it.
	t.Run("ShellCommand", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		id := c.create("cli-shellcmd")
		ptmx, tty, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer ptmx.Close()
		defer tty.Close()
		cmd := exec.CommandContext(ctx, c.bin, "shell", id[:8], "--", "sh", "-c", "tty; echo $((6*7)); exit 5")
		cmd.Env = c.env
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		out := newSyncBuffer()
		go io.Copy(out, ptmx)
		out.waitFor(t, ctx, "42")
		var ee *exec.ExitError
		if err := cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 5 {
			t.Fatalf("exit: %v, output %q", err, out.String())
		}
		if !strings.Contains(out.String(), "/dev/pts/") {
			t.Errorf("the command had no terminal: %q", out.String())
		}
		if r := c.run("shell", id, "--shell", "sh", "--", "true"); r.code != 2 || !strings.Contains(r.stderr, "not both") {
			t.Errorf("--shell and a command: %+v", r)
		}
	})

	// cp with - copies to standard output and from standard input.
	t.Run("CpStdio", func(t *testing.T) {
		t.Parallel()
		id := c.create("cli-cpstdio")
		data := make([]byte, 200<<10+7)
		rand.Read(data)
		if r := c.runIn(bytes.NewReader(data), "cp", "-", id[:8]+":/tmp/in.bin"); r.code != 0 || r.stdout != "" {
			t.Fatalf("cp - ID:/file: %+v", r)
		}
		if out := c.ok("exec", id, "--", "wc -c < /tmp/in.bin"); strings.TrimSpace(out) != strconv.Itoa(len(data)) {
			t.Errorf("uploaded %s bytes", out)
		}
		r := c.run("cp", id+":/tmp/in.bin", "-")
		if r.code != 0 || r.stdout != string(data) {
			t.Errorf("cp ID:/file -: exit %d, %d bytes, stderr %q", r.code, len(r.stdout), r.stderr)
		}
		if _, err := os.Stat("-"); err == nil {
			os.Remove("-")
			t.Error("cp wrote a file named -")
		}
		// A directory comes out as its zip archive.
		if r := c.run("cp", id+":/tmp", "-"); r.code != 0 || !strings.HasPrefix(r.stdout, "PK\x03\x04") {
			t.Errorf("cp ID:/dir -: exit %d, stderr %q", r.code, r.stderr)
		}
		if r := c.runIn(strings.NewReader("x"), "cp", "-", id+":/tmp"); r.code != 1 || !strings.Contains(r.stderr, "needs a file name") {
			t.Errorf("cp - ID:/dir: %+v", r)
		}
	})

	t.Run("Cp", func(t *testing.T) {
		t.Parallel()
		id := c.create("cli-cp")
		dir := t.TempDir()
		src := filepath.Join(dir, "src")
		bin := make([]byte, 300<<10+3)
		rand.Read(bin)
		mustWrite(t, filepath.Join(src, "a.txt"), []byte("hello\n"), 0o644)
		mustWrite(t, filepath.Join(src, "sub", "deep", "b.bin"), bin, 0o644)
		mustWrite(t, filepath.Join(src, "sub", "empty.txt"), nil, 0o644)
		mustWrite(t, filepath.Join(src, "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o755)
		mustWrite(t, filepath.Join(src, "with space", "x y.txt"), []byte("spaced\n"), 0o600)
		os.MkdirAll(filepath.Join(src, "emptydir"), 0o755)

		// Up: a tree, as individual files.
		var sum map[string]any
		if err := json.Unmarshal([]byte(c.ok("cp", "--progress", "--json", src, id+":/home/user/dir")), &sum); err != nil {
			t.Fatal(err)
		}
		if sum["files"] != 5.0 || sum["target"] != id+":/home/user/dir" {
			t.Errorf("upload summary %v", sum)
		}
		if out := c.ok("exec", id, "--", "cd /home/user/dir && cat a.txt && ./run.sh && test -d emptydir && cat 'with space/x y.txt' && wc -c < sub/deep/b.bin"); out != "hello\nran\nspaced\n"+strconv.Itoa(len(bin))+"\n" {
			t.Errorf("remote tree: %q", out)
		}

		// Down: the tree comes back identical.
		out := filepath.Join(dir, "out")
		c.ok("cp", id+":/home/user/dir", out)
		compareTrees(t, src, out)

		// Into an existing directory, cp -r style.
		c.ok("cp", src, id+":/home/user/dir")
		c.ok("exec", id, "--", "test -f /home/user/dir/src/sub/deep/b.bin")
		into := filepath.Join(dir, "into")
		os.Mkdir(into, 0o755)
		c.ok("cp", id+":/home/user/dir/src", into)
		compareTrees(t, src, filepath.Join(into, "src"))

		// Single files, both ways.
		c.ok("cp", filepath.Join(src, "sub", "deep", "b.bin"), id+":/tmp/single.bin")
		c.ok("cp", id+":/tmp/single.bin", filepath.Join(dir, "single.bin"))
		if got, _ := os.ReadFile(filepath.Join(dir, "single.bin")); !bytes.Equal(got, bin) {
			t.Errorf("single file: %d bytes back", len(got))
		}
		c.ok("cp", id+":/tmp/single.bin", into)
		if got, _ := os.ReadFile(filepath.Join(into, "single.bin")); !bytes.Equal(got, bin) {
			t.Errorf("file into dir: %d bytes back", len(got))
		}
		c.ok("cp", filepath.Join(src, "a.txt"), id+":/home/user/dir/")
		if out := c.ok("exec", id, "--", "cat /home/user/dir/a.txt"); out != "hello\n" {
			t.Errorf("file into remote dir: %q", out)
		}

		// Helpful errors.
		if r := c.run("cp", id+":/nope", filepath.Join(dir, "x")); r.code != 1 || !strings.Contains(r.stderr, "no such file or directory") {
			t.Errorf("missing remote: %+v", r)
		}
		if r := c.run("cp", filepath.Join(dir, "nope"), id+":/tmp/x"); r.code != 1 || !strings.Contains(r.stderr, "no such file or directory") {
			t.Errorf("missing local: %+v", r)
		}
		if r := c.run("cp", "a", "b"); r.code != 2 || !strings.Contains(r.stderr, "ID:/path") {
			t.Errorf("two local paths: %+v", r)
		}
		if r := c.run("cp", src, id+":relative"); r.code != 2 || !strings.Contains(r.stderr, "absolute") {
			t.Errorf("relative remote path: %+v", r)
		}
		if r := c.run("cp", src, "no-such-sandbox:/tmp/x"); r.code != 1 || !strings.Contains(r.stderr, "sandbox no-such-sandbox not found") {
			t.Errorf("unknown sandbox: %+v", r)
		}
	})
}

func mustWrite(t *testing.T, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
}

// compareTrees requires b to hold exactly a's directories and files, with
// the same contents and executable bits.
func compareTrees(t *testing.T, a, b string) {
	t.Helper()
	walk := func(root string) map[string]string {
		m := map[string]string{}
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(root, p)
			if d.IsDir() {
				m[rel] = "dir"
				return nil
			}
			info, _ := d.Info()
			data, _ := os.ReadFile(p)
			m[rel] = "file " + info.Mode().Perm().String() + " " + string(data)
			return nil
		})
		return m
	}
	ma, mb := walk(a), walk(b)
	for k, v := range ma {
		if mb[k] != v {
			t.Errorf("%s: %.40q vs %.40q", k, v, mb[k])
		}
	}
	for k := range mb {
		if _, ok := ma[k]; !ok {
			t.Errorf("extra %s", k)
		}
	}
}
