package gvisor

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// removeCgroups deletes the (empty) cgroups runsc made for sandbox id, in
// every cgroup v1 hierarchy and in v2. runsc leaves some of them behind after
// `delete`; without this, every sandbox ever run would leave a directory.
func (d *Driver) removeCgroups(id string) {
	rel := filepath.Join(d.cfg.CgroupParent, id)
	for _, h := range cgroupHierarchies("self") {
		for _, m := range h.mounts {
			if filepath.IsAbs(rel) {
				os.Remove(filepath.Join(m, rel))
			} else {
				os.Remove(filepath.Join(m, h.path, rel))
			}
		}
	}
}

// setCPUQuota limits the cpu cgroup of process pid to quota µs per period
// µs: cgroup v1 cpu.cfs_period_us and cpu.cfs_quota_us, or v2 cpu.max,
// whichever hierarchy has the cpu controller.
func setCPUQuota(pid int, quota, period int64) error {
	q, p := strconv.FormatInt(quota, 10), strconv.FormatInt(period, 10)
	for _, h := range cgroupHierarchies(strconv.Itoa(pid)) {
		writes := [][2]string{{"cpu.cfs_period_us", p}, {"cpu.cfs_quota_us", q}} // file, value
		if h.v2 {
			writes = [][2]string{{"cpu.max", q + " " + p}}
		}
		for _, m := range h.mounts {
			if !h.v2 && filepath.Base(m) != "cpu" {
				continue
			}
			dir := filepath.Join(m, h.path)
			if _, err := os.Stat(filepath.Join(dir, writes[0][0])); err != nil {
				continue // not this mount, or no cpu controller in this v2 cgroup
			}
			for _, w := range writes {
				if err := os.WriteFile(filepath.Join(dir, w[0]), []byte(w[1]), 0); err != nil {
					return fmt.Errorf("setting the CPU limit: %w", err)
				}
			}
			return nil
		}
	}
	return errors.New("setting the CPU limit: the sandbox process has no cpu cgroup")
}

// cgroupMemoryBytes is the memory usage of the memory cgroup of process pid
// (cgroup v1 memory.usage_in_bytes, or v2 memory.current).
func cgroupMemoryBytes(pid int) (int64, bool) {
	for _, h := range cgroupHierarchies(strconv.Itoa(pid)) {
		for _, m := range h.mounts {
			file := "memory.current"
			if filepath.Base(m) == "memory" {
				file = "memory.usage_in_bytes"
			} else if !h.v2 {
				continue
			}
			if v, err := os.ReadFile(filepath.Join(m, h.path, file)); err == nil {
				if n, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64); err == nil {
					return n, true
				}
			}
		}
	}
	return 0, false
}

// cgroupHierarchy is one line of /proc/PID/cgroup: the directories where its
// hierarchy may be mounted, and the process's cgroup path in it.
type cgroupHierarchy struct {
	mounts []string
	path   string
	v2     bool
}

// cgroupHierarchies parses /proc/<proc>/cgroup (proc: a PID or "self").
func cgroupHierarchies(proc string) []cgroupHierarchy {
	f, err := os.Open(filepath.Join("/proc", proc, "cgroup"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []cgroupHierarchy
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "hierarchy-ID:controller-list:path"
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		h := cgroupHierarchy{path: parts[2]}
		switch {
		case parts[1] == "":
			h.v2 = true
			h.mounts = []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}
		case strings.HasPrefix(parts[1], "name="):
			h.mounts = []string{"/sys/fs/cgroup/" + strings.TrimPrefix(parts[1], "name=")}
		default:
			for _, c := range strings.Split(parts[1], ",") {
				h.mounts = append(h.mounts, "/sys/fs/cgroup/"+c)
			}
		}
		out = append(out, h)
	}
	return out
}
