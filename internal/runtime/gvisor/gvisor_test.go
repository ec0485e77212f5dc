package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/netpool"
	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// These tests run real sandboxes with the pinned runsc. They need root. They
// use their own netns/veth prefixes, their own 169.254.208.0/22 range, IDs
// prefixed with the test process's PID, and a fixed runsc root dir (runsc
// mounts an nsfs file into it, so a fresh t.TempDir could not be removed).

const testRoot = "/run/stasis-gvisor-test/runsc-root"

var testRange = netip.MustParsePrefix("169.254.208.0/22")

// agentBin is the test agent, built once by TestMain (if running as root).
var agentBin string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() == 0 {
			// Test processes of other checkouts share the interface
			// prefix, range and runsc root: take turns, or one's cleanup
			// would remove the other's links.
			lock, err := netpool.AwaitLinksLock(context.Background(), "sttg", "gvisor tests")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer lock.Release()
			dir, err := os.MkdirTemp("", "stasis-gvisor-agent-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			agentBin = filepath.Join(dir, "agent")
			cmd := exec.Command("go", "build", "-o", agentBin, "./testdata/testagent")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "building test agent: %v\n%s", err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// runscBin returns the runsc to test with: $STASIS_RUNSC, or the pinned
// build in the repository's .cache. A missing binary fails the test.
func runscBin(t testing.TB) string {
	t.Helper()
	testenv.RequireRoot(t) // runsc, network namespaces, cgroups
	p := os.Getenv("STASIS_RUNSC")
	if p == "" {
		abs, err := filepath.Abs("../../../.cache/runsc/bin/runsc")
		if err != nil {
			t.Fatal(err)
		}
		p = abs
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("runsc binary not found at %s (%v): build the pinned, patched static runsc there "+
			"(make setup) or point STASIS_RUNSC at one", p, err)
	}
	return p
}

// testEnv is one driver plus everything the test must clean up.
type testEnv struct {
	t      testing.TB
	d      *Driver
	pool   *netpool.Pool
	rootfs string
	prefix string // of every sandbox ID in this test

	mu  sync.Mutex
	ids map[string]bool
}

func newEnv(t testing.TB) *testEnv {
	t.Helper()
	bin := runscBin(t)
	pool, err := netpool.New(netpool.Config{
		Prefix:   fmt.Sprintf("stgvtest%d", os.Getpid()),
		IfPrefix: "sttg",
		Range:    testRange,
	})
	if err != nil {
		t.Fatal(err)
	}
	pool.KeepSpares(2, nil) // as stasisd: sandboxes run on renamed spare links
	state := t.TempDir()
	d, err := New(Config{Runsc: bin, RootDir: testRoot, StateDir: state, Net: pool})
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{
		t:      t,
		d:      d,
		pool:   pool,
		rootfs: makeRootfs(t),
		prefix: fmt.Sprintf("gvt%d-", os.Getpid()),
		ids:    map[string]bool{},
	}
	t.Cleanup(func() {
		ctx := context.Background()
		for id := range e.ids {
			if err := d.Destroy(ctx, id); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		if err := pool.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if err := pool.Cleanup(ctx, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return e
}

// makeRootfs builds a tiny image: busybox and its applets, an empty
// /.stasis/agent mount point, /etc/passwd.
func makeRootfs(t testing.TB) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox (static) is needed for the test rootfs: %v", err)
	}
	root := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"bin", "etc", "tmp", ".stasis"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(root, "tmp"), 0o1777)
	b, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"sh", "ls", "cat", "echo", "sleep", "ps", "mount", "ip", "wget", "dd", "md5sum"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, runtime.AgentMountPath), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

func (e *testEnv) spec(name string) runtime.Spec {
	id := e.prefix + name
	e.mu.Lock()
	e.ids[id] = true
	e.mu.Unlock()
	return runtime.Spec{
		ID:        id,
		Hostname:  name,
		RootFS:    e.rootfs,
		AgentPath: agentBin,
		Env:       []string{"STASIS_TEST=" + name},
		VCPU:      1,
		MemoryMiB: 256,
		DiskMiB:   512,
	}
}

// agentState is what the test agent serves.
type agentState struct {
	Counter  int64  `json:"counter"`
	Boot     string `json:"boot"`
	BootFile string `json:"boot_file"`
	File     string `json:"file"`
	Pid      int    `json:"pid"`
	Hostname string `json:"hostname"`
	Env      string `json:"env"`
}

var httpc = &http.Client{Timeout: 2 * time.Second}

func get(addr, path string) (string, error) { return getWith(httpc, addr, path) }

// getSlow is get for requests that work through much memory: a loaded
// host takes seconds for them.
func getSlow(addr, path string) (string, error) {
	return getWith(&http.Client{Timeout: 2 * time.Minute}, addr, path)
}

func getWith(c *http.Client, addr, path string) (string, error) {
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("%s: %s", resp.Status, b)
	}
	return string(b), err
}

// waitAgent polls the agent until it answers.
func waitAgent(t testing.TB, inst *runtime.Instance) agentState {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		body, err := get(inst.AgentAddr(), "/")
		if err == nil {
			var st agentState
			if err := json.Unmarshal([]byte(body), &st); err != nil {
				t.Fatalf("agent answered %q: %v", body, err)
			}
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent at %s not reachable: %v", inst.AgentAddr(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cgroupFile reads a controller's file from the cgroup of process pid
// (cgroup v1 controller hierarchy, or the unified one).
func cgroupFile(t testing.TB, pid int, controller, v1file, v2file string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var v2path string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2path = parts[2]
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == controller {
				v, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", parts[1], parts[2], v1file))
				if err != nil {
					t.Fatal(err)
				}
				return strings.TrimSpace(string(v))
			}
		}
	}
	for _, mnt := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if v, err := os.ReadFile(filepath.Join(mnt, v2path, v2file)); err == nil {
			return strings.TrimSpace(string(v))
		}
	}
	t.Fatalf("no %s cgroup for pid %d in %s", controller, pid, b)
	return ""
}

// snapshotTree records names, sizes and mtimes under dir.
func snapshotTree(t testing.TB, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		m[p] = fmt.Sprintf("%v %d %d", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (e *testEnv) assertGone(id string) {
	t := e.t
	t.Helper()
	if pids := e.d.Processes(id); len(pids) != 0 {
		t.Errorf("%s: runsc processes left: %v", id, pids)
	}
	nsName := fmt.Sprintf("stgvtest%d-%s", os.Getpid(), id)
	if _, err := os.Stat(filepath.Join(netpool.DefaultNetnsDir, nsName)); !os.IsNotExist(err) {
		t.Errorf("%s: netns still there (%v)", id, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Attrs().Alias == id {
			t.Errorf("%s: veth %s still there", id, l.Attrs().Name)
		}
	}
	if _, ok := e.pool.Lookup(id); ok {
		t.Errorf("%s: pool still holds a link", id)
	}
}

func TestNewChecksRunsc(t *testing.T) {
	pool, err := netpool.New(netpool.Config{Prefix: "stgvtestnew", IfPrefix: "sttx", Range: testRange})
	if err != nil {
		t.Fatalf("netpool: %v", err)
	}
	dir := t.TempDir()
	cfg := Config{RootDir: filepath.Join(dir, "root"), StateDir: filepath.Join(dir, "state"), Net: pool}

	cfg.Runsc = filepath.Join(dir, "missing")
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing binary: %v", err)
	}
	notExec := filepath.Join(dir, "notexec")
	os.WriteFile(notExec, []byte("x"), 0o644)
	cfg.Runsc = notExec
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "not an executable") {
		t.Errorf("non-executable binary: %v", err)
	}
	broken := filepath.Join(dir, "broken")
	os.WriteFile(broken, []byte("#!/bin/sh\necho 'exploded' >&2\nexit 3\n"), 0o755)
	cfg.Runsc = broken
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "exploded") {
		t.Errorf("failing --version: %v", err)
	}
	cfg.Runsc = runscBin(t)
	cfg.Net = nil
	if _, err := New(cfg); err == nil {
		t.Error("nil Net accepted")
	}
	cfg.Net = pool
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(d.Version(), "stasis-") {
		t.Logf("runsc version %q is not a stasis build", d.Version())
	}
}

func TestCreateRejectsImageWithoutMountPoint(t *testing.T) {
	e := newEnv(t)
	spec := e.spec("nomp")
	if err := os.Remove(filepath.Join(e.rootfs, runtime.AgentMountPath)); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.Create(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), runtime.AgentMountPath) {
		t.Fatalf("Create: %v", err)
	}
	e.assertGone(spec.ID)
	if _, err := os.Stat(filepath.Join(e.rootfs, runtime.AgentMountPath)); !os.IsNotExist(err) {
		t.Errorf("mount point created in the image: %v", err)
	}
}

func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	spec := e.spec("life")
	before := snapshotTree(t, e.rootfs)

	inst, err := e.d.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !testRange.Contains(inst.Addr) || inst.Pid <= 0 || inst.ID != spec.ID {
		t.Fatalf("bad instance %+v", inst)
	}
	st := waitAgent(t, inst)
	if st.Pid != 1 || st.Hostname != "life" || st.Env != "life" || st.BootFile != st.Boot {
		t.Fatalf("agent state %+v", st)
	}

	// Limits are applied to the sandbox's host cgroup.
	// The memory limit has headroom above the budget (256 MiB) for gVisor's
	// overhead; the agent enforces the budget itself (see spec_test.go).
	if got, want := cgroupFile(t, inst.Pid, "memory", "memory.limit_in_bytes", "memory.max"), strconv.FormatInt(hostMemoryLimit(256), 10); got != want {
		t.Errorf("memory limit %s, want %s", got, want)
	}
	if got, want := cgroupFile(t, inst.Pid, "pids", "pids.max", "pids.max"), strconv.FormatInt(hostPidsLimit(256), 10); got != want {
		t.Errorf("pids limit %s, want %s", got, want)
	}
	// The CPU limit (1 vCPU) is lifted to the boot quota until LimitCPU.
	if got := cgroupFile(t, inst.Pid, "cpu", "cpu.cfs_quota_us", "cpu.max"); got != "200000" && got != "200000 100000" {
		t.Errorf("cpu quota after Create %q, want the boot quota of 2 cores", got)
	}
	for range 2 { // idempotent
		if err := e.d.LimitCPU(ctx, spec.ID, spec.VCPU); err != nil {
			t.Fatal(err)
		}
		if got := cgroupFile(t, inst.Pid, "cpu", "cpu.cfs_quota_us", "cpu.max"); got != "100000" && got != "100000 100000" {
			t.Errorf("cpu quota after LimitCPU %q", got)
		}
	}

	// A second Create or a Restore with the same ID fails and leaves the
	// running sandbox alone.
	if _, err := e.d.Create(ctx, spec); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second Create: %v", err)
	}
	waitAgent(t, inst)

	// List finds it, with its address.
	list, err := e.d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, i := range list {
		if i.ID == spec.ID {
			found = i.Addr == inst.Addr && i.Pid == inst.Pid
		}
	}
	if !found {
		t.Fatalf("List %+v lacks %+v", list, inst)
	}
	// Alive, which markDead asks instead of List, says so too.
	if ok, err := e.d.Alive(spec.ID); !ok || err != nil {
		t.Errorf("Alive = %v, %v for a running sandbox", ok, err)
	}

	// Freeze and thaw.
	if err := e.d.Freeze(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 300 * time.Millisecond}
	if resp, err := c.Get("http://" + inst.AgentAddr() + "/"); err == nil {
		resp.Body.Close()
		t.Error("frozen agent answered")
	}
	if err := e.d.Thaw(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	waitAgent(t, inst)

	// Something on the overlay (outside /tmp) that must survive too.
	if _, err := get(inst.AgentAddr(), "/fill?mb=8&path=/var/big"); err != nil {
		t.Fatal(err)
	}

	// Checkpoint: the sandbox stops, everything but the image goes.
	pre := waitAgent(t, inst)
	for pre.Counter < 10 { // let the counter get somewhere a restart could not
		time.Sleep(50 * time.Millisecond)
		pre = waitAgent(t, inst)
	}
	img := t.TempDir()
	if err := e.d.Checkpoint(ctx, spec.ID, img); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Destroy(ctx, spec.ID); err != nil { // Checkpoint leaves it running
		t.Fatal(err)
	}
	e.assertGone(spec.ID)
	if ok, _ := e.d.Alive(spec.ID); ok {
		t.Error("Alive after Destroy")
	}
	if _, err := os.Stat(filepath.Join(img, "checkpoint.img")); err != nil {
		t.Fatalf("checkpoint image: %v", err)
	}
	if list, _ := e.d.List(ctx); containsID(list, spec.ID) {
		t.Error("List shows checkpointed sandbox")
	}
	if err := e.d.Checkpoint(ctx, spec.ID, t.TempDir()); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("checkpoint of stopped sandbox: %v", err)
	}

	// Restore: same process, memory and files.
	time.Sleep(200 * time.Millisecond) // the counter would move on if the agent restarted
	inst2, err := e.d.Restore(ctx, spec, img)
	if err != nil {
		t.Fatal(err)
	}
	post := waitAgent(t, inst2)
	if ok, err := e.d.Alive(spec.ID); !ok || err != nil {
		t.Errorf("Alive = %v, %v for a restored sandbox", ok, err)
	}
	t.Logf("before checkpoint: %+v at %v; after restore: %+v at %v", pre, inst.Addr, post, inst2.Addr)
	if post.Boot != pre.Boot || post.BootFile != pre.Boot {
		t.Errorf("agent restarted: boot %s -> %s", pre.Boot, post.Boot)
	}
	if post.Counter < pre.Counter {
		t.Errorf("counter went back: %d -> %d", pre.Counter, post.Counter)
	}
	if n, err := strconv.Atoi(post.File); err != nil || int64(n) < pre.Counter {
		t.Errorf("/tmp/counter after restore = %q, want >= %d", post.File, pre.Counter)
	}
	if body, err := get(inst2.AgentAddr(), "/stat?path=/var/big"); err != nil || body != strconv.Itoa(8<<20) {
		t.Errorf("/var/big after restore: %q, %v", body, err)
	}
	if got, want := cgroupFile(t, inst2.Pid, "memory", "memory.limit_in_bytes", "memory.max"), strconv.FormatInt(hostMemoryLimit(256), 10); got != want {
		t.Errorf("memory limit after restore %s, want %s", got, want)
	}
	if got := cgroupFile(t, inst2.Pid, "cpu", "cpu.cfs_quota_us", "cpu.max"); got != "100000" && got != "100000 100000" {
		t.Errorf("cpu quota after restore %q", got)
	}
	if _, err := e.d.Restore(ctx, spec, img); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("Restore over a running sandbox: %v", err)
	}
	waitAgent(t, inst2)

	// A second round trip works too (addresses re-added every time).
	img2 := t.TempDir()
	if err := e.d.Checkpoint(ctx, spec.ID, img2); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Destroy(ctx, spec.ID); err != nil { // Checkpoint leaves it running
		t.Fatal(err)
	}
	inst3, err := e.d.Restore(ctx, spec, img2)
	if err != nil {
		t.Fatal(err)
	}
	if again := waitAgent(t, inst3); again.Boot != pre.Boot || again.Counter < post.Counter {
		t.Errorf("second restore: %+v", again)
	}

	// The image was never written.
	after := snapshotTree(t, e.rootfs)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("image changed:\nbefore %v\nafter  %v", before, after)
	}

	// Destroy is idempotent and leaves nothing behind.
	for i := 0; i < 2; i++ {
		if err := e.d.Destroy(ctx, spec.ID); err != nil {
			t.Fatalf("destroy #%d: %v", i+1, err)
		}
	}
	e.assertGone(spec.ID)
	if _, err := os.Stat(e.d.sandboxDir(spec.ID)); !os.IsNotExist(err) {
		t.Errorf("state dir left: %v", err)
	}
	if _, err := e.d.state(ctx, spec.ID); !errors.Is(err, errNoContainer) {
		t.Errorf("runsc still knows the container: %v", err)
	}
}

func containsID(list []runtime.Instance, id string) bool {
	for _, i := range list {
		if i.ID == id {
			return true
		}
	}
	return false
}

func TestTwoSandboxesIsolated(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	specs := []runtime.Spec{e.spec("iso-a"), e.spec("iso-b")}
	insts := make([]*runtime.Instance, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			insts[i], errs[i] = e.d.Create(ctx, specs[i])
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	a, b := insts[0], insts[1]
	if a.Addr == b.Addr {
		t.Fatalf("same address %v", a.Addr)
	}
	if sa, sb := waitAgent(t, a), waitAgent(t, b); sa.Boot == sb.Boot || sa.Hostname != "iso-a" || sb.Hostname != "iso-b" {
		t.Fatalf("agents %+v %+v", sa, sb)
	}
	for _, p := range [][2]*runtime.Instance{{a, b}, {b, a}} {
		body, err := get(p[0].AgentAddr(), "/dial?addr="+p[1].AgentAddr())
		if err != nil {
			t.Fatal(err)
		}
		if body == "ok" {
			t.Errorf("%s reached %s", p[0].ID, p[1].ID)
		}
		// The sandbox's own agent is reachable from inside (sanity check of /dial).
		self := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), runtime.AgentPort).String()
		if body, err := get(p[0].AgentAddr(), "/dial?addr="+self); err != nil || body != "ok" {
			t.Errorf("%s cannot reach itself: %q %v", p[0].ID, body, err)
		}
	}
	// Informational: a host service listening on all addresses is reachable
	// through the host end of the link (netpool installs no firewall).
	if ln, err := net.Listen("tcp", ":0"); err == nil {
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Close()
			}
		}()
		l, _ := e.pool.Lookup(a.ID)
		port := ln.Addr().(*net.TCPAddr).Port
		body, _ := get(a.AgentAddr(), "/dial?addr="+netip.AddrPortFrom(l.HostAddr, uint16(port)).String())
		t.Logf("sandbox -> host service on 0.0.0.0 via %v: %s", l.HostAddr, body)
		ln.Close()
	}

	list, err := e.d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !containsID(list, a.ID) || !containsID(list, b.ID) {
		t.Errorf("List %+v", list)
	}

	// A new driver and pool (stasisd restarted) re-adopt both, addresses
	// included, and don't hand their subnets out again.
	pool2, err := netpool.New(netpool.Config{
		Prefix:   fmt.Sprintf("stgvtest%d", os.Getpid()),
		IfPrefix: "sttg",
		Range:    testRange,
	})
	if err != nil {
		t.Fatal(err)
	}
	d2, err := New(Config{Runsc: e.d.cfg.Runsc, RootDir: testRoot, StateDir: e.d.cfg.StateDir, Net: pool2})
	if err != nil {
		t.Fatal(err)
	}
	list2, err := d2.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range insts {
		found := false
		for _, l := range list2 {
			if l.ID == in.ID {
				found = l.Addr == in.Addr && l.Pid == in.Pid
			}
		}
		if !found {
			t.Errorf("restarted driver lists %+v, lacks %+v", list2, in)
		}
	}
	l3, err := pool2.Setup(ctx, e.prefix+"third")
	if err != nil {
		t.Fatal(err)
	}
	if l3.Subnet.Contains(a.Addr) || l3.Subnet.Contains(b.Addr) {
		t.Errorf("restarted pool reused a live subnet: %v", l3.Subnet)
	}
	if err := pool2.Teardown(ctx, l3.ID); err != nil {
		t.Fatal(err)
	}

	for _, in := range insts {
		if err := e.d.Destroy(ctx, in.ID); err != nil {
			t.Fatal(err)
		}
		e.assertGone(in.ID)
	}
}

// Restore refuses a different agent binary, and its errors carry runsc's
// own message; a failed restore leaves nothing behind.
func TestRestoreErrors(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	spec := e.spec("rerr")
	inst, err := e.d.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	pre := waitAgent(t, inst)
	img := t.TempDir()
	if err := e.d.Checkpoint(ctx, spec.ID, img); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Destroy(ctx, spec.ID); err != nil { // Checkpoint leaves it running
		t.Fatal(err)
	}

	// Another agent binary: a copy with one byte more.
	b, err := os.ReadFile(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(other, append(b, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	bad := spec
	bad.AgentPath = other
	if _, err := e.d.Restore(ctx, bad, img); err == nil || !strings.Contains(err.Error(), "not the binary") {
		t.Fatalf("restore with another agent: %v", err)
	}
	e.assertGone(spec.ID)

	// A corrupt image: the error quotes runsc.
	corrupt := t.TempDir()
	for _, f := range []string{"checkpoint.img", "pages.img", "pages_meta.img"} {
		os.WriteFile(filepath.Join(corrupt, f), []byte("garbage"), 0o644)
	}
	_, err = e.d.Restore(ctx, spec, corrupt)
	if err == nil || !strings.Contains(err.Error(), "runsc restore") || !strings.Contains(err.Error(), ": ") {
		t.Fatalf("restore of a corrupt image: %v", err)
	}
	t.Logf("corrupt image: %v", err)
	e.assertGone(spec.ID)

	// The real thing still works, with the image and the (same) agent
	// binary at other paths.
	same := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(same, b, 0o755); err != nil {
		t.Fatal(err)
	}
	moved := spec
	moved.RootFS = makeRootfs(t)
	moved.AgentPath = same
	inst, err = e.d.Restore(ctx, moved, img)
	if err != nil {
		t.Fatal(err)
	}
	if post := waitAgent(t, inst); post.Boot != pre.Boot {
		t.Errorf("agent restarted")
	}
}

func TestDestroyUnknownAndCheckpointed(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.d.Destroy(ctx, e.prefix+"never"); err != nil {
		t.Fatalf("destroy unknown: %v", err)
	}
	if err := e.d.LimitCPU(ctx, e.prefix+"never", 1); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("LimitCPU of an unknown sandbox: %v", err)
	}
	spec := e.spec("ckd")
	inst, err := e.d.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	waitAgent(t, inst)
	if err := e.d.Checkpoint(ctx, spec.ID, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Destroy(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	e.assertGone(spec.ID)
	if _, err := os.Stat(e.d.sandboxDir(spec.ID)); !os.IsNotExist(err) {
		t.Errorf("state dir left: %v", err)
	}
	// Frozen sandboxes can be checkpointed (they come back running) and
	// destroyed.
	spec2 := e.spec("frozen")
	inst2, err := e.d.Create(ctx, spec2)
	if err != nil {
		t.Fatal(err)
	}
	pre := waitAgent(t, inst2)
	if err := e.d.Freeze(ctx, spec2.ID); err != nil {
		t.Fatal(err)
	}
	img := t.TempDir()
	if err := e.d.Checkpoint(ctx, spec2.ID, img); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Destroy(ctx, spec2.ID); err != nil { // Checkpoint leaves it running
		t.Fatal(err)
	}
	e.assertGone(spec2.ID)
	if inst2, err = e.d.Restore(ctx, spec2, img); err != nil {
		t.Fatal(err)
	}
	if post := waitAgent(t, inst2); post.Boot != pre.Boot {
		t.Error("agent restarted")
	}
	if err := e.d.Freeze(ctx, spec2.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Destroy(ctx, spec2.ID); err != nil {
		t.Fatal(err)
	}
	e.assertGone(spec2.ID)
	if err := e.d.Freeze(ctx, spec2.ID); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("freeze of destroyed sandbox: %v", err)
	}
}

// TestLatency measures the driver against raw runsc on the same bundle and
// logs the medians (go test -v -run Latency). STASIS_BENCH_N sets the number
// of rounds (default 5).
func TestLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	e := newEnv(t)
	ctx := context.Background()
	n := 5
	if v, err := strconv.Atoi(os.Getenv("STASIS_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	type timings map[string][]time.Duration
	drv, raw := timings{}, timings{}
	lap := func(m timings, name string, start time.Time) { m[name] = append(m[name], time.Since(start)) }

	for i := 0; i < n; i++ {
		spec := e.spec(fmt.Sprintf("lat%d", i))
		start := time.Now()
		inst, err := e.d.Create(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		lap(drv, "create", start)
		waitAgent(t, inst)
		lap(drv, "create+agent answers", start)
		img := t.TempDir()
		start = time.Now()
		if err := e.d.Checkpoint(ctx, spec.ID, img); err != nil {
			t.Fatal(err)
		}
		if err := e.d.Destroy(ctx, spec.ID); err != nil { // Checkpoint leaves it running
			t.Fatal(err)
		}
		lap(drv, "checkpoint", start)
		start = time.Now()
		inst, err = e.d.Restore(ctx, spec, img)
		if err != nil {
			t.Fatal(err)
		}
		lap(drv, "restore", start)
		waitAgent(t, inst)
		lap(drv, "restore+agent answers", start)
		start = time.Now()
		if err := e.d.Freeze(ctx, spec.ID); err != nil {
			t.Fatal(err)
		}
		lap(drv, "freeze", start)
		start = time.Now()
		if err := e.d.Thaw(ctx, spec.ID); err != nil {
			t.Fatal(err)
		}
		lap(drv, "thaw", start)
		start = time.Now()
		if err := e.d.Destroy(ctx, spec.ID); err != nil {
			t.Fatal(err)
		}
		lap(drv, "destroy", start)
	}

	// Raw runsc on a bundle and netns prepared beforehand.
	// Output goes to a file: sandboxes inherit runsc's stdio, and would hold
	// a pipe open forever.
	outPath := filepath.Join(t.TempDir(), "runsc.out")
	runsc := func(args ...string) {
		t.Helper()
		out, err := os.Create(outPath)
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		cmd := exec.CommandContext(ctx, e.d.cfg.Runsc, append([]string{"--root=" + testRoot}, args...)...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Run(); err != nil {
			b, _ := os.ReadFile(outPath)
			t.Fatalf("runsc %v: %v\n%s", args, err, b)
		}
	}
	for i := 0; i < n; i++ {
		spec := e.spec(fmt.Sprintf("raw%d", i))
		link, err := e.pool.Setup(ctx, spec.ID)
		if err != nil {
			t.Fatal(err)
		}
		bundle := filepath.Join(t.TempDir(), "bundle")
		ov := filepath.Join(bundle, "overlay")
		os.MkdirAll(ov, 0o700)
		if err := writeBundle(bundle, ociSpec(spec, link.NetnsPath, "stasis/"+spec.ID)); err != nil {
			t.Fatal(err)
		}
		overlay := "--overlay2=root:dir=" + ov
		inst := &runtime.Instance{ID: spec.ID, Addr: link.SandboxAddr}
		start := time.Now()
		runsc(overlay, "run", "--detach", "--bundle="+bundle, spec.ID)
		lap(raw, "run --detach", start)
		waitAgent(t, inst)
		lap(raw, "run --detach+agent answers", start)
		img := t.TempDir()
		start = time.Now()
		runsc("checkpoint", "--image-path="+img, spec.ID)
		lap(raw, "checkpoint", start)
		start = time.Now()
		runsc("delete", "--force", spec.ID)
		lap(raw, "delete (stopped)", start)
		if err := e.pool.Readdress(ctx, spec.ID); err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		runsc(overlay, "restore", "--detach", "--bundle="+bundle, "--image-path="+img, spec.ID)
		lap(raw, "restore --detach", start)
		waitAgent(t, inst)
		lap(raw, "restore+agent answers", start)
		start = time.Now()
		runsc("delete", "--force", spec.ID)
		lap(raw, "delete --force (running)", start)
		e.mu.Lock()
		e.ids[spec.ID+"-c"] = true
		e.mu.Unlock()
		if err := e.pool.Readdress(ctx, spec.ID); err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		runsc(overlay, "create", "--bundle="+bundle, spec.ID+"-c")
		lap(raw, "create", start)
		start = time.Now()
		runsc("start", spec.ID+"-c")
		lap(raw, "start", start)
		runsc("delete", "--force", spec.ID+"-c")
		if err := e.pool.Teardown(ctx, spec.ID); err != nil {
			t.Fatal(err)
		}
	}
	report := func(title string, m timings) {
		var names []string
		for k := range m {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			ds := m[k]
			sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
			t.Logf("%-6s %-28s median %6.1f ms  (min %6.1f, max %6.1f, n=%d)", title, k,
				ms(ds[len(ds)/2]), ms(ds[0]), ms(ds[len(ds)-1]), len(ds))
		}
	}
	report("driver", drv)
	report("runsc", raw)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// DiskMiB limits the writable layer (outside /tmp, which is runsc's tmpfs).
func TestDiskLimit(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	spec := e.spec("disk")
	spec.DiskMiB = 16
	inst, err := e.d.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	waitAgent(t, inst)
	if _, err := get(inst.AgentAddr(), "/fill?mb=8&path=/var/small"); err != nil {
		t.Fatalf("8 MiB into a 16 MiB layer: %v", err)
	}
	if _, err := get(inst.AgentAddr(), "/fill?mb=32&path=/var/big"); err == nil || !strings.Contains(err.Error(), "no space") {
		t.Fatalf("32 MiB into a 16 MiB layer: %v", err)
	}
}

// debugDriver is a driver of its own whose runsc writes debug logs into the
// directory it returns.
func (e *testEnv) debugDriver(t *testing.T) (*Driver, string) {
	t.Helper()
	logs := t.TempDir()
	d, err := New(Config{Runsc: e.d.cfg.Runsc, RootDir: testRoot, StateDir: t.TempDir(), Net: e.pool, DebugLogDir: logs})
	if err != nil {
		t.Fatal(err)
	}
	return d, logs
}

// With DebugLogDir set, runsc writes debug logs there, and Destroy keeps them.
func TestDebugLogs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d, logs := e.debugDriver(t)
	spec := e.spec("debug")
	inst, err := d.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	waitAgent(t, inst)
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Join(logs, spec.ID))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range ents {
		names = append(names, en.Name())
	}
	if !strings.Contains(strings.Join(names, " "), "boot") {
		t.Errorf("debug logs: %v", names)
	}
}

// A snapshot does not carry the sandbox's network interfaces (patches/gvisor
// 0004): Checkpoint leaves the sandbox running, so its NICs are live when the
// kernel is saved, and the network protocols' per-NIC endpoints used to
// drag each NIC (link endpoint, receive buffers, GRO, qdisc, neighbor
// cache) into the state file, for the restore to decode and then replace
// with the new link's. The restored sandbox answers over its new link. Read
// from runsc's own count of what the restore decoded (debug log).
func TestSnapshotLeavesNetworkInterfacesOut(t *testing.T) {
	ds := startDebugSandbox(t, "nics")
	stats, _ := ds.restoreLoadStats(t)
	for _, typ := range []string{"pkg/tcpip/stack.nic\n", "pkg/tcpip/link/fdbased.endpoint\n"} {
		if strings.Contains(stats, typ) {
			t.Errorf("the restore decoded %s objects from the snapshot", strings.TrimSpace(typ))
		}
	}
}

// A snapshot does not carry procfs's dentry cache (patches/gvisor 0005): a
// /proc/<pid> directory looked up once stayed cached with its ~30 inodes,
// ~1,900 objects every restore decoded (3,600 of the test agent's 30,100).
// Looked up again after the restore, it is there as before.
func TestSnapshotLeavesProcDentriesOut(t *testing.T) {
	ds := startDebugSandbox(t, "procdents")
	stat := fmt.Sprintf("/stat?path=/proc/%d/stat", ds.agent.Pid)
	if _, err := get(ds.inst.AgentAddr(), stat); err != nil {
		t.Fatal(err)
	}
	stats, inst2 := ds.restoreLoadStats(t)
	// mmFile is a task directory's auxv, environ, maps and smaps: there
	// only with a whole directory.
	if strings.Contains(stats, "pkg/sentry/fsimpl/proc.mmFile\n") {
		t.Error("the restore decoded a /proc/<pid> directory from the snapshot")
	}
	if _, err := get(inst2.AgentAddr(), stat); err != nil {
		t.Errorf("after the restore: %v", err)
	}
}

// debugSandbox is a running sandbox of a debug driver (debugDriver).
type debugSandbox struct {
	d     *Driver
	logs  string
	spec  runtime.Spec
	inst  *runtime.Instance
	agent agentState
}

// startDebugSandbox creates a sandbox with a debug driver and waits for its
// agent.
func startDebugSandbox(t *testing.T, name string) *debugSandbox {
	t.Helper()
	e := newEnv(t)
	d, logs := e.debugDriver(t)
	spec := e.spec(name)
	inst, err := d.Create(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy(context.Background(), spec.ID) })
	return &debugSandbox{d: d, logs: logs, spec: spec, inst: inst, agent: waitAgent(t, inst)}
}

// restoreLoadStats checkpoints the sandbox, destroys it, restores it and
// returns runsc's count of what the restore decoded (the "Kernel load
// stats" of its boot log) and the restored instance, its agent answering.
func (ds *debugSandbox) restoreLoadStats(t *testing.T) (string, *runtime.Instance) {
	t.Helper()
	ctx := context.Background()
	d, spec, dir := ds.d, ds.spec, filepath.Join(ds.logs, ds.spec.ID)
	img := t.TempDir()
	if err := d.Checkpoint(ctx, spec.ID, img); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	before := bootLogs(t, dir)
	inst, err := d.Restore(ctx, spec, img)
	if err != nil {
		t.Fatal(err)
	}
	waitAgent(t, inst)
	var stats string
	for _, name := range bootLogs(t, dir) {
		if slices.Contains(before, name) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if i := strings.Index(string(b), "Kernel load stats"); i >= 0 {
			stats = string(b[i:])
		}
	}
	if stats == "" {
		t.Fatal("no kernel load stats in the restore's boot log")
	}
	return stats, inst
}

// bootLogs lists the runsc boot debug logs in dir.
func bootLogs(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range ents {
		if strings.Contains(en.Name(), ".boot.") {
			names = append(names, en.Name())
		}
	}
	return names
}

// Checkpoints of sandboxes using much memory are written with O_DIRECT, of
// others through the page cache; both restore the same processes.
func TestCheckpointDirectAndBuffered(t *testing.T) {
	for _, tc := range []struct {
		name      string
		directMiB int
	}{{"direct", 1}, {"buffered", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.d.cfg.DirectCheckpointMiB = tc.directMiB
			ctx := context.Background()
			spec := e.spec("ckpt" + tc.name)
			inst, err := e.d.Create(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			pre := waitAgent(t, inst)
			if n, ok := cgroupMemoryBytes(inst.Pid); !ok || n <= 0 {
				t.Fatalf("memory cgroup usage of the sandbox: %d, %v", n, ok)
			}
			if got, want := e.d.largeMemory(spec.ID), tc.directMiB > 0; got != want {
				t.Fatalf("largeMemory = %v, want %v", got, want)
			}
			img := t.TempDir()
			if err := e.d.Checkpoint(ctx, spec.ID, img); err != nil {
				t.Fatal(err)
			}
			if err := e.d.Destroy(ctx, spec.ID); err != nil {
				t.Fatal(err)
			}
			inst2, err := e.d.Restore(ctx, spec, img)
			if err != nil {
				t.Fatal(err)
			}
			if post := waitAgent(t, inst2); post.Boot != pre.Boot || post.Counter < pre.Counter {
				t.Fatalf("after restore: %+v, before %+v", post, pre)
			}
		})
	}
}

// A snapshot in the page cache is restored plainly; one that has left it
// with runsc restore --background and O_DIRECT reads of its pages file
// (LazyFiles). Restore follows the caller's copy of that decision, not the
// page cache it finds then (runsc's flags, from its debug log): the files
// the caller checks after the load are exactly the ones loaded lazily.
// Either way the restored sandbox holds exactly the memory it held when it
// was checkpointed.
func TestRestoreHotAndColdSnapshotKeepsMemory(t *testing.T) {
	e := newEnv(t)
	d, logs := e.debugDriver(t)
	ctx := context.Background()
	spec := e.spec("cold")
	inst, err := d.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	pre := waitAgent(t, inst)
	want, err := getSlow(inst.AgentAddr(), "/hold?mb=48")
	if err != nil || len(want) != 64 {
		t.Fatalf("hold: %q, %v", want, err)
	}
	img := t.TempDir()
	if err := d.Checkpoint(ctx, spec.ID, img); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if got := d.LazyFiles(img); got != nil {
		t.Fatalf("lazy files of a snapshot just written through the page cache: %q, want none", got)
	}
	restored := func(how string, lazy []string, wantFlags ...string) {
		t.Helper()
		before := restoreLogs(t, filepath.Join(logs, spec.ID))
		spec.LazyFiles = lazy
		inst, err := d.Restore(ctx, spec, img)
		if err != nil {
			t.Fatal(err)
		}
		if post := waitAgent(t, inst); post.Boot != pre.Boot {
			t.Fatalf("after a %s restore: %+v, before %+v", how, post, pre)
		}
		got, err := getSlow(inst.AgentAddr(), "/sum")
		if err != nil || got != want {
			t.Fatalf("held memory after a %s restore: sha256 %q (%v), before %q", how, got, err, want)
		}
		if err := d.Destroy(ctx, spec.ID); err != nil {
			t.Fatal(err)
		}
		after := restoreLogs(t, filepath.Join(logs, spec.ID))
		if len(after) != len(before)+1 {
			t.Fatalf("runsc restore logs %v, then %v: want one more", before, after)
		}
		b, err := os.ReadFile(filepath.Join(logs, spec.ID, after[len(after)-1]))
		if err != nil {
			t.Fatal(err)
		}
		_, args, _ := strings.Cut(string(b), "] Args: [")
		args, _, _ = strings.Cut(args, "]\n")
		var flags []string
		for _, f := range []string{"--background", "--direct"} {
			if slices.Contains(strings.Fields(args), f) {
				flags = append(flags, f)
			}
		}
		if !slices.Equal(flags, wantFlags) {
			t.Fatalf("a %s restore ran runsc restore with %q, want %q", how, flags, wantFlags)
		}
	}
	restored("hot", nil)
	evict := func() {
		for _, name := range []string{"pages.img", "checkpoint.img", "pages_meta.img"} {
			f, err := os.Open(filepath.Join(img, name))
			if err != nil {
				t.Fatal(err)
			}
			f.Sync()
			unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
			f.Close()
		}
	}
	evict()
	lazy := d.LazyFiles(img)
	if !slices.Equal(lazy, []string{pagesFile}) {
		t.Fatalf("lazy files of a cold snapshot: %q, want %s", lazy, pagesFile)
	}
	restored("cold", lazy, "--background", "--direct")
	evict()
	restored("cold, decided plain", nil)
	if got := d.LazyFiles(img); got != nil {
		t.Fatalf("lazy files of a snapshot read back into the page cache: %q, want none", got)
	}
	restored("hot, decided lazy", lazy, "--background", "--direct")
}

// restoreLogs names the debug logs of runsc restore commands in dir.
func restoreLogs(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, en := range ents {
		if strings.Contains(en.Name(), ".restore.") {
			names = append(names, en.Name())
		}
	}
	slices.Sort(names)
	return names
}
