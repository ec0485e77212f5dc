package gvisor

import (
	"bufio"
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
