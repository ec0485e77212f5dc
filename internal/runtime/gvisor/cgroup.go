package gvisor

import (
	"bufio"
	"os"
	"path/filepath"
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
