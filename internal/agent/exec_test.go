package agent_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

func run(t *testing.T, c *agentclient.Client, req agentclient.ExecRequest) (stdout, stderr string, st agentclient.ExitStatus) {
	t.Helper()
	var o, e bytes.Buffer
	st, err := c.Run(testCtx(t), req, &o, &e)
	if err != nil {
		t.Fatalf("Run(%q): %v", req.Command, err)
	}
	return o.String(), e.String(), st
}

// readUntil reads events until stdout contains want, returning all stdout.
func readUntil(t *testing.T, p *agentclient.Process, want string) string {
	t.Helper()
	var out strings.Builder
	for !strings.Contains(out.String(), want) {
		ev, err := p.Next()
		if err != nil {
			t.Fatalf("waiting for %q (have %q): %v", want, out.String(), err)
		}
		switch ev.Kind {
		case agentclient.EventStdout:
			out.Write(ev.Data)
		case agentclient.EventExit:
			t.Fatalf("exited (%+v) before printing %q; stdout %q", *ev.Exit, want, out.String())
		}
	}
	return out.String()
}

// wait reads the rest of a process's events and returns its stdout and exit.
func wait(t *testing.T, p *agentclient.Process) (string, agentclient.ExitStatus) {
	t.Helper()
	var out strings.Builder
	for {
		ev, err := p.Next()
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		switch ev.Kind {
		case agentclient.EventStdout:
			out.Write(ev.Data)
		case agentclient.EventExit:
			if _, err := p.Next(); err != io.EOF {
				t.Errorf("Next after exit: %v, want io.EOF", err)
			}
			return out.String(), *ev.Exit
		}
	}
}

func TestExecOutputAndExitCode(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	out, errOut, st := run(t, c, agentclient.ExecRequest{Command: "echo out; echo err >&2; exit 3"})
	if out != "out\n" || errOut != "err\n" || st.ExitCode != 3 || st.Error != "" {
		t.Fatalf("got stdout %q stderr %q status %+v", out, errOut, st)
	}
	_, _, st = run(t, c, agentclient.ExecRequest{Command: "no-such-command-xyz"})
	if st.ExitCode != 127 {
		t.Fatalf("unknown command: exit %d, want 127", st.ExitCode)
	}
	_, _, st = run(t, c, agentclient.ExecRequest{Command: "kill -TERM $$"})
	if st.ExitCode != 128+15 {
		t.Fatalf("killed by SIGTERM: exit %d, want 143", st.ExitCode)
	}
}

func TestExecStdin(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{Command: "cat; echo end"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Pid() <= 0 {
		t.Fatalf("pid %d", p.Pid())
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320 KB, several frames
	go func() {
		p.Write([]byte("hello "))
		p.Write(big)
		p.CloseStdin()
	}()
	out, st := wait(t, p)
	if want := "hello " + string(big) + "end\n"; out != want || st.ExitCode != 0 {
		t.Fatalf("stdout %d bytes (want %d), status %+v", len(out), len(want), st)
	}
}

func TestExecStreamsBeforeExit(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{Command: "echo first; read x; echo second $x"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// "first" must arrive while the command is still blocked on stdin.
	readUntil(t, p, "first\n")
	p.Write([]byte("42\n"))
	out, st := wait(t, p)
	if out != "second 42\n" || st.ExitCode != 0 {
		t.Fatalf("got %q %+v", out, st)
	}
}

func TestExecLargeOutput(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	var o, e countWriter
	st, err := c.Run(testCtx(t), agentclient.ExecRequest{
		Command: "head -c 3000000 /dev/zero; head -c 1000001 /dev/zero >&2",
	}, &o, &e)
	if err != nil {
		t.Fatal(err)
	}
	if o.n != 3000000 || e.n != 1000001 || st.ExitCode != 0 {
		t.Fatalf("stdout %d stderr %d status %+v", o.n, e.n, st)
	}
}

// A buffered run (Run) gathers output between reads: output in thousands
// of small writes on both streams, more than a pipe holds, and output that
// trickles in slower than the gathering, all arrive whole and in order.
func TestExecBufferedRunGathersOutputWhole(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	const lines = 3000
	var wantOut, wantErr strings.Builder
	for i := range lines {
		fmt.Fprintf(&wantOut, "out %d\n", i)
		fmt.Fprintf(&wantErr, "err %d\n", i)
	}
	wantOut.WriteString(strings.Repeat("x", 2500000))
	out, errOut, st := run(t, c, agentclient.ExecRequest{Command: fmt.Sprintf(
		"i=0; while [ $i -lt %d ]; do echo out $i; echo err $i >&2; i=$((i+1)); done; head -c 2500000 /dev/zero | tr '\\0' x", lines)})
	if st.ExitCode != 0 {
		t.Fatalf("status %+v, stderr %.200q", st, errOut)
	}
	if out != wantOut.String() {
		t.Errorf("stdout: %d bytes, want %d (first difference at %d)", len(out), wantOut.Len(), firstDiff(out, wantOut.String()))
	}
	if errOut != wantErr.String() {
		t.Errorf("stderr: %d bytes, want %d (first difference at %d)", len(errOut), wantErr.Len(), firstDiff(errOut, wantErr.String()))
	}

	out, _, st = run(t, c, agentclient.ExecRequest{Command: "echo a; sleep 0.05; echo b; sleep 0.05; printf c"})
	if out != "a\nb\nc" || st.ExitCode != 0 {
		t.Fatalf("trickled output: got %q %+v", out, st)
	}
	// After a silence (the pump sleeps longer), more than the pipe holds.
	out, _, st = run(t, c, agentclient.ExecRequest{Command: "sleep 0.4; head -c 3000000 /dev/zero | tr '\\0' z"})
	if out != strings.Repeat("z", 3000000) || st.ExitCode != 0 {
		t.Fatalf("output after a silence: %d bytes %+v, want 3000000 z's", len(out), st)
	}
}

func firstDiff(a, b string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

type countWriter struct{ n int }

func (w *countWriter) Write(b []byte) (int, error) { w.n += len(b); return len(b), nil }

// A client that does not read stalls the command instead of making the agent
// buffer its output.
func TestExecBackPressure(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	const total = 64 << 20
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{Command: "exec head -c " + strconv.Itoa(total) + " /dev/zero"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	eventually(t, "head blocks writing to its pipe", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", p.Pid()))
		return strings.Contains(string(b), "pipe_write")
	})
	n := 0
	for {
		ev, err := p.Next()
		if err != nil {
			t.Fatal(err)
		}
		if ev.Kind == agentclient.EventExit {
			if ev.Exit.ExitCode != 0 {
				t.Fatalf("exit %+v", *ev.Exit)
			}
			break
		}
		n += len(ev.Data)
	}
	if n != total {
		t.Fatalf("got %d bytes, want %d", n, total)
	}
}

func TestExecEnvironment(t *testing.T) {
	c, _ := startAgent(t, agent.Config{
		Env: []string{"PATH=/usr/bin:/bin", "AGENT_VAR=from-agent", "HOME=/wrong", "STASIS_LEAK=secret"},
	})
	out, _, st := run(t, c, agentclient.ExecRequest{
		Command: "env",
		Env:     map[string]string{"REQ_VAR": "from request", "AGENT_VAR": "overridden"},
	})
	if st.ExitCode != 0 {
		t.Fatalf("status %+v", st)
	}
	env := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(line, "=")
		env[k] = v
		if strings.HasPrefix(k, "STASIS_") {
			t.Errorf("child sees %s", line)
		}
	}
	want := map[string]string{
		"PATH":      "/usr/bin:/bin",
		"AGENT_VAR": "overridden",
		"REQ_VAR":   "from request",
		"HOME":      "/root",
		"USER":      "root",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s=%q, want %q", k, env[k], v)
		}
	}
}

func TestExecWorkingDir(t *testing.T) {
	testenv.RequireRoot(t) // the home directory of root
	c, _ := startAgent(t, agent.Config{})
	if out, _, _ := run(t, c, agentclient.ExecRequest{Command: "pwd"}); out != "/root\n" {
		t.Errorf("default workdir %q, want the user's home /root", out)
	}
	dir := t.TempDir()
	if out, _, _ := run(t, c, agentclient.ExecRequest{Command: "pwd", WorkingDir: dir}); out != dir+"\n" {
		t.Errorf("workdir %q, want %q", out, dir)
	}

	c2, _ := startAgent(t, agent.Config{DefaultWorkdir: dir})
	if out, _, _ := run(t, c2, agentclient.ExecRequest{Command: "pwd"}); out != dir+"\n" {
		t.Errorf("configured default workdir: %q, want %q", out, dir)
	}

	// A bad working dir is a start failure: exit -1 with a reason, no output.
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{Command: "echo ran", WorkingDir: "/does/not/exist"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Pid() != 0 {
		t.Errorf("pid %d for a command that did not start", p.Pid())
	}
	out, st := wait(t, p)
	if out != "" || st.ExitCode != agentproto.ExitCodeStartFailed || !strings.Contains(st.Error, "/does/not/exist") {
		t.Fatalf("got %q %+v", out, st)
	}
}

func TestExecAsUser(t *testing.T) {
	testenv.RequireRoot(t) // to switch users
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("user nobody: %v", err)
	}
	c, _ := startAgent(t, agent.Config{DefaultUser: "nobody"})
	out, _, st := run(t, c, agentclient.ExecRequest{Command: `echo "$(id -u) $(id -g) $USER $HOME"`})
	if want := fmt.Sprintf("%s %s nobody %s\n", u.Uid, u.Gid, u.HomeDir); out != want || st.ExitCode != 0 {
		t.Fatalf("got %q %+v, want %q", out, st, want)
	}
	// On a PTY too, and the terminal is theirs.
	out, _, st = run(t, c, agentclient.ExecRequest{Command: `echo "$(id -u) $(stat -c %u "$(tty)")"`, PTY: &agentclient.PTYSize{}})
	if want := u.Uid + " " + u.Uid + "\r\n"; out != want || st.ExitCode != 0 {
		t.Fatalf("pty: got %q %+v, want %q", out, st, want)
	}
	// The request can pick another user.
	out, _, _ = run(t, c, agentclient.ExecRequest{Command: "id -u", User: "root"})
	if out != "0\n" {
		t.Fatalf("as root: %q", out)
	}
	_, _, st = run(t, c, agentclient.ExecRequest{Command: "true", User: "no-such-user-xyz"})
	if st.ExitCode != agentproto.ExitCodeStartFailed || !strings.Contains(st.Error, "no-such-user-xyz") {
		t.Fatalf("unknown user: %+v", st)
	}
}

func TestExecTimeout(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	out, _, st := run(t, c, agentclient.ExecRequest{Command: "echo start; sleep 30", TimeoutS: 1})
	if out != "start\n" || st.ExitCode != 128+9 || !strings.Contains(st.Error, "timed out after 1s") {
		t.Fatalf("got %q %+v", out, st)
	}
}

func TestExecSignal(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{
		Command: `trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 1; done`,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	readUntil(t, p, "ready\n")
	if err := p.Signal("SIGTERM"); err != nil {
		t.Fatal(err)
	}
	out, st := wait(t, p)
	if out != "got TERM\n" || st.ExitCode != 7 {
		t.Fatalf("got %q %+v", out, st)
	}
	if err := p.Signal("SIGBOGUS"); err == nil {
		t.Error("Signal(SIGBOGUS) succeeded")
	}
}

// Signals go to the whole process group, background jobs included.
func TestExecSignalGroup(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{Command: "sleep 100 & echo $!; wait"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	bg, _ := strconv.Atoi(strings.TrimSpace(readUntil(t, p, "\n")))
	if err := p.Signal("9"); err != nil {
		t.Fatal(err)
	}
	_, st := wait(t, p)
	if st.ExitCode != 128+9 {
		t.Fatalf("status %+v", st)
	}
	waitGone(t, bg)
}

// Dropping the connection before the command exits kills its process group.
func TestExecDisconnectKillsGroup(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{Command: "sleep 100 & echo $!; wait"})
	if err != nil {
		t.Fatal(err)
	}
	bg, _ := strconv.Atoi(strings.TrimSpace(readUntil(t, p, "\n")))
	shellPid := p.Pid()
	if st, _ := procState(bg); st == "" || st == "Z" {
		t.Fatalf("background sleep %d not running: %q", bg, st)
	}
	p.Close()
	if _, err := p.Next(); !errors.Is(err, agentclient.ErrProcessClosed) {
		t.Errorf("Next after Close: %v", err)
	}
	waitGone(t, shellPid)
	waitGone(t, bg)
}

// A background job that keeps stdout open neither blocks the exec nor dies
// with it.
func TestExecBackgroundJobSurvives(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	out, _, st := run(t, c, agentclient.ExecRequest{Command: "sleep 100 & echo $!"})
	if st.ExitCode != 0 {
		t.Fatalf("status %+v", st)
	}
	bg, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("output %q", out)
	}
	// Same for a PTY session, with a job that ignores the hangup the kernel
	// sends when the terminal's session leader exits (as on any terminal).
	out, _, st = run(t, c, agentclient.ExecRequest{
		Command: "trap '' HUP; sleep 100 & echo $!",
		PTY:     &agentclient.PTYSize{Cols: 80, Rows: 24},
	})
	if st.ExitCode != 0 {
		t.Fatalf("pty status %+v", st)
	}
	bg2, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("pty output %q", out)
	}
	// The shell has been reaped and the exec connection is closed: the jobs
	// must still run, now as orphans (our children, since we are a subreaper).
	for _, pid := range []int{bg, bg2} {
		if st, ppid := procState(pid); st == "" || st == "Z" || ppid != os.Getpid() {
			t.Fatalf("background job %d: state %q parent %d", pid, st, ppid)
		}
		syscall.Kill(pid, syscall.SIGKILL)
	}
	// The reaper collects them.
	waitGone(t, bg)
	waitGone(t, bg2)
}

// Orphans are reaped; the commands' own exit statuses are not stolen.
func TestReaper(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	var orphans []int
	for i := 0; i < 5; i++ {
		out, _, st := run(t, c, agentclient.ExecRequest{Command: "sleep 0.2 & echo $!; exit 0"})
		if st.ExitCode != 0 {
			t.Fatalf("status %+v", st)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(out))
		orphans = append(orphans, pid)
	}
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Fast exits racing with orphans exiting.
			cmd := fmt.Sprintf("(sleep 0.01 &); exit %d", i)
			if i%2 == 0 {
				cmd = fmt.Sprintf("exit %d", i)
			}
			st, err := c.Run(testCtx(t), agentclient.ExecRequest{Command: cmd}, nil, nil)
			if err != nil {
				errs <- err
			} else if st.ExitCode != i {
				errs <- fmt.Errorf("command %d: exit %d (%s)", i, st.ExitCode, st.Error)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, pid := range orphans {
		waitGone(t, pid)
	}
	eventually(t, "no zombie children", func() bool { return len(zombieChildren()) == 0 })
}

func TestExecPTY(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{
		Command: `tty; stty size; echo "TERM=$TERM"; read x; stty size; echo "got $x"`,
		PTY:     &agentclient.PTYSize{Cols: 100, Rows: 30},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	out := readUntil(t, p, "TERM=")
	if !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "30 100") {
		t.Fatalf("pty output %q", out)
	}
	if err := p.Resize(120, 40); err != nil {
		t.Fatal(err)
	}
	p.Write([]byte("abc\n"))
	rest, st := wait(t, p)
	if !strings.Contains(rest, "40 120") || !strings.Contains(rest, "got abc") || st.ExitCode != 0 {
		t.Fatalf("after resize: %q %+v", rest, st)
	}
	// PTY output uses terminal line endings.
	if !strings.Contains(rest, "\r\n") {
		t.Errorf("no CRLF in pty output %q", rest)
	}
}

func TestExecPTYStdinClose(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{
		Command: "cat >/dev/null; echo eof",
		PTY:     &agentclient.PTYSize{},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.CloseStdin()
	out, st := wait(t, p)
	if !strings.Contains(out, "eof") || st.ExitCode != 0 {
		t.Fatalf("got %q %+v", out, st)
	}
}

func TestExecRequiresUpgrade(t *testing.T) {
	_, addr := startAgent(t, agent.Config{})
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+agentproto.PathExec, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestExecStartErrors(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	for _, req := range []agentclient.ExecRequest{
		{Command: "   "},
		{Command: "true", Env: map[string]string{"A=B": "x"}},
		{Command: "true", TimeoutS: -1},
	} {
		_, _, st := run(t, c, req)
		if st.ExitCode != agentproto.ExitCodeStartFailed || st.Error == "" {
			t.Errorf("%+v: status %+v", req, st)
		}
	}
}
