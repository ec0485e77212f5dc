package gvisor

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// removeCgroups deletes the (empty) cgroups runsc made for sandbox id, in
// every cgroup v1 hierarchy and in v2. runsc leaves some of them behind after
// `delete`; without this, every sandbox ever run would leave a directory.
func (d *Driver) removeCgroups(id string) {
	rel := filepath.Join(d.cfg.CgroupParent, id)
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "hierarchy-ID:controller-list:path"
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		own := parts[2]
		var mounts []string
		switch {
		case parts[1] == "":
			mounts = []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}
		case strings.HasPrefix(parts[1], "name="):
			mounts = []string{"/sys/fs/cgroup/" + strings.TrimPrefix(parts[1], "name=")}
		default:
			for _, c := range strings.Split(parts[1], ",") {
				mounts = append(mounts, "/sys/fs/cgroup/"+c)
			}
		}
		for _, m := range mounts {
			if filepath.IsAbs(rel) {
				os.Remove(filepath.Join(m, rel))
			} else {
				os.Remove(filepath.Join(m, own, rel))
			}
		}
	}
}

// cgroupMemoryBytes is the memory usage of the memory cgroup of process pid
// (cgroup v1 memory.usage_in_bytes, or v2 memory.current).
func cgroupMemoryBytes(pid int) (int64, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return 0, false
	}
	var candidates []string
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			candidates = append(candidates, filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.usage_in_bytes"))
		case parts[0] == "0" && parts[1] == "":
			candidates = append(candidates,
				filepath.Join("/sys/fs/cgroup", parts[2], "memory.current"),
				filepath.Join("/sys/fs/cgroup/unified", parts[2], "memory.current"))
		}
	}
	for _, c := range candidates {
		if v, err := os.ReadFile(c); err == nil {
			if n, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64); err == nil {
				return n, true
			}
		}
	}
	return 0, false
}
