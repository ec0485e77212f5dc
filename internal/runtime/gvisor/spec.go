package gvisor

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-sandbox/stasis/internal/runtime"
)

// DefaultCapabilities are the capabilities of the agent (PID 1) and so, by
// default, of everything it runs: Docker's default set. They are gVisor's
// virtual capabilities; none of them reaches the host kernel. (runsc drops
// CAP_NET_RAW unless --net-raw is given.)
var DefaultCapabilities = []string{
	"CAP_AUDIT_WRITE",
	"CAP_CHOWN",
	"CAP_DAC_OVERRIDE",
	"CAP_FOWNER",
	"CAP_FSETID",
	"CAP_KILL",
	"CAP_MKNOD",
	"CAP_NET_BIND_SERVICE",
	"CAP_NET_RAW",
	"CAP_SETFCAP",
	"CAP_SETGID",
	"CAP_SETPCAP",
	"CAP_SETUID",
	"CAP_SYS_CHROOT",
}

// defaultPath is added to the agent's environment when Spec.Env has no PATH.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

const (
	cpuPeriod = 100000 // µs
	mib       = 1 << 20
)

// bootCPUs is the CPU quota, in cores, a sandbox boots and restores with when
// its limit is lower: with 1 core, the sentry (which boots on two) was
// throttled for 90-260 ms of a 400 ms `runsc run` (docs/density/NOTES.md,
// "Create floor"). No user code runs before the agent answers, so the
// limit protects nobody then; Driver.LimitCPU applies it after. runsc
// derives the number of CPUs the sandbox sees (and the sentry's GOMAXPROCS)
// from the quota at boot, as max(2, quota) capped at the host's cores, so
// 2 cores leave that number as the real limit would (and restore ignores
// the spec's resources).
const bootCPUs = 2

// memoryLimitEnv tells the agent the sandbox's memory budget
// (agent.EnvMemoryLimit).
const memoryLimitEnv = "STASIS_MEMORY_LIMIT_MIB"

// vcpuEnv tells the agent the sandbox's CPU limit (agent.EnvVCPU): how fast
// memory can grow, which paces its watchdog. (gVisor shows the sandbox at
// least two CPUs.)
const vcpuEnv = "STASIS_VCPU"

// agentProcsEnv marks GOMAXPROCS as the agent's own (agent.EnvOwnProcs):
// the agent runs with as many Ps as the sandbox has vCPUs, as Go picks from
// a CPU quota it can see (gVisor shows none), and hides the variable from
// its commands. Each P the agent does not need is runtime memory (caches,
// spans, GC work buffers) saved in every checkpoint: ~0.2 MiB with one P
// instead of two (docs/density/NOTES.md).
const agentProcsEnv = "STASIS_AGENT_GOMAXPROCS"

// hostMemoryLimit is the host cgroup memory limit of a sandbox whose budget
// is memMiB: the budget plus headroom.
//
// gVisor has no OOM killer: a sandbox that reaches its host cgroup limit is
// SIGKILLed whole by the host kernel, agent and all. So the budget is
// enforced inside the sandbox by the agent's watchdog (it kills the biggest
// process, as Linux would), and the host limit only catches what the agent
// could not stop in time. The headroom covers gVisor's own memory (10-30
// MiB, plus an eighth of the budget for the sentry's bookkeeping) and what
// the guest allocates between crossing the budget and dying: memory grows by
// up to ~1 GB/s per vCPU, and on a loaded host the watchdog's kill can take
// 100 ms or more (with 128 MiB of headroom a Python hog, measured, sometimes
// won that race). A single system call that commits more than the headroom
// at once (a read(2) of a huge file into one buffer) still takes the whole
// sandbox down: the kill lands only when the call returns.
//
// gVisor reports the host limit as MemTotal; the agent is told the budget
// in its environment.
func hostMemoryLimit(memMiB int) int64 {
	return int64(memMiB+memMiB/8+memoryHeadroomMiB) * mib
}

// memoryHeadroomMiB is the fixed part of hostMemoryLimit's headroom.
const memoryHeadroomMiB = 256

// hostPidsLimit is the host cgroup's task limit for a sandbox with memMiB of
// memory (0: unlimited memory). It protects the host's PID space (32768 PIDs
// on a default kernel, shared by everything) should the agent's own limits
// fail; reaching it kills the sandbox (the sentry cannot create the host
// threads it needs), so it sits well above them: the agent kills a fork bomb
// at agent.TaskLimit(memMiB) = memMiB processes within [256, 4096] (commands'
// RLIMIT_NPROC is a quarter more), and each guest process takes about two
// host tasks (systrap stub), each thread far less.
func hostPidsLimit(memMiB int) int64 {
	if memMiB <= 0 {
		memMiB = 4096
	}
	return int64(4*min(max(memMiB, 256), 4096) + 512)
}

// ociSpec builds the bundle's config.json for spec. Everything restore
// validates (args, env names, cwd, user, mounts, hostname) must come out the
// same for the same Spec, so this function must stay deterministic and
// stable across stasis versions: sandboxes checkpointed by an older stasisd
// are restored with the spec a newer one builds.
func ociSpec(spec runtime.Spec, netnsPath, cgroupsPath string) *specs.Spec {
	env := append([]string(nil), spec.Env...)
	hasPath := false
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			hasPath = true
		}
	}
	if !hasPath {
		env = append(env, defaultPath)
	}
	// The agent's watchdog keeps the sandbox within its memory budget; the
	// host cgroup gets headroom above it (hostMemoryLimit). Restore does not
	// validate the environment, so checkpoints taken without these still
	// restore.
	if spec.MemoryMiB > 0 {
		env = append(env, memoryLimitEnv+"="+strconv.Itoa(spec.MemoryMiB))
	}
	if spec.VCPU > 0 {
		env = append(env, vcpuEnv+"="+strconv.Itoa(spec.VCPU))
		if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") }) {
			env = append(env, "GOMAXPROCS="+strconv.Itoa(spec.VCPU), agentProcsEnv+"=1")
		}
	}
	hostname := spec.Hostname
	if hostname == "" {
		hostname = spec.ID
	}
	caps := append([]string(nil), DefaultCapabilities...)

	var res specs.LinuxResources
	if spec.MemoryMiB > 0 {
		limit := hostMemoryLimit(spec.MemoryMiB)
		res.Memory = &specs.LinuxMemory{Limit: &limit}
	}
	pids := hostPidsLimit(spec.MemoryMiB)
	res.Pids = &specs.LinuxPids{Limit: &pids}
	if spec.VCPU > 0 {
		quota := int64(max(spec.VCPU, bootCPUs)) * cpuPeriod
		period := uint64(cpuPeriod)
		res.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}

	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			User: specs.User{UID: 0, GID: 0},
			Args: []string{runtime.AgentMountPath},
			Env:  env,
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  caps,
				Effective: caps,
				Permitted: caps,
			},
			Rlimits: []specs.POSIXRlimit{
				{Type: "RLIMIT_NOFILE", Hard: 1 << 20, Soft: 1 << 20},
			},
		},
		// The image is shared by many sandboxes and never written: runsc puts
		// an overlay over it (see overlayFlag), so Readonly must be false for
		// the sandbox to be able to write.
		Root:     &specs.Root{Path: spec.RootFS, Readonly: false},
		Hostname: hostname,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			// /tmp: runsc mounts a tmpfs there itself when the image's /tmp is
			// empty or missing (sandbox memory, saved by checkpoint).
			{Destination: runtime.AgentMountPath, Type: "bind", Source: spec.AgentPath, Options: []string{"rbind", "ro", "nosuid", "nodev"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: cgroupsPath,
			Resources:   &res,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace, Path: netnsPath},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
		},
	}
}

// writeBundle writes config.json into dir.
func writeBundle(dir string, s *specs.Spec) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "config.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "config.json"))
}

// checkSpec validates what the driver needs from a Spec before touching
// anything.
func checkSpec(spec runtime.Spec) error {
	if !validID(spec.ID) {
		return fmt.Errorf("invalid sandbox ID %q", spec.ID)
	}
	if !filepath.IsAbs(spec.RootFS) {
		return fmt.Errorf("rootfs %q is not an absolute path", spec.RootFS)
	}
	if fi, err := os.Stat(spec.RootFS); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	} else if !fi.IsDir() {
		return fmt.Errorf("rootfs %s is not a directory", spec.RootFS)
	}
	mp := filepath.Join(spec.RootFS, runtime.AgentMountPath)
	if fi, err := os.Lstat(mp); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("image %s lacks the agent mount point %s (an empty regular file): %v", spec.RootFS, runtime.AgentMountPath, err)
	}
	if !filepath.IsAbs(spec.AgentPath) {
		return fmt.Errorf("agent path %q is not absolute", spec.AgentPath)
	}
	if fi, err := os.Stat(spec.AgentPath); err != nil {
		return fmt.Errorf("agent: %w", err)
	} else if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("agent %s is not an executable file", spec.AgentPath)
	}
	for _, kv := range spec.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("bad environment entry %q", kv)
		}
	}
	if spec.VCPU < 0 || spec.MemoryMiB < 0 || spec.DiskMiB < 0 {
		return fmt.Errorf("negative resource limit")
	}
	return nil
}
