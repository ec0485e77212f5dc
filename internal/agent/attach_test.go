package agent_test

import (
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// A kept command survives its connection: it keeps running and counting,
// what it printed meanwhile is held, and Attach by pid takes the stream
// over (output, input, signals, exit).
func TestKeptCommandSurvivesItsConnectionAndIsAttachedByPid(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{
		Command: `i=0; while [ $i -lt 1000 ]; do i=$((i+1)); echo "n=$i"; sleep 0.05; done`,
		Keep:    true,
	})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.Pid()
	readUntil(t, p, "n=2\n")
	p.Close() // a plain exec would be killed now

	// It kept counting while no one was attached; the held output comes first.
	waitCount := func(p *agentclient.Process, want string) string {
		t.Helper()
		return readUntil(t, p, want)
	}
	a, err := c.Attach(testCtx(t), pid)
	if err != nil {
		t.Fatal(err)
	}
	if a.Pid() != pid {
		t.Fatalf("attached pid = %d, want %d", a.Pid(), pid)
	}
	out := waitCount(a, "n=20\n")
	if !strings.Contains(out, "n=5\n") {
		t.Errorf("held output missing: attached stream starts %q", out[:min(len(out), 80)])
	}

	// A second attach replaces the first; signals reach the command.
	b, err := c.Attach(testCtx(t), pid)
	if err != nil {
		t.Fatal(err)
	}
	waitCount(b, "n=25\n")
	if err := b.Signal("KILL"); err != nil {
		t.Fatal(err)
	}
	_, st := wait(t, b)
	if st.ExitCode != 137 {
		t.Errorf("exit = %+v, want 137 (SIGKILL)", st)
	}
	// The replaced connection ended without an exit.
	for {
		ev, err := a.Next()
		if err != nil {
			break
		}
		if ev.Kind == agentclient.EventExit {
			t.Fatalf("replaced attach got the exit %+v", *ev.Exit)
		}
	}

	// An ended kept command can still be attached to for a while: it gets the exit.
	late, err := c.Attach(testCtx(t), pid)
	if err != nil {
		t.Fatal(err)
	}
	if _, st := wait(t, late); st.ExitCode != 137 {
		t.Errorf("late attach exit = %+v, want 137", st)
	}
}

// Input sent on an attached connection reaches the kept command's stdin.
func TestKeptCommandTakesInputAfterAttach(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{Command: `read line; echo "got $line"`, Keep: true})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.Pid()
	p.Close()
	a, err := c.Attach(testCtx(t), pid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	out, st := wait(t, a)
	if out != "got hello\n" || st.ExitCode != 0 {
		t.Errorf("stdout %q exit %+v, want \"got hello\\n\" 0", out, st)
	}
}

// Attaching to a pid the agent does not keep says so; a plain (not kept)
// command cannot be attached to.
func TestAttachUnknownPid(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	p, err := c.Start(testCtx(t), agentclient.ExecRequest{Command: "sleep 30"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, pid := range []int{p.Pid(), 999999} {
		a, err := c.Attach(testCtx(t), pid)
		if err != nil {
			t.Fatal(err)
		}
		_, st := wait(t, a)
		if st.ExitCode != agentproto.ExitCodeStartFailed || !strings.Contains(st.Error, "no kept command") {
			t.Errorf("attach %d: exit %+v, want start failure naming no kept command", pid, st)
		}
	}
}
