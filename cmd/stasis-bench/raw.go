package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-sandbox/stasis/internal/netpool"
	"github.com/stasis-sandbox/stasis/internal/runtime/gvisor"
)

// rawEnv runs the baseline: the same work done with runsc directly, on
// bundles equivalent to what the gVisor driver generates (same mounts,
// namespaces, capabilities, rlimits, resource limits, overlay and network
// flags, platform), but with a trivial init instead of the agent and no
// HTTP, store or agent in between.
//
// Network links come from a netpool.Pool of the harness's own (its own
// prefix and range), as the driver's do; building them is not timed.
type rawEnv struct {
	runsc string
	agent string
	dir   string // bundles, overlays, images
	root  string // runsc --root
	pool  *netpool.Pool
	seq   int
}

func newRawEnv(cfg *Config) (*rawEnv, error) {
	dir, err := os.MkdirTemp(cfg.TempDir, "stasis-bench-raw-")
	if err != nil {
		return nil, err
	}
	rng, err := netip.ParsePrefix(cfg.RawSubnet)
	if err != nil {
		return nil, fmt.Errorf("raw subnet: %w", err)
	}
	ifp := cfg.RawPrefix
	if len(ifp) > 6 {
		ifp = ifp[:6]
	}
	pool, err := netpool.New(netpool.Config{Prefix: cfg.RawPrefix, IfPrefix: ifp, Range: rng, MTU: netpool.LinkMTU}) // as stasisd's links
	if err != nil {
		return nil, err
	}
	// Links an earlier, interrupted run left behind.
	if err := pool.Cleanup(context.Background(), func(string) bool { return false }); err != nil {
		return nil, err
	}
	e := &rawEnv{runsc: cfg.Runsc, agent: cfg.Agent, dir: dir, root: filepath.Join(dir, "root"), pool: pool}
	if err := os.MkdirAll(e.root, 0o700); err != nil {
		return nil, err
	}
	return e, nil
}

// close kills every baseline container and removes what the env made.
func (e *rawEnv) close() {
	forceDeleteAll(e.runsc, e.root)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, l := range e.pool.List() {
		e.pool.Teardown(ctx, l.ID)
	}
	unmountUnder(e.dir)
	os.RemoveAll(e.dir)
	removeCgroupParent(rawCgroupParent)
}

// rawCgroupParent holds the baseline containers' cgroups, relative to the
// harness's own.
const rawCgroupParent = "stasis-bench-raw"

// removeCgroupParent removes the (then empty) parent cgroup runsc created
// under the harness's cgroup in every hierarchy; a cgroup still in use stays.
func removeCgroupParent(name string) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 {
			continue
		}
		ctrl := strings.TrimPrefix(parts[1], "name=")
		if ctrl == "" {
			ctrl = "unified"
		}
		for _, base := range []string{filepath.Join("/sys/fs/cgroup", ctrl), "/sys/fs/cgroup"} {
			os.Remove(filepath.Join(base, parts[2], name))
		}
	}
}

// rawBox is one baseline container.
type rawBox struct {
	env    *rawEnv
	ID     string
	bundle string
	addr   netip.Addr // the sandbox end of its network link
}

// rawCapabilities is the driver's DefaultCapabilities.
var rawCapabilities = []string{
	"CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP",
	"CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
}

// prepare builds the network link and bundle of a new container whose init
// is args, with env added to its environment; nothing runs yet. vcpu 0: no
// CPU quota.
func (e *rawEnv) prepare(ctx context.Context, rootfs string, args []string, memMiB, vcpu int, env ...string) (*rawBox, error) {
	e.seq++
	id := fmt.Sprintf("raw-%d-%s", e.seq, randomHex(4))
	link, err := e.pool.Setup(ctx, id)
	if err != nil {
		return nil, err
	}
	b := &rawBox{env: e, ID: id, bundle: filepath.Join(e.dir, id), addr: link.SandboxAddr}
	if err := os.MkdirAll(filepath.Join(b.bundle, "overlay"), 0o700); err != nil {
		return nil, err
	}
	limit := int64(memMiB) << 20
	var cpu *specs.LinuxCPU
	if vcpu > 0 {
		quota, period := int64(vcpu)*100000, uint64(100000)
		cpu = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	caps := append([]string(nil), rawCapabilities...)
	spec := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			User: specs.User{UID: 0, GID: 0},
			Args: args,
			Env:  append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...),
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1 << 20, Soft: 1 << 20}},
		},
		Root:     &specs.Root{Path: rootfs, Readonly: false},
		Hostname: "sandbox", // the same for all: restore checks it
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/.stasis/agent", Type: "bind", Source: e.agent, Options: []string{"rbind", "ro", "nosuid", "nodev"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: rawCgroupParent + "/" + id,
			Resources: &specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: &limit},
				CPU:    cpu,
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace, Path: link.NetnsPath},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
		},
	}
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(b.bundle, "config.json"), data, 0o600); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *rawBox) global() []string {
	return []string{"--root=" + b.env.root, "--platform=systrap"}
}

// runsc runs a runsc subcommand on the container (stdin, stdout optional).
func (b *rawBox) runsc(ctx context.Context, stdin io.Reader, stdout io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, b.env.runsc, append(b.global(), args...)...)
	var stderr bytes.Buffer
	cmd.Stdin = stdin
	cmd.Stdout = stdout
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("runsc %s: %v: %s", strings.Join(args, " "), err, lastLines(stderr.String(), 5))
	}
	return nil
}

// startCmd runs run or restore: the container inherits runsc's stdio, so
// it goes to a file (a pipe would be held open by the sandbox).
func (b *rawBox) startCmd(ctx context.Context, args ...string) error {
	console, err := os.OpenFile(filepath.Join(b.bundle, "console.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer console.Close()
	flags := []string{"--network=sandbox", "--overlay2=root:dir=" + filepath.Join(b.bundle, "overlay")}
	cmd := exec.CommandContext(ctx, b.env.runsc, append(append(b.global(), flags...), args...)...)
	cmd.Stdout, cmd.Stderr = console, console
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Run(); err != nil {
		log, _ := os.ReadFile(filepath.Join(b.bundle, "console.log"))
		return fmt.Errorf("runsc %s: %v: %s", args[0], err, lastLines(string(log), 5))
	}
	return nil
}

// start is `runsc run --detach`: create and start; returns once init runs.
func (b *rawBox) start(ctx context.Context) error {
	return b.startCmd(ctx, "run", "--detach", "--bundle="+b.bundle, b.ID)
}

// exec is `runsc exec`.
func (b *rawBox) exec(ctx context.Context, stdin io.Reader, stdout io.Writer, args ...string) error {
	return b.runsc(ctx, stdin, stdout, append([]string{"exec", b.ID}, args...)...)
}

// checkpoint saves the container into dir; it stops. The stopped container
// is deleted (timed separately by the caller if wanted).
func (b *rawBox) checkpoint(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return b.runsc(ctx, nil, nil, "checkpoint", "--image-path="+dir, b.ID)
}

// checkpointLeaveRunning saves the container into dir and leaves it as it
// was (a frozen one stays frozen): what stasis's warm pause does.
func (b *rawBox) checkpointLeaveRunning(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return b.runsc(ctx, nil, nil, "checkpoint", "--leave-running", "--image-path="+dir, b.ID)
}

// deleteStopped removes the container and waits until its processes are gone.
func (b *rawBox) deleteStopped(ctx context.Context) error {
	if err := b.runsc(ctx, nil, nil, "delete", "--force", b.ID); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(gvisor.RunscProcesses(b.env.root, b.ID)) > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("runsc processes of %s still alive", b.ID)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// readdress puts the addresses back on the sandbox interface, which runsc
// strips; needed before every restore. Not timed.
func (b *rawBox) readdress(ctx context.Context) error {
	return b.env.pool.Readdress(ctx, b.ID)
}

// restore is `runsc restore --detach` from dir into a new container, with
// flags added.
func (b *rawBox) restore(ctx context.Context, dir string, flags ...string) error {
	args := append([]string{"restore", "--detach"}, flags...)
	return b.startCmd(ctx, append(args, "--bundle="+b.bundle, "--image-path="+dir, b.ID)...)
}

func (b *rawBox) freeze(ctx context.Context) error { return b.runsc(ctx, nil, nil, "pause", b.ID) }
func (b *rawBox) thaw(ctx context.Context) error   { return b.runsc(ctx, nil, nil, "resume", b.ID) }

// destroy kills the container and frees its link and files.
func (b *rawBox) destroy(ctx context.Context) error {
	err := b.deleteStopped(ctx)
	if terr := b.env.pool.Teardown(ctx, b.ID); err == nil {
		err = terr
	}
	os.RemoveAll(b.bundle)
	return err
}

// sandboxPid is the host PID of the container's runsc-sandbox process.
func (b *rawBox) sandboxPid() (int, error) {
	for _, p := range gvisor.RunscProcesses(b.env.root, b.ID) {
		if strings.HasPrefix(procCmdline(p), "runsc-sandbox") {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no runsc-sandbox process for %s", b.ID)
}

// pagesLoaded fails while the container's sandbox process still holds a
// checkpoint's pages file open: a runsc restore --background loads memory
// after it returns, and closes the file once every page is in.
func (b *rawBox) pagesLoaded() error {
	pid, err := b.sandboxPid()
	if err != nil {
		return err
	}
	if gvisor.HoldsPagesFile(pid) {
		return fmt.Errorf("raw %s: runsc-sandbox still loading its pages file", b.ID)
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
