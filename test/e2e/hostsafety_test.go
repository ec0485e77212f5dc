package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/stasis-sandbox/stasis/internal/netpool"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestSecondServerIsRefused: a second stasisd on the data dir or the netns
// prefix of a running one refuses to start, naming the first, and the
// first's sandbox is untouched (it used to be re-adopted, or its link torn
// down by the second's start-up cleanup).
func TestSecondServerIsRefused(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := createMinimal(t, srv, "first")
	c.sh("echo 1 > /tmp/mark")
	pid := "stasisd pid " + strconv.Itoa(srv.Pid())
	cases := []struct {
		name, listen, dataDir, prefix, want string
	}{
		// `make run` twice: same data dir, same port.
		{"same data dir and port", srv.Listen(), srv.DataDir(), srv.Prefix(),
			"data dir " + srv.DataDir() + " is in use by " + pid},
		// The data dir alone is enough, whatever the other flags.
		{"same data dir", freeLoopbackAddr(t), srv.DataDir(), "sts" + strconv.Itoa(os.Getpid()%1000),
			"data dir " + srv.DataDir() + " is in use by " + pid},
		// `make test` while `make run` serves: another data dir, the same prefix.
		{"same netns prefix", freeLoopbackAddr(t), t.TempDir(), srv.Prefix(),
			`netns prefix "` + srv.Prefix() + `" is in use by ` + pid},
		// A prefix that extends the first's: its namespaces "<p>-x-<id>"
		// look like the first's "<p>-<id>".
		{"overlapping netns prefix", freeLoopbackAddr(t), t.TempDir(), srv.Prefix() + "-x",
			`netns prefix "` + srv.Prefix() + `-x" overlaps prefix "` + srv.Prefix() + `" of ` + pid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runToExit(t, srv.Command(tc.listen, tc.dataDir, tc.prefix, srv.Subnet()))
			if err == nil {
				t.Fatalf("second stasisd exited 0; output:\n%s", out)
			}
			if !strings.Contains(out, tc.want) || !strings.Contains(out, "listening on "+srv.Listen()) {
				t.Fatalf("second stasisd's output does not name the first (want %q and its address):\n%s", tc.want, out)
			}
			if got := c.sh("cat /tmp/mark"); got != "1" {
				t.Fatalf("first server's sandbox lost its state: %q", got)
			}
			if info := getInfo(t, srv, sb.ID); info.Status != "active" {
				t.Fatalf("first server's sandbox is %s (%s)", info.Status, info.Error)
			}
		})
	}
}

// TestCleanStopLeavesNothing: a stopped server leaves no mount in its data
// dir; its firewall chain stays while a sandbox of it still runs (the next
// start re-adopts it), and goes, with every jump to it, once none runs.
func TestCleanStopLeavesNothing(t *testing.T) {
	srv := testenv.StartServer(t)
	chain := "STASIS-" + strings.ToUpper(srv.Prefix()) // test prefixes are short enough to be the interface prefix
	c, sb := createMinimal(t, srv, "survivor")
	c.sh("echo 1 > /tmp/mark")

	srv.Stop()
	if !chainExists(t, chain) || jumpsTo(t, chain) != 2 {
		t.Fatalf("a sandbox still runs, but chain %s exists=%v with %d jumps (want 1 in INPUT and 1 in FORWARD)",
			chain, chainExists(t, chain), jumpsTo(t, chain))
	}
	if m := mountsUnder(t, srv.DataDir()); len(m) != 0 {
		t.Fatalf("mounts left under the data dir after a clean stop: %v", m)
	}

	srv.Restart()
	if got := c.sh("cat /tmp/mark"); got != "1" {
		t.Fatalf("re-adopted sandbox: %q", got)
	}
	if err := srv.Do("DELETE", "/sandboxes/"+sb.ID, nil, nil); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if chainExists(t, chain) {
		t.Errorf("chain %s left behind", chain)
	}
	if n := jumpsTo(t, chain); n != 0 {
		t.Errorf("%d jumps to %s left in INPUT/FORWARD", n, chain)
	}
	if m := mountsUnder(t, srv.DataDir()); len(m) != 0 {
		t.Errorf("mounts left under the data dir: %v", m)
	}
	if ns, _ := filepath.Glob("/run/netns/" + srv.Prefix() + "-*"); len(ns) != 0 {
		t.Errorf("network namespaces left: %v", ns)
	}
	netnsLock, linksLock := netpool.LockFiles(srv.Prefix(), srv.Prefix())
	for _, f := range []string{netnsLock, linksLock, filepath.Join(srv.DataDir(), "lock")} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("lock file %s left (%v)", f, err)
		}
	}
	if err := os.RemoveAll(srv.DataDir()); err != nil {
		t.Errorf("rm -rf of the data dir: %v", err)
	}
}

// TestSpareLinks: a sandbox gets one of the links the server built ahead
// (its namespace, renamed after it) and works on it; the spares a killed
// server left are removed when it starts again, and a clean stop removes
// the spares it holds.
func TestSpareLinks(t *testing.T) {
	srv := testenv.StartServer(t)
	spares := awaitSpareNetns(t, srv, 2)
	inos := map[uint64]string{}
	for _, path := range spares {
		inos[testenv.NetnsIno(t, path)] = path
	}
	c, sb := createMinimal(t, srv, "on-a-spare")
	if from := inos[testenv.NetnsIno(t, "/run/netns/"+srv.Prefix()+"-"+sb.ID)]; from == "" {
		t.Fatalf("the sandbox's netns is none of the spares %v", spares)
	}
	if got := c.sh("echo ok"); got != "ok" {
		t.Fatalf("sandbox on a spare link: %q", got)
	}

	left := awaitSpareNetns(t, srv, 2) // the one taken was replaced
	srv.Kill()
	srv.Restart()
	for _, path := range left {
		if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("spare %s of the killed server still there after the restart: %v", path, err)
		}
	}
	if got := c.sh("echo ok"); got != "ok" {
		t.Fatalf("re-adopted sandbox: %q", got)
	}
	if err := srv.Do("DELETE", "/sandboxes/"+sb.ID, nil, nil); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if ns, _ := filepath.Glob("/run/netns/" + srv.Prefix() + "-*"); len(ns) != 0 {
		t.Errorf("network namespaces left after a clean stop: %v", ns)
	}
}

// awaitSpareNetns waits until srv holds n spare links with their
// namespaces mounted, and returns the namespaces' paths.
func awaitSpareNetns(t *testing.T, srv *testenv.Server, n int) []string {
	t.Helper()
	for {
		ns, err := filepath.Glob("/run/netns/" + srv.Prefix() + "-spare-*")
		if err != nil {
			t.Fatal(err)
		}
		if len(ns) == n && !slices.ContainsFunc(ns, func(p string) bool { return !testenv.NetnsMounted(p) }) {
			return ns
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestVanishedLinkIsRepaired: when something outside stasis deletes a
// running sandbox's link (as a second server's start-up cleanup once did),
// the health check notices and moves the sandbox, state and all, onto a
// new link instead of leaving it "active" and unreachable.
func TestVanishedLinkIsRepaired(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := createMinimal(t, srv, "unlinked")
	c.sh("echo kept > /tmp/state")
	veth := hostVeth(t, sb.ID)
	if err := netlink.LinkDel(veth); err != nil { // the link of a sandbox this test created
		t.Fatal(err)
	}
	// A call now fails (502) and asks for a check; the periodic check
	// would find it too.
	c.raw("POST", "/exec", strings.NewReader(`{"command":"true"}`))
	deadline := time.Now().Add(2 * time.Minute)
	for {
		info := getInfo(t, srv, sb.ID)
		if info.Status == "failed" {
			t.Fatalf("sandbox failed instead of being moved to a new link: %s", info.Error)
		}
		if info.Status == "active" {
			status, body := c.raw("POST", "/exec", strings.NewReader(`{"command":"cat /tmp/state"}`))
			if status == 200 && strings.Contains(string(body), "kept") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox still unusable: status %s (%s)\n%s", info.Status, info.Error, srv.Logs())
		}
		time.Sleep(500 * time.Millisecond)
	}
	if hostVeth(t, sb.ID).Attrs().Index == veth.Attrs().Index {
		t.Error("the sandbox answers on the deleted link?")
	}
}

// hostVeth finds the host end of a sandbox's link (its alias is the ID).
func hostVeth(t *testing.T, id string) netlink.Link {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Attrs().Alias == id {
			return l
		}
	}
	t.Fatalf("no host veth for sandbox %s", id)
	return nil
}

func chainExists(t *testing.T, chain string) bool {
	return runOK("iptables", "-w", "-n", "-L", chain)
}

// jumpsTo counts the rules in INPUT and FORWARD that jump to chain.
func jumpsTo(t *testing.T, chain string) int {
	t.Helper()
	n := 0
	for _, hook := range []string{"INPUT", "FORWARD"} {
		out, err := commandOutput("iptables", "-w", "-S", hook)
		if err != nil {
			t.Fatalf("iptables -S %s: %v", hook, err)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasSuffix(strings.TrimSpace(line), "-j "+chain) {
				n++
			}
		}
	}
	return n
}

// mountsUnder lists the mount points below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range bytes.Split(b, []byte("\n")) {
		f := strings.Fields(string(line))
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// runToExit runs cmd (a process this test starts) and returns its output
// once it exits; one still running after a minute is killed and fails the
// test.
func runToExit(t *testing.T, cmd *exec.Cmd) (string, error) {
	t.Helper()
	var out bytes.Buffer // one writer for both: exec serialises the writes
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(time.Minute):
		cmd.Process.Kill() // our own child
		<-done
		t.Fatalf("%s still running after a minute; output:\n%s", cmd.Path, out.String())
		return "", nil
	}
}

func runOK(name string, args ...string) bool { return exec.Command(name, args...).Run() == nil }

func commandOutput(name string, args ...string) (string, error) {
	b, err := exec.Command(name, args...).Output()
	return string(b), err
}

// TestUnansweringAgentIsFailed: a sandbox whose agent stops answering (its
// sentry stopped, as a hung sandbox would be: the link and the process are
// intact) is failed by the health checks, though it had answered them
// before and so was probed less often; failing it stops the sandbox though
// its sentry never answers runsc, and leaves nothing of it on the host.
func TestUnansweringAgentIsFailed(t *testing.T) {
	srv := testenv.StartServer(t)
	sb := createStopped(t, srv, "hung")
	// Up to agentProbeInterval before the first probe, then unansweredProbes
	// rounds and a last try, each bounded by agentProbeTimeout; then the
	// Destroy, whose runsc delete waits on the stopped sentry until the
	// driver kills it.
	deadline := time.Now().Add(3 * time.Minute)
	for getInfo(t, srv, sb.ID).Status != "failed" {
		if time.Now().After(deadline) {
			t.Fatalf("sandbox with a stopped agent is still %q", getInfo(t, srv, sb.ID).Status)
		}
		time.Sleep(time.Second)
	}
	if info := getInfo(t, srv, sb.ID); !strings.Contains(info.Error, "stopped answering") {
		t.Fatalf("error = %q", info.Error)
	}
	requireNothingLeft(t, srv, sb.ID)
}

// TestDeleteStoppedSandbox: DELETE of a sandbox whose sentry is stopped (as
// a hung one would never answer runsc) completes and leaves nothing of it on
// the host.
func TestDeleteStoppedSandbox(t *testing.T) {
	srv := testenv.StartServer(t)
	sb := createStopped(t, srv, "stopped")
	if err := srv.Do("DELETE", "/sandboxes/"+sb.ID, nil, nil); err != nil {
		t.Fatalf("delete: %v", err)
	}
	requireNothingLeft(t, srv, sb.ID)
}

// createStopped creates a stasis/minimal sandbox, checks that it runs a
// command, and stops its sentry (stopSentry).
func createStopped(t *testing.T, srv *testenv.Server, name string) sandboxInfo {
	t.Helper()
	c, sb := createMinimal(t, srv, name)
	if r := c.exec("true"); r.ExitCode != 0 {
		t.Fatalf("exec: %+v", r)
	}
	stopSentry(t, srv, sb.ID)
	return sb
}

// stopSentry SIGSTOPs the sandbox process of sandbox id (created by the
// test) and, at the end of the test, lets it go on if it is still there.
func stopSentry(t *testing.T, srv *testenv.Server, id string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(srv.DataDir(), "sandboxes", id, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); bytes.Contains(cmd, []byte(id)) {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	})
}

// requireNothingLeft fails unless sandbox id has no host process, network
// namespace or state dir left.
func requireNothingLeft(t *testing.T, srv *testenv.Server, id string) {
	t.Helper()
	requireNoProcesses(t, id)
	if _, err := os.Stat("/run/netns/" + srv.Prefix() + "-" + id); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("network namespace of %s: %v, want it gone", id, err)
	}
	if _, err := os.Stat(filepath.Join(srv.DataDir(), "sandboxes", id)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state dir of %s: %v, want it gone", id, err)
	}
}
