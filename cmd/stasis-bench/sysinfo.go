package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Machine describes the host the numbers come from.
type Machine struct {
	Hostname    string  `json:"hostname"`
	NProc       int     `json:"nproc"`
	MemTotalMiB int     `json:"mem_total_mib"`
	Kernel      string  `json:"kernel"`
	CPUModel    string  `json:"cpu_model"`
	OS          string  `json:"os"`
	KVM         string  `json:"kvm"`                    // "usable", "present but unusable: ...", "absent"
	LoadStart   string  `json:"loadavg_start"`          // /proc/loadavg when the run started
	LoadEnd     string  `json:"loadavg_end"`            // and when it ended
	BusyStart   float64 `json:"host_cpu_percent_start"` // host CPU busy (percent of one core) over 1 s before the run
}

// Versions are the versions of what was measured.
type Versions struct {
	Go        string `json:"go"`
	Runsc     string `json:"runsc"`
	GitCommit string `json:"git_commit,omitempty"`
	GitDirty  bool   `json:"git_dirty,omitempty"`
	Platform  string `json:"runsc_platform"`
}

func machineInfo() Machine {
	m := Machine{NProc: runtime.NumCPU()}
	m.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if v, ok := meminfo()["MemTotal"]; ok {
		m.MemTotalMiB = int(v >> 20)
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	m.KVM = kvmState()
	m.LoadStart = loadavg()
	return m
}

// kvmState says whether /dev/kvm exists and answers KVM_GET_API_VERSION.
func kvmState() string {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return "absent"
	}
	if err != nil {
		return "present but unusable: " + err.Error()
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xAE00
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return "present but unusable: " + err.Error()
	}
	return fmt.Sprintf("usable (API version %d; not used: the platform is systrap)", v)
}

// loadavg is the first three fields of /proc/loadavg.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func versions(ctx context.Context, cfg *Config) Versions {
	v := Versions{Go: runtime.Version(), Platform: "systrap"}
	if out, err := exec.CommandContext(ctx, "go", "version").Output(); err == nil {
		v.Go = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "go version "))
	}
	if out, err := exec.CommandContext(ctx, cfg.Runsc, "--version").CombinedOutput(); err == nil {
		first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		v.Runsc = strings.TrimPrefix(first, "runsc version ")
	}
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = cfg.RepoRoot
		out, err := cmd.Output()
		return strings.TrimSpace(string(out)), err
	}
	if c, err := git("rev-parse", "HEAD"); err == nil {
		v.GitCommit = c
		if st, err := git("status", "--porcelain", "--untracked-files=no"); err == nil && st != "" {
			v.GitDirty = true
		}
	}
	return v
}

// meminfo returns /proc/meminfo in bytes.
func meminfo() map[string]int64 {
	out := map[string]int64{}
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && f[1] == "kB" {
			n <<= 10
		}
		out[k] = n
	}
	return out
}

// cpuBusy returns the host's busy and total jiffies from /proc/stat.
func cpuBusy() (busy, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, x := range f[1:] {
		n, _ := strconv.ParseInt(x, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// hostCPUPercent measures how busy the whole host is over d, in percent of
// one core.
func hostCPUPercent(ctx context.Context, d time.Duration) float64 {
	b0, t0 := cpuBusy()
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	b1, t1 := cpuBusy()
	if t1 == t0 {
		return 0
	}
	return float64(b1-b0) / float64(t1-t0) * 100 * float64(runtime.NumCPU())
}

func procCmdline(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	return strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
}

// SandboxMem is the host memory one sandbox holds.
type SandboxMem struct {
	PssMiB    float64 // sum of PSS of every process in the sandbox's cgroup
	RssMiB    float64 // sum of RSS of the same (shared pages counted each time)
	CgroupMiB float64 // the memory cgroup's usage (includes page cache)
	Procs     int
}

// sandboxMem measures the memory of the sandbox whose runsc-sandbox process
// is pid: every process of its memory cgroup (sentry, gofer, systrap stubs).
func sandboxMem(pid int) (SandboxMem, error) {
	var m SandboxMem
	dir, err := memCgroupDir(pid)
	if err != nil {
		return m, err
	}
	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return m, err
	}
	for _, f := range strings.Fields(string(procs)) {
		p, _ := strconv.Atoi(f)
		pss, rss, err := smapsRollup(p)
		if err != nil {
			continue // exited
		}
		m.PssMiB += pss
		m.RssMiB += rss
		m.Procs++
	}
	for _, name := range []string{"memory.usage_in_bytes", "memory.current"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
			n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			m.CgroupMiB = float64(n) / (1 << 20)
			break
		}
	}
	return m, nil
}

// memCgroupDir finds the memory cgroup directory of pid.
func memCgroupDir(pid int) (string, error) {
	return cgroupDir(pid, "memory", "memory.current")
}

// cgroupDir finds pid's cgroup directory for a cgroup v1 controller, else
// in the v2 unified hierarchy (recognised by v2File).
func cgroupDir(pid int, controller, v2File string) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	var v2 string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == controller {
				return filepath.Join("/sys/fs/cgroup", parts[1], parts[2]), nil
			}
		}
		if parts[0] == "0" && parts[1] == "" {
			v2 = parts[2]
		}
	}
	if v2 != "" {
		for _, base := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
			d := filepath.Join(base, v2)
			if _, err := os.Stat(filepath.Join(d, v2File)); err == nil {
				return d, nil
			}
		}
	}
	return "", fmt.Errorf("no %s cgroup for pid %d", controller, pid)
}

// cgroupCPU returns the CPU time used so far by the cgroup of pid.
func cgroupCPU(pid int) (time.Duration, error) {
	dir, err := cgroupDir(pid, "cpuacct", "cpu.stat")
	if err != nil {
		return 0, err
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cpuacct.usage")); err == nil {
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return time.Duration(n), err
	}
	b, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "usage_usec "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return time.Duration(n) * time.Microsecond, err
		}
	}
	return 0, errors.New("no usage_usec in " + dir + "/cpu.stat")
}

// idleCPU measures the CPU used by each cgroup (given by a member pid) over
// d, in percent of one core.
func idleCPU(ctx context.Context, pids []int, d time.Duration) []float64 {
	start := make([]time.Duration, len(pids))
	ok := make([]bool, len(pids))
	for i, p := range pids {
		if t, err := cgroupCPU(p); err == nil {
			start[i], ok[i] = t, true
		}
	}
	t0 := time.Now()
	sleepCtx(ctx, d)
	el := time.Since(t0)
	var out []float64
	for i, p := range pids {
		if !ok[i] {
			continue
		}
		if t, err := cgroupCPU(p); err == nil {
			out = append(out, float64(t-start[i])/float64(el)*100)
		}
	}
	return out
}

// smapsRollup returns a process's PSS and RSS in MiB.
func smapsRollup(pid int) (pss, rss float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "Pss:":
			pss = n / 1024
		case "Rss:":
			rss = n / 1024
		}
	}
	return pss, rss, nil
}

// processRSS is one process's RSS in MiB.
func processRSS(pid int) float64 {
	_, rss, _ := smapsRollup(pid)
	return rss
}

// processCPU is the CPU time (user and system) process pid has used.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	d, err := statCPU(string(b))
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return d, nil
}

// statCPU reads utime plus stime from a /proc/<pid>/stat line: the 14th
// and 15th fields, in clock ticks (100 Hz on Linux), counted after the
// command name, which is in parentheses and may hold spaces and ')'.
func statCPU(stat string) (time.Duration, error) {
	end := strings.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("no command name in %q", stat)
	}
	f := strings.Fields(stat[end+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields after the command name, want 13 or more", len(f))
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// dirSize is the total size of the regular files under dir.
func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// unmountUnder lazily unmounts everything mounted below dir (runsc leaves
// an nsfs "null-netns" mount in its root dir), deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var targets []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		t := unescapeMount(f[1])
		if strings.HasPrefix(t, dir+"/") {
			targets = append(targets, t)
		}
	}
	slices.SortFunc(targets, func(a, b string) int { return len(b) - len(a) })
	for _, t := range targets {
		exec.Command("umount", "-l", t).Run()
	}
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// forceDeleteAll kills every container runsc knows under root.
func forceDeleteAll(runsc, root string) {
	if _, err := os.Stat(root); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, runsc, "--root="+root, "list", "--quiet").Output()
	if err != nil {
		return
	}
	for _, id := range strings.Fields(string(out)) {
		exec.CommandContext(ctx, runsc, "--root="+root, "delete", "--force", id).Run()
	}
}
