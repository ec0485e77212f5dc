// Package gvisor runs sandboxes with gVisor's runsc (systrap platform, no
// KVM needed); freeze and thaw talk to a running sandbox's control socket
// directly. Each sandbox is one runsc container whose PID 1 is the agent,
// with its own network namespace and link-local subnet from a netpool.Pool,
// its own cgroup, and an overlay over the shared, never-written image.
//
// On-disk layout:
//
//	RootDir/                 runsc --root, shared by all sandboxes
//	StateDir/<id>/config.json  OCI bundle (rewritten by every Create/Restore)
//	StateDir/<id>/overlay/     the overlay's upper layer lives in an unlinked
//	                           file here (disk, not RAM; saved by checkpoint)
//	StateDir/<id>/console.log  the agent's stdout/stderr (and runsc's errors)
//	StateDir/<id>/frozen       present while the sandbox is frozen (control.go)
//	DebugLogDir/<id>/          runsc debug logs, only if DebugLogDir is set
package gvisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/fsutil"
	"github.com/stasis-sandbox/stasis/internal/netpool"
	"github.com/stasis-sandbox/stasis/internal/runtime"
)

// DefaultPlatform is the gVisor platform used when Config.Platform is empty.
const DefaultPlatform = "systrap"

// DefaultCgroupParent is used when Config.CgroupParent is empty.
const DefaultCgroupParent = "stasis"

// Config configures a Driver.
type Config struct {
	// Runsc is the path of the runsc binary. It must be a static build
	// (CGO_ENABLED=0). Empty: look up "runsc" in PATH.
	Runsc string
	// RootDir is runsc's --root, one directory shared by all sandboxes
	// (runsc mounts an nsfs "null-netns" inside it; don't use a new one per
	// sandbox). Required.
	RootDir string
	// StateDir holds per-sandbox bundles, overlay files and console logs.
	// Required.
	StateDir string
	// Platform is runsc's --platform. Default "systrap".
	Platform string
	// Net builds each sandbox's network link. Required.
	Net *netpool.Pool
	// CgroupParent is the cgroup under which each sandbox gets a cgroup
	// named after its ID. A relative path is relative to the cgroups of the
	// calling process (so sandboxes stay inside stasisd's own cgroup and its
	// limits); an absolute one is relative to the cgroup root. Default
	// "stasis".
	CgroupParent string
	// MemoryOverlay keeps the sandbox's writable layer in sandbox memory
	// instead of a file in StateDir. Both are saved by checkpoint.
	MemoryOverlay bool
	// DebugLogDir, if set, turns on runsc debug logging into
	// DebugLogDir/<id>/. Destroy leaves these logs alone.
	DebugLogDir string
	// DirectCheckpointMiB is the sandbox memory use from which checkpoints
	// are written with O_DIRECT (see largeMemory). 0: 512; negative: never.
	DirectCheckpointMiB int
}

// Driver implements runtime.Driver with runsc.
type Driver struct {
	cfg     Config
	version string
	hashes  hashCache
}

var _ runtime.Driver = (*Driver)(nil)

// New checks cfg and the runsc binary and returns a Driver.
func New(cfg Config) (*Driver, error) {
	if cfg.Runsc == "" {
		p, err := exec.LookPath("runsc")
		if err != nil {
			return nil, fmt.Errorf("gvisor: no runsc binary configured and none in PATH: %w", err)
		}
		cfg.Runsc = p
	}
	if cfg.Platform == "" {
		cfg.Platform = DefaultPlatform
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent
	}
	if cfg.Net == nil {
		return nil, errors.New("gvisor: Config.Net (network pool) is required")
	}
	if cfg.RootDir == "" || cfg.StateDir == "" {
		return nil, errors.New("gvisor: Config.RootDir and Config.StateDir are required")
	}
	for _, p := range []*string{&cfg.Runsc, &cfg.RootDir, &cfg.StateDir, &cfg.DebugLogDir} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, fmt.Errorf("gvisor: %w", err)
		}
		*p = abs
	}
	fi, err := os.Stat(cfg.Runsc)
	if err != nil {
		return nil, fmt.Errorf("gvisor: runsc binary: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return nil, fmt.Errorf("gvisor: runsc binary %s is not an executable file", cfg.Runsc)
	}
	version, err := runscVersion(context.Background(), cfg.Runsc)
	if err != nil {
		return nil, fmt.Errorf("gvisor: runsc binary does not work: %w", err)
	}
	for _, dir := range []string{cfg.RootDir, cfg.StateDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("gvisor: %w", err)
		}
	}
	return &Driver{cfg: cfg, version: version}, nil
}

// Version is the runsc version string (`runsc --version`).
func (d *Driver) Version() string { return d.version }

func validID(id string) bool { return netpool.ValidID(id) }

func (d *Driver) sandboxDir(id string) string  { return filepath.Join(d.cfg.StateDir, id) }
func (d *Driver) overlayDir(id string) string  { return filepath.Join(d.sandboxDir(id), "overlay") }
func (d *Driver) consolePath(id string) string { return filepath.Join(d.sandboxDir(id), "console.log") }
func (d *Driver) pidPath(id string) string     { return filepath.Join(d.sandboxDir(id), "pid") }
func (d *Driver) debugDir(id string) string    { return filepath.Join(d.cfg.DebugLogDir, id) }

// ConsolePath is the file holding the sandbox's stdout and stderr.
func (d *Driver) ConsolePath(id string) string { return d.consolePath(id) }

// overlayFlag is runsc's --overlay2 for the sandbox: the root filesystem
// gets an overlay whose upper layer lives in a file in the sandbox's
// overlay dir (created and unlinked by runsc, so nothing leaks after a
// crash) or in memory, limited to DiskMiB.
func (d *Driver) overlayFlag(spec runtime.Spec) string {
	medium := "dir=" + d.overlayDir(spec.ID)
	if d.cfg.MemoryOverlay {
		medium = "memory"
	}
	f := "--overlay2=root:" + medium
	if spec.DiskMiB > 0 {
		f += ",size=" + strconv.Itoa(spec.DiskMiB) + "m"
	}
	return f
}

// claim checks spec and makes sure no container with its ID is live; a
// stopped leftover is removed. Only after claim succeeded may a failed
// Create or Restore clean up after itself: before, the ID may belong to a
// running sandbox.
func (d *Driver) claim(ctx context.Context, spec runtime.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	if !d.known(spec.ID) { // a stat; `runsc state` only if there is something
		return nil
	}
	st, err := d.state(ctx, spec.ID)
	switch {
	case errors.Is(err, errNoContainer):
		return nil
	case err != nil:
		return err
	case st.Status == "stopped":
		if _, err := d.run(ctx, spec.ID, "delete", "--force", spec.ID); err != nil {
			return fmt.Errorf("removing stopped leftover: %w", err)
		}
		return nil
	default:
		return fmt.Errorf("sandbox %s already exists (%s)", spec.ID, st.Status)
	}
}

// prepare does what Create and Restore share after claim: get a fresh
// network link (a spare the pool built ahead, or a new one), write the
// bundle. It returns the link and the runsc flags
// for the sandbox.
func (d *Driver) prepare(ctx context.Context, spec runtime.Spec) (*netpool.Link, []string, error) {
	// No container runs under this ID, so any link with its name is a leftover.
	if err := d.cfg.Net.Teardown(ctx, spec.ID); err != nil {
		return nil, nil, err
	}
	link, err := d.cfg.Net.Setup(ctx, spec.ID)
	if err != nil {
		return nil, nil, err
	}
	dir := d.sandboxDir(spec.ID)
	if err := os.MkdirAll(d.overlayDir(spec.ID), 0o700); err != nil {
		return link, nil, err
	}
	if d.cfg.DebugLogDir != "" {
		if err := os.MkdirAll(d.debugDir(spec.ID), 0o700); err != nil {
			return link, nil, err
		}
	}
	cgroupsPath := filepath.Join(d.cfg.CgroupParent, spec.ID)
	if err := writeBundle(dir, ociSpec(spec, link.NetnsPath, cgroupsPath)); err != nil {
		return link, nil, fmt.Errorf("writing bundle: %w", err)
	}
	_ = os.Remove(d.pidPath(spec.ID))
	_ = os.Remove(d.frozenMarker(spec.ID)) // a new sandbox runs
	flags := []string{"--network=sandbox", d.overlayFlag(spec)}
	return link, flags, nil
}

// started finishes Create and Restore: the sandbox process's PID is in the
// pid file runsc wrote.
func (d *Driver) started(id string, link *netpool.Link, setup time.Duration) (*runtime.Instance, error) {
	pid, err := d.readPid(id)
	if err != nil {
		return nil, err
	}
	return &runtime.Instance{ID: id, Addr: link.SandboxAddr, Pid: pid, Setup: setup}, nil
}

// readPid returns the sandbox process's PID from the pid file runsc wrote.
func (d *Driver) readPid(id string) (int, error) {
	b, err := os.ReadFile(d.pidPath(id))
	if err != nil {
		return 0, fmt.Errorf("reading pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("bad pid file: %w", err)
	}
	return pid, nil
}

// known reports whether runsc has state for container id under the root
// dir. (runsc names the state file "<container>_sandbox:<sandbox>.state";
// for a sandbox's root container both IDs are the same.)
func (d *Driver) known(id string) bool {
	_, err := os.Stat(filepath.Join(d.cfg.RootDir, id+"_sandbox:"+id+".state"))
	return err == nil
}

// Create builds the sandbox's network link and bundle and starts it.
func (d *Driver) Create(ctx context.Context, spec runtime.Spec) (_ *runtime.Instance, err error) {
	if err := d.claim(ctx, spec); err != nil {
		return nil, fmt.Errorf("gvisor: create %s: %w", spec.ID, err)
	}
	defer func() {
		if err != nil {
			d.cleanupFailed(spec.ID)
			err = fmt.Errorf("gvisor: create %s: %w", spec.ID, err)
		}
	}()
	start := time.Now()
	link, flags, err := d.prepare(ctx, spec)
	if err != nil {
		return nil, err
	}
	setup := time.Since(start)
	if err := d.runWithConsole(ctx, spec.ID, flags, "run", "--detach", "--pid-file="+d.pidPath(spec.ID), "--bundle="+d.sandboxDir(spec.ID), spec.ID); err != nil {
		return nil, err
	}
	return d.started(spec.ID, link, setup)
}

// Restore starts the sandbox from the checkpoint in dir on a fresh network
// link. runsc strips the addresses of the interface it takes over; the link
// is built anew each time, so they are there.
func (d *Driver) Restore(ctx context.Context, spec runtime.Spec, dir string) (_ *runtime.Instance, err error) {
	if dir, err = d.claimRestore(ctx, spec, dir); err != nil {
		return nil, fmt.Errorf("gvisor: restore %s: %w", spec.ID, err)
	}
	defer func() {
		if err != nil {
			d.cleanupFailed(spec.ID)
			err = fmt.Errorf("gvisor: restore %s: %w", spec.ID, err)
		}
	}()
	start := time.Now()
	link, flags, err := d.prepare(ctx, spec)
	if err != nil {
		return nil, err
	}
	setup := time.Since(start)
	// With no container of that ID, `runsc restore` creates it from the
	// bundle and restores into it in one go (no separate `runsc create`).
	args := []string{"restore", "--detach", "--pid-file=" + d.pidPath(spec.ID), "--bundle=" + d.sandboxDir(spec.ID), "--image-path=" + dir}
	args = append(args, lazyFlags(dir, spec.LazyFiles)...)
	if err := d.runWithConsole(ctx, spec.ID, flags, append(args, spec.ID)...); err != nil {
		return nil, versionMismatch(err)
	}
	inst, err := d.started(spec.ID, link, setup)
	if err != nil {
		return nil, err
	}
	// Restored with the boot quota (see bootCPUs); the limit applies before
	// anyone talks to the sandbox.
	if err := d.limitCPU(inst.Pid, spec.VCPU); err != nil {
		return nil, err
	}
	return inst, nil
}

// LimitCPU implements runtime.Driver: it writes the sandbox's real CPU quota
// into its host cgroup, which Create left at the boot quota (bootCPUs).
func (d *Driver) LimitCPU(ctx context.Context, id string, vcpu int) error {
	if !validID(id) {
		return fmt.Errorf("gvisor: limit cpu: invalid sandbox ID %q", id)
	}
	pid, err := d.readPid(id)
	if errors.Is(err, fs.ErrNotExist) || err == nil && !sandboxAlive(pid, id) {
		err = runtime.ErrNotFound
	}
	if err == nil {
		err = d.limitCPU(pid, vcpu)
	}
	if err != nil {
		return fmt.Errorf("gvisor: limit cpu %s: %w", id, err)
	}
	return nil
}

// limitCPU sets the cpu cgroup of sandbox process pid to vcpu cores. With
// no limit (vcpu 0) the sandbox booted without a quota: nothing to do.
func (d *Driver) limitCPU(pid, vcpu int) error {
	if vcpu <= 0 {
		return nil
	}
	return setCPUQuota(pid, int64(vcpu)*cpuPeriod, cpuPeriod)
}

// claimRestore checks the checkpoint in dir and claims spec.ID; it returns
// dir made absolute.
func (d *Driver) claimRestore(ctx context.Context, spec runtime.Spec, dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, "checkpoint.img")); err != nil {
		return "", fmt.Errorf("no checkpoint in %s: %w", dir, err)
	}
	if err := d.claim(ctx, spec); err != nil {
		return "", err
	}
	if err := d.checkAgent(dir, spec.AgentPath); err != nil {
		return "", err
	}
	return dir, nil
}

// cleanupFailed undoes a failed Create or Restore, best effort, even when
// the caller's context is done.
func (d *Driver) cleanupFailed(id string) {
	if !validID(id) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = d.delete(ctx, id)
	_ = d.cfg.Net.Teardown(ctx, id)
	_ = os.Remove(filepath.Join(d.sandboxDir(id), "config.json"))
	_ = os.Remove(d.pidPath(id))
	_ = os.RemoveAll(d.overlayDir(id))
	d.removeCgroups(id)
}

// Checkpoint saves the sandbox into dir (which must exist and be empty) and
// leaves it as it was: a frozen sandbox stays frozen, a running one keeps
// running. Callers that want a consistent cut freeze first, so the image is
// exactly the state that a later Thaw continues; stopping the sandbox is a
// separate Destroy once the image is safe.
func (d *Driver) Checkpoint(ctx context.Context, id, dir string) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("gvisor: checkpoint %s: %w", id, err)
		}
	}()
	if !validID(id) {
		return fmt.Errorf("invalid sandbox ID %q", id)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(ents) != 0 {
		return fmt.Errorf("checkpoint dir %s is not empty", dir)
	}
	if !d.known(id) {
		return runtime.ErrNotFound
	}
	// Without a bundle (state dir lost) the checkpoint still works; it just
	// cannot vouch for the agent binary at restore.
	agent, agentErr := d.bundleAgent(id)
	args := []string{"checkpoint", "--leave-running"}
	// (--exclude-committed-zero-pages was tried for small sandboxes: its
	// scan made a 10 MB pause 1.4× and a 200 MB one 2.9× raw runsc's, and
	// saved 0.2 MiB of a 17.5 MiB image.)
	if d.largeMemory(id) && directIO(filepath.Dir(dir)) {
		args = append(args, "--direct")
	}
	if _, err := d.run(ctx, id, append(args, "--image-path="+dir, id)...); err != nil {
		return d.notFound(ctx, id, err)
	}
	if agentErr == nil {
		if err := writeMeta(dir, agent); err != nil {
			return err
		}
	}
	return nil
}

// waitGone waits until no runsc process of sandbox id (the sandbox, its
// gofer, a leftover runsc command) is left on the host.
func (d *Driver) waitGone(ctx context.Context, id string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := d.Processes(id)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("runsc processes %v still alive", pids)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Processes returns the PIDs of live host processes that belong to sandbox
// id (RunscProcesses with this driver's root dir).
func (d *Driver) Processes(id string) []int { return RunscProcesses(d.cfg.RootDir, id) }

// RunscProcesses returns the PIDs of live host processes that belong to
// sandbox id: every runsc process (sandbox, gofer, command) run with
// --root=root whose last argument is id. Zombies are not counted.
func RunscProcesses(root, id string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	rootFlag := "--root=" + root
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue // gone, or a zombie / kernel thread
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if args[len(args)-1] != id || !slices.Contains(args, rootFlag) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// Destroy kills the sandbox (running, paused or stopped) and removes its
// container, network link and state dir. Unknown IDs are not an error.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	if !validID(id) {
		return fmt.Errorf("gvisor: destroy: invalid sandbox ID %q", id)
	}
	var errs []error
	if err := d.delete(ctx, id); err != nil {
		errs = append(errs, err)
	}
	if err := d.cfg.Net.Teardown(ctx, id); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(d.sandboxDir(id)); err != nil {
		errs = append(errs, err)
	}
	d.removeCgroups(id)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("gvisor: destroy %s: %w", id, err)
	}
	return nil
}

// deleteTimeout bounds one `runsc delete --force`. It asks the sandbox's
// controller to stop the container, and waits for ever on a sentry that
// never answers: hung, or stopped by SIGSTOP.
const deleteTimeout = 10 * time.Second

// delete removes container id and waits until none of its processes is
// left. If `runsc delete` does not return within deleteTimeout, the
// sandbox's processes are killed and it is run again: with the sentry dead,
// it only removes the container's state.
func (d *Driver) delete(ctx context.Context, id string) error {
	try := func() (timedOut bool, err error) {
		dctx, cancel := context.WithTimeout(ctx, deleteTimeout)
		defer cancel()
		_, err = d.run(dctx, id, "delete", "--force", id)
		return errors.Is(dctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil, err
	}
	timedOut, err := try()
	if err != nil && timedOut {
		d.kill(id)
		_, err = try()
	}
	if err != nil {
		return err
	}
	return d.waitGone(ctx, id)
}

// kill sends SIGKILL to every host process of sandbox id: the sandbox
// process named in its pid file (its sentry: its PID namespace's other
// processes die with it), its gofer and any runsc command still at it.
func (d *Driver) kill(id string) {
	pids := d.Processes(id)
	if pid, err := d.readPid(id); err == nil && sandboxAlive(pid, id) && !slices.Contains(pids, pid) {
		pids = append(pids, pid)
	}
	for _, pid := range pids {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}

// List returns the sandboxes runsc runs now (frozen ones included), with
// the addresses of their network links.
func (d *Driver) List(ctx context.Context) ([]runtime.Instance, error) {
	all, err := d.list(ctx)
	if err != nil {
		return nil, fmt.Errorf("gvisor: list: %w", err)
	}
	var out []runtime.Instance
	for _, c := range all {
		if c.Status != "running" && c.Status != "paused" || !sandboxAlive(c.Pid, c.ID) {
			continue
		}
		inst := runtime.Instance{ID: c.ID, Pid: c.Pid, Frozen: d.isFrozen(c.ID)}
		if l, ok := d.cfg.Net.Lookup(c.ID); ok {
			inst.Addr = l.SandboxAddr
		}
		if b, err := d.readBundle(c.ID); err == nil {
			inst.RootFS = b.Root.Path
		}
		out = append(out, inst)
	}
	return out, nil
}

// Alive reports whether sandbox id's process is alive, from its pid file and
// /proc alone: List (runsc list) connects to every sandbox's controller,
// waking each sentry.
func (d *Driver) Alive(id string) (bool, error) {
	pid, err := d.readPid(id)
	if err != nil {
		return false, err
	}
	return sandboxAlive(pid, id), nil
}

// defaultDirectCheckpointMiB is the sandbox memory use from which
// checkpoints are written with runsc's --direct (O_DIRECT), where the
// filesystem allows.
// Through the page cache, runsc's writes of the pages file can each make the
// kernel zero a whole large folio first (perf: 59 % of the checkpoint in
// zero_user_segments): a 1 GB checkpoint took 3.4-5.7 s here instead of
// 0.62 s with --direct. Below this size the page cache wins: measured here,
// 10 MB and 200 MB pauses took 77 and 166 ms buffered against 95 and 205 ms
// direct, and the seal's read-back stays in RAM. A direct checkpoint is
// read back with O_DIRECT too (package snapshot), and restored from the
// disk with O_DIRECT (LazyFiles).
const defaultDirectCheckpointMiB = 512

// largeMemory reports whether sandbox id uses at least DirectCheckpointMiB
// of memory (its memory cgroup's usage), false if that cannot be read.
func (d *Driver) largeMemory(id string) bool {
	limit := int64(d.cfg.DirectCheckpointMiB)
	switch {
	case limit < 0:
		return false
	case limit == 0:
		limit = defaultDirectCheckpointMiB
	}
	pid, err := d.readPid(id)
	if err != nil {
		return false
	}
	n, ok := cgroupMemoryBytes(pid)
	return ok && n >= limit<<20
}

// directPagesMin is the pages file size from which a restore reads it with
// O_DIRECT when it is not in the page cache.
const directPagesMin = 32 << 20

// pagesFile is the checkpoint file of the sandbox's memory pages.
const pagesFile = "pages.img"

// LazyFiles implements runtime.LazyRestorer: the pages file of a
// checkpoint mostly not in the page cache (a snapshot paused a while ago,
// or written with --direct) is loaded after the restore returns (runsc
// restore --background): it returns once the kernel state is loaded, and
// the pages go on loading while the sandbox runs (pages it touches first);
// see docs/OPERATIONS.md for what that gives and why it is not constant. A
// large one is read with --direct too (lazyFlags), so only where the file
// system allows O_DIRECT: through the page cache, runsc loaded such a file
// at 30-170 MB/s here, copying every page twice; with O_DIRECT at 360 MB/s
// a cold 1 GB restore took 5.0-8.0 s instead of 22.8 s (loaded host,
// alternating), and without O_DIRECT --background was slower than a plain
// restore. A cached file is restored plainly: runsc copies its pages
// beside the kernel state's decode, on the other core, where --background
// would copy them after it.
func (d *Driver) LazyFiles(dir string) []string {
	f, err := os.Open(filepath.Join(dir, pagesFile))
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fsutil.MostlyCached(f, fi.Size()) ||
		fi.Size() >= directPagesMin && !directIO(filepath.Dir(dir)) {
		return nil
	}
	return []string{pagesFile}
}

// lazyFlags are runsc restore's flags for the checkpoint in dir whose
// files lazy load after the restore returns (LazyFiles decided it): the
// pages file with --background, read with O_DIRECT if it is large.
func lazyFlags(dir string, lazy []string) []string {
	if !slices.Contains(lazy, pagesFile) {
		return nil
	}
	if fi, err := os.Stat(filepath.Join(dir, pagesFile)); err == nil && fi.Size() >= directPagesMin {
		return []string{"--background", "--direct"}
	}
	return []string{"--background"}
}

// WaitLoaded implements runtime.LazyRestorer: runsc's sandbox process
// closes the pages file once it has loaded every page, so this waits until
// it no longer holds one open, or is gone (polled). Only that process is
// looked at: a scan of every host process's command line, at each poll for
// the whole load, cost CPU beside the sandbox's first commands.
func (d *Driver) WaitLoaded(ctx context.Context, id string) error {
	pid, err := d.readPid(id)
	if err != nil {
		return nil // gone
	}
	for sandboxAlive(pid, id) && HoldsPagesFile(pid) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// HoldsPagesFile reports whether host process pid has a checkpoint's pages
// file open: runsc restore --background loads memory after it returns and
// closes the file once every page is in.
func HoldsPagesFile(pid int) bool {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(filepath.Base(target), pagesFile) {
			return true
		}
	}
	return false
}

// directIO reports whether dir's filesystem takes O_DIRECT writes,
// remembered per filesystem.
func directIO(dir string) bool {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return false
	}
	if v, ok := directIOByDev.Load(st.Dev); ok {
		return v.(bool)
	}
	probe := filepath.Join(dir, fmt.Sprintf(".direct-probe-%d", os.Getpid()))
	fd, err := unix.Open(probe, unix.O_CREAT|unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0o600)
	ok := err == nil
	if ok {
		unix.Close(fd)
	}
	os.Remove(probe)
	directIOByDev.Store(st.Dev, ok)
	return ok
}

var directIOByDev sync.Map // filesystem device → bool

// sandboxAlive reports whether pid is still the live runsc-sandbox process
// of container id. runsc trusts its state file for a paused container, which
// outlives the process after a reboot, or a kill (a zombie, or a reused pid).
func sandboxAlive(pid int, id string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(cmdline, []byte(id))
}

// notFound turns err into runtime.ErrNotFound when runsc has no container id.
func (d *Driver) notFound(ctx context.Context, id string, err error) error {
	if _, serr := d.state(ctx, id); errors.Is(serr, errNoContainer) {
		return runtime.ErrNotFound
	}
	return err
}

// Addr returns the sandbox address of id's network link, if it has one.
func (d *Driver) Addr(id string) (netip.Addr, bool) {
	l, ok := d.cfg.Net.Lookup(id)
	if !ok {
		return netip.Addr{}, false
	}
	return l.SandboxAddr, true
}
