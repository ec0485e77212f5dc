package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// spareCmdline is how a spare shell shows in /proc/PID/cmdline.
const spareCmdline = "/bin/sh\x00-c\x00. /proc/self/fd/3\x00"

// spareShells lists this process's children that are idle spare shells.
func spareShells() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid := procState(pid); ppid != os.Getpid() {
			continue
		}
		if b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline"); string(b) == spareCmdline {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitSpare waits for the agent to have its spare shell ready and returns
// its pid.
func waitSpare(t *testing.T) int {
	t.Helper()
	var pids []int
	eventually(t, "a spare shell is ready", func() bool {
		pids = spareShells()
		return len(pids) == 1
	})
	return pids[0]
}

// runPid runs a command with stdin and returns its pid too.
func runPid(t *testing.T, c *agentclient.Client, req agentclient.ExecRequest, stdin string) (pid int, stdout, stderr string, st agentclient.ExitStatus) {
	t.Helper()
	p, err := c.Start(testCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if stdin != "" {
		if _, err := p.Write([]byte(stdin)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	var o, e bytes.Buffer
	for {
		ev, err := p.Next()
		if err != nil {
			t.Fatalf("%q: %v", req.Command, err)
		}
		switch ev.Kind {
		case agentclient.EventStdout:
			o.Write(ev.Data)
		case agentclient.EventStderr:
			e.Write(ev.Data)
		case agentclient.EventExit:
			return p.Pid(), o.String(), e.String(), *ev.Exit
		}
	}
}

// A command run on a spare shell behaves exactly as one run by a new
// `sh -c`: same output, status, environment, descriptors and stdin.
func TestSpareShellRunsCommandsLikeANewShell(t *testing.T) {
	cold, _ := startAgent(t, agent.Config{NoSpareShell: true})
	warm, _ := startAgent(t, agent.Config{})
	run(t, warm, agentclient.ExecRequest{Command: "true"}) // the first command starts the spare

	tricky := "it's \"quoted\" $HOME `x` \\ and\nnewline"
	cases := []struct {
		cmd        string
		env        map[string]string
		stdin      string
		sameStderr bool
	}{
		{cmd: `echo "$0" "$#" "$LINENO" "$PPID"; pwd; id -u; umask`, sameStderr: true},
		{cmd: "env | grep -v '^_=' | sort", env: map[string]string{"REQ": tricky, "PATH": "/usr/bin:/bin", "AGENT_VAR": "x"}, sameStderr: true},
		{cmd: "printf '%s' \"$REQ\"", env: map[string]string{"REQ": tricky}, sameStderr: true},
		{cmd: "ls /proc/self/fd", sameStderr: true}, // what a child inherits: 0 1 2, and ls's own 3
		{cmd: "echo out; echo err >&2; exit 7", sameStderr: true},
		{cmd: "cat; read x; echo \"[$x]\"", stdin: "line1\nline2\n", sameStderr: true},
		{cmd: "read x; echo \"got $x\"", stdin: "hello\n", sameStderr: true},
		{cmd: "trap 'echo bye' EXIT; echo hi", sameStderr: true},
		{cmd: "set -e; false; echo unreachable", sameStderr: true},
		{cmd: "sleep 0.1 & wait; echo waited", sameStderr: true},
		{cmd: "kill -TERM $$; echo survived", sameStderr: true},
		{cmd: "echo first\necho second $LINENO", sameStderr: true},
		{cmd: "cat <<EOF\nheredoc $LINENO\nEOF", sameStderr: true},
		{cmd: "if then fi"}, // a syntax error: status 2 (the message names the script)
		{cmd: "exit", sameStderr: true},
		// The spare is started with SHELL (bash then skips its account
		// lookup); a command sees SHELL as a new shell would have it.
		{cmd: `echo "${SHELL-unset}"; export -p | grep -c ' SHELL=' || true`, sameStderr: true},
		{cmd: `echo "${SHELL-unset}"; export -p | grep -c ' SHELL='`, env: map[string]string{"SHELL": "/bin/given"}, sameStderr: true},
	}
	for _, tc := range cases {
		req := agentclient.ExecRequest{Command: tc.cmd, Env: tc.env}
		_, wantOut, wantErr, wantSt := runPid(t, cold, req, tc.stdin)
		spare := waitSpare(t)
		pid, out, errOut, st := runPid(t, warm, req, tc.stdin)
		if pid != spare {
			t.Errorf("%q ran as pid %d, not on the spare shell %d", tc.cmd, pid, spare)
		}
		if out != wantOut || st != wantSt || tc.sameStderr && errOut != wantErr {
			t.Errorf("%q on a spare shell:\n got %q %q %+v\nwant %q %q %+v", tc.cmd, out, errOut, st, wantOut, wantErr, wantSt)
		}
	}
}

// Commands sent back to back, each as soon as the previous one's exit
// arrived (with the exec connection dialed ahead, as stasisd does), all run
// on spare shells: the next spare is claimed before an exit is sent, so no
// command forks a shell of its own beside the spare being started.
func TestBackToBackCommandsRunOnSpares(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	run(t, c, agentclient.ExecRequest{Command: "true"}) // the first command starts the spare
	const n = 40
	for i := 0; i < n; i++ {
		out, _, st := run(t, c, agentclient.ExecRequest{Command: "cat /proc/$$/cmdline"})
		if st.ExitCode != 0 || out != spareCmdline {
			t.Fatalf("command %d of %d ran on %q (exit %+v), not on a spare shell", i+1, n, out, st)
		}
	}
}

// Commands a spare cannot run as `sh -c` would still run, on a new shell,
// and leave the spare for the next command.
func TestSpareShellNotUsedWhenItWouldDiffer(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	run(t, c, agentclient.ExecRequest{Command: "true"})
	dir := t.TempDir()
	for _, req := range []agentclient.ExecRequest{
		{Command: "tr '\\0' '\\n' </proc/$$/environ | grep '^A-B='", Env: map[string]string{"A-B": "dash"}}, // not a shell name
		{Command: "echo $IFS | od -c | head -1", Env: map[string]string{"IFS": ":"}},                        // managed by the shell
		{Command: "pwd", WorkingDir: dir},
		{Command: "echo " + strings.Repeat("x", 40<<10) + " | wc -c"}, // too long to hand over
		{Command: "tty || true", PTY: &agentclient.PTYSize{Cols: 80, Rows: 24}},
	} {
		spare := waitSpare(t)
		pid, out, _, st := runPid(t, c, req, "")
		if pid == spare {
			t.Errorf("%.40q ran on the spare shell", req.Command)
		}
		if st.ExitCode != 0 || out == "" {
			t.Errorf("%.40q: %q %+v", req.Command, out, st)
		}
		if req.WorkingDir != "" && out != dir+"\n" {
			t.Errorf("pwd %q, want %s", out, dir)
		}
		if req.Env["A-B"] != "" && out != "A-B=dash\n" {
			t.Errorf("env A-B: %q", out)
		}
	}
}

// A spare that dies while waiting (pkill sh, the watchdog) is replaced; the
// next command runs anyway.
func TestSpareShellKilled(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	run(t, c, agentclient.ExecRequest{Command: "true"})
	spare := waitSpare(t)
	syscall.Kill(spare, syscall.SIGKILL)
	waitGone(t, spare)
	pid, out, _, st := runPid(t, c, agentclient.ExecRequest{Command: "echo still works"}, "")
	if out != "still works\n" || st.ExitCode != 0 || pid == spare {
		t.Fatalf("after the spare was killed: pid %d %q %+v", pid, out, st)
	}
	if next := waitSpare(t); next == spare {
		t.Fatalf("spare %d not replaced", spare)
	}
}

// Before a checkpoint the agent drops its spare (a process less to save and
// restore) and starts none until the next command, which still runs.
func TestQuiesceDropsSpareUntilNextCommand(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	run(t, c, agentclient.ExecRequest{Command: "true"})
	spare := waitSpare(t)
	if err := c.Quiesce(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	// Gone (reaped) by the time the call returns, not just signalled.
	if st, _ := procState(spare); st != "" {
		t.Fatalf("spare %d still there after quiesce (state %s)", spare, st)
	}
	time.Sleep(300 * time.Millisecond)
	if pids := spareShells(); len(pids) != 0 {
		t.Fatalf("a spare %v was started again before any command", pids)
	}
	pid, out, _, st := runPid(t, c, agentclient.ExecRequest{Command: "echo after quiesce"}, "")
	if out != "after quiesce\n" || st.ExitCode != 0 || pid == spare {
		t.Fatalf("after quiesce: pid %d %q %+v", pid, out, st)
	}
	waitSpare(t)
	// Quiescing twice, or with no spare, is fine.
	for i := 0; i < 2; i++ {
		if err := c.Quiesce(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	if pids := spareShells(); len(pids) != 0 {
		t.Fatalf("spares %v after quiesce", pids)
	}
}

// Shutdown kills the spare shell: the agent leaves no process behind.
func TestSpareShellEndsWithServer(t *testing.T) {
	srv, addr, done := serveAgent(t, agent.Config{TokenHash: agentproto.TokenHash(testToken)})
	c := agentclient.New(addr, testToken)
	defer c.CloseIdleConnections()
	run(t, c, agentclient.ExecRequest{Command: "true"})
	spare := waitSpare(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitGone(t, spare)
}

// A spare's outputs are made ready ahead for a buffered run (outside Go's
// poller); a stream that takes the spare reads them through the poller
// instead. Either way the exec ends although a background job holds them
// open, and the output written before is delivered.
func TestSpareShellOutputsWithBackgroundJob(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	run(t, c, agentclient.ExecRequest{Command: "true"}) // the first command starts the spare
	req := agentclient.ExecRequest{Command: "echo $$; sleep 100 & echo $!; echo err >&2"}
	for _, stream := range []bool{true, false} {
		spare := waitSpare(t)
		var out, errOut string
		var st agentclient.ExitStatus
		if stream {
			_, out, errOut, st = runPid(t, c, req, "")
		} else {
			out, errOut, st = run(t, c, req)
		}
		var shell, bg int
		if _, err := fmt.Sscan(out, &shell, &bg); err != nil || errOut != "err\n" || st.ExitCode != 0 {
			t.Fatalf("stream %v: got %q %q %+v", stream, out, errOut, st)
		}
		syscall.Kill(bg, syscall.SIGKILL)
		waitGone(t, bg)
		if shell != spare {
			t.Errorf("stream %v: ran in shell %d, not on the spare shell %d", stream, shell, spare)
		}
	}
}

// A command's stdin, stdout and stderr are blocking pipes, on a spare shell
// and on a new one: only the agent's ends are non-blocking.
func TestCommandStdioIsBlocking(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	run(t, c, agentclient.ExecRequest{Command: "true"}) // the first command starts the spare
	const flags = `for f in 0 1 2; do sed -n 's/^flags:[[:space:]]*//p' /proc/self/fdinfo/$f; done`
	for _, req := range []agentclient.ExecRequest{
		{Command: flags}, // on the spare
		{Command: flags, WorkingDir: t.TempDir()}, // on a new shell
	} {
		waitSpare(t)
		out, _, st := run(t, c, req)
		lines := strings.Fields(out)
		if st.ExitCode != 0 || len(lines) != 3 {
			t.Fatalf("%q: %q %+v", req.Command, out, st)
		}
		for fd, l := range lines {
			v, err := strconv.ParseUint(l, 8, 32)
			if err != nil || v&syscall.O_NONBLOCK != 0 {
				t.Errorf("fd %d (dir %q): flags %s, want blocking", fd, req.WorkingDir, l)
			}
		}
	}
}
