package agent_test

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// hogEnv makes the test binary a memory hog: it allocates and touches that
// many MiB, says so, and sleeps (see init).
const hogEnv = "AGENT_TEST_HOG_MIB"

func init() {
	if v := os.Getenv(hogEnv); v != "" {
		mib, _ := strconv.Atoi(v)
		b := make([]byte, mib<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		fmt.Println("allocated")
		time.Sleep(time.Minute)
		runtime.KeepAlive(b)
		os.Exit(0)
	}
}

// hogCommand is a shell command that runs the test binary as a hog of mib MiB.
func hogCommand(t *testing.T, mib int) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s=%d %s", hogEnv, mib, exe)
}

// descendantsRSS is the memory the watchdog sees in these tests: the RSS of
// this process's descendants (the commands the agent runs), as if they were
// all a sandbox held.
func descendantsRSS() (total, used uint64, err error) {
	me := os.Getpid()
	parent := map[int]int{}
	rss := map[int]uint64{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 22 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pages, _ := strconv.ParseUint(f[21], 10, 64)
		parent[pid], rss[pid] = ppid, pages*uint64(os.Getpagesize())
	}
	for pid, r := range rss {
		for p, n := parent[pid], 0; p > 1 && n < 64; p, n = parent[p], n+1 {
			if p == me {
				used += r
				break
			}
		}
	}
	return 4 << 30, used, nil
}

// startWatched runs an agent with a watchdog and returns a client for it.
func startWatched(t *testing.T, cfg agent.Config, wcfg agent.WatchdogConfig) *agentclient.Client {
	t.Helper()
	cfg.TokenHash = agentproto.TokenHash(testToken)
	cfg.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
	srv, addr, done := serveAgent(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		srv.RunWatchdog(ctx, wcfg)
	}()
	t.Cleanup(func() {
		cancel()
		<-stopped
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		srv.Shutdown(sctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	c := agentclient.New(addr, testToken)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func memWatchdog() agent.WatchdogConfig {
	return agent.WatchdogConfig{
		MemoryLimit: 100 << 20,
		MemInfo:     descendantsRSS,
		MinInterval: 5 * time.Millisecond,
		MaxInterval: 20 * time.Millisecond,
	}
}

// A command over the budget is killed, its whole process group, and its
// exec says why; other commands live on.
func TestWatchdogKillsMemoryHog(t *testing.T) {
	c := startWatched(t, agent.Config{}, memWatchdog())
	bystander, err := c.Start(testCtx(t), agentclient.ExecRequest{Command: "echo ready; sleep 100"})
	if err != nil {
		t.Fatal(err)
	}
	defer bystander.Close()
	readUntil(t, bystander, "ready\n")

	out, _, st := run(t, c, agentclient.ExecRequest{Command: "sleep 100 & " + hogCommand(t, 300) + "; echo survived"})
	if st.ExitCode != 128+9 || st.Error != "killed: out of memory (sandbox limit 100 MiB)" || strings.Contains(out, "survived") {
		t.Fatalf("hog: stdout %q status %+v; want 137 with an out-of-memory error", out, st)
	}
	if st, _ := procState(bystander.Pid()); st == "" || st == "Z" {
		t.Fatalf("bystander command was killed too (state %q)", st)
	}
	// The agent still works.
	if out, _, st := run(t, c, agentclient.ExecRequest{Command: "echo ok"}); out != "ok\n" || st.ExitCode != 0 {
		t.Fatalf("after the kill: %q %+v", out, st)
	}
}

// A hog left running by a finished command is killed alone: its process
// group (its siblings) is not a running command's.
func TestWatchdogKillsOnlyTheHogOfAFinishedCommand(t *testing.T) {
	c := startWatched(t, agent.Config{}, memWatchdog())
	out, _, st := run(t, c, agentclient.ExecRequest{Command: "sleep 100 >/dev/null & echo $!"})
	sibling, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || st.ExitCode != 0 {
		t.Fatalf("sibling: %q %+v", out, st)
	}
	defer syscall.Kill(sibling, syscall.SIGKILL)
	out, _, st = run(t, c, agentclient.ExecRequest{Command: hogCommand(t, 300) + " >/dev/null & echo $!"})
	hog, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || st.ExitCode != 0 {
		t.Fatalf("hog: %q %+v", out, st)
	}
	waitGone(t, hog)
	if st, _ := procState(sibling); st == "" || st == "Z" {
		t.Fatalf("the hog's sibling was killed too (state %q)", st)
	}
}

// Under the budget nothing is killed.
func TestWatchdogLeavesModestCommandsAlone(t *testing.T) {
	c := startWatched(t, agent.Config{}, memWatchdog())
	// Wait until the hog holds its memory (a fixed sleep was too short on
	// a loaded machine), then give the watchdog many looks at it.
	f := filepath.Join(t.TempDir(), "hog.out")
	out, _, st := run(t, c, agentclient.ExecRequest{Command: hogCommand(t, 30) + " > " + f +
		" & until grep -q allocated " + f + "; do sleep 0.02; done; sleep 0.5; kill $!; cat " + f + "; echo done"})
	if out != "allocated\ndone\n" || st.ExitCode != 0 || st.Error != "" {
		t.Fatalf("modest command: %q %+v", out, st)
	}
}

// A command with too many processes is killed, all of it, with a reason.
// (The test starts sleeping processes, not a real fork bomb: it runs on the
// host.)
func TestWatchdogKillsTooManyProcesses(t *testing.T) {
	c := startWatched(t, agent.Config{}, agent.WatchdogConfig{
		MemoryLimit:  1 << 40,
		MemInfo:      func() (uint64, uint64, error) { return 4 << 30, 0, nil },
		MaxProcesses: 32,
		MinInterval:  5 * time.Millisecond,
		MaxInterval:  20 * time.Millisecond,
	})
	_, _, st := run(t, c, agentclient.ExecRequest{Command: "for i in $(seq 60); do sleep 100 & done; wait"})
	if st.ExitCode != 128+9 || st.Error != "killed: too many processes (sandbox limit 32)" {
		t.Fatalf("status %+v; want 137 with a too-many-processes error", st)
	}
	// A few processes are fine.
	out, _, st := run(t, c, agentclient.ExecRequest{Command: "for i in 1 2 3 4 5; do sleep 1 & done; wait; echo ok"})
	if out != "ok\n" || st.ExitCode != 0 {
		t.Fatalf("a few processes: %q %+v", out, st)
	}
}

// maxProcesses returns the soft and hard "Max processes" of a limits file.
func maxProcesses(t *testing.T, limits string) (soft, hard string) {
	t.Helper()
	for _, line := range strings.Split(limits, "\n") {
		if rest, ok := strings.CutPrefix(line, "Max processes"); ok {
			f := strings.Fields(rest)
			if len(f) >= 2 {
				return f[0], f[1]
			}
		}
	}
	t.Fatalf("no Max processes in %q", limits)
	return "", ""
}

// Commands get RLIMIT_NPROC; the agent keeps its own. Also where the agent
// starts shells with ForkExec instead of spawn (see forkExec).
func TestCommandsGetProcessLimit(t *testing.T) {
	t.Run("spawn", func(t *testing.T) { testCommandsGetProcessLimit(t, false) })
	t.Run("ForkExec", func(t *testing.T) {
		defer agent.ForceForkExec()()
		testCommandsGetProcessLimit(t, true)
	})
}

func testCommandsGetProcessLimit(t *testing.T, forkExec bool) {
	b, err := os.ReadFile("/proc/self/limits")
	if err != nil {
		t.Fatal(err)
	}
	mySoft, myHard := maxProcesses(t, string(b))
	c, _ := startAgent(t, agent.Config{MaxProcs: 77})

	// The limits of a running command, read once it has started (the agent
	// sets them before it says so).
	limitsOf := func(user string) (soft, hard string) {
		t.Helper()
		p, err := c.Start(testCtx(t), agentclient.ExecRequest{Command: "exec sleep 100", User: user})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", p.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		return maxProcesses(t, string(b))
	}
	if soft, hard := limitsOf("root"); soft != "77" || hard != "77" {
		t.Errorf("root command: Max processes %s/%s, want 77/77", soft, hard)
	}
	// Commands of another user inherit a soft limit (prlimit on them is not
	// allowed without CAP_SYS_RESOURCE).
	if _, err := user.Lookup("nobody"); err == nil {
		if soft, hard := limitsOf("nobody"); soft != "141" || hard != myHard {
			t.Errorf("nobody's command: Max processes %s/%s, want 141/%s", soft, hard, myHard)
		}
	}
	// Whatever a command runs inherits its limit at once: spawn's shell has
	// it before its exec; ForkExec's may fork with the one it inherited.
	out, _, st := run(t, c, agentclient.ExecRequest{Command: "cat /proc/self/limits", User: "root"})
	if soft, _ := maxProcesses(t, out); st.ExitCode != 0 || soft != "77" && !(forkExec && soft == "141") {
		t.Errorf("a root command's child: Max processes %s (%+v)", soft, st)
	}
	// The agent lowers its own soft limit only around a fork (see forkExec),
	// which may be under way now for the next spare shell: it must be back.
	var soft, hard string
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ = os.ReadFile("/proc/self/limits")
		if soft, hard = maxProcesses(t, string(b)); soft == mySoft && hard == myHard {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent's own limit changed from %s/%s to %s/%s", mySoft, myHard, soft, hard)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestConfigFromEnvLimits(t *testing.T) {
	t.Setenv(agent.EnvTokenSHA256, agentproto.TokenHashHex("tok"))
	t.Setenv(agent.EnvMemoryLimit, "256")
	t.Setenv(agent.EnvVCPU, "2")
	cfg, err := agent.ConfigFromEnv()
	if err != nil || cfg.MemoryLimitMiB != 256 || cfg.VCPU != 2 {
		t.Fatalf("config %+v, %v", cfg, err)
	}
	for _, bad := range [][2]string{{agent.EnvMemoryLimit, "lots"}, {agent.EnvVCPU, "-1"}} {
		t.Setenv(agent.EnvTokenSHA256, agentproto.TokenHashHex("tok"))
		t.Setenv(agent.EnvMemoryLimit, "")
		t.Setenv(agent.EnvVCPU, "")
		t.Setenv(bad[0], bad[1])
		if _, err := agent.ConfigFromEnv(); err == nil {
			t.Errorf("%s=%s accepted", bad[0], bad[1])
		}
	}
}
