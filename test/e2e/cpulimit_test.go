package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/failpoint"
	"github.com/stasis-sandbox/stasis/internal/runtime/faultinject"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestCPULimitApplied: sandboxes boot and restore with their CPU quota
// lifted (the sentry's boot is not throttled), and carry their configured
// quota in their host cgroup by the time they serve a command: after a
// create, a resume, a create from a snapshot and a fork. The limit is
// enforced, and the sandbox sees as many CPUs as its limit gives it.
func TestCPULimitApplied(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := create(t, srv, map[string]any{"name": "cpu", "from_template": "stasis/minimal", "vcpu": 1})
	wantCPUQuota(t, srv, sb.ID, 1, "after create")
	// runsc shows max(2, limit) CPUs, capped at the host's.
	if got, want := c.sh("nproc"), strconv.Itoa(min(goruntime.NumCPU(), 2)); got != want {
		t.Errorf("nproc %s, want %s", got, want)
	}

	// Two busy loops want two cores; the quota gives one.
	before := cpuThrottled(t, srv, sb.ID)
	c.sh(`for i in 1 2; do timeout 2 sh -c 'while :; do :; done' & done; wait; true`)
	if after := cpuThrottled(t, srv, sb.ID); after <= before {
		t.Errorf("a CPU-bound sandbox with 1 vCPU was not throttled: nr_throttled %d -> %d", before, after)
	}

	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/snapshots", map[string]any{"name": "cpu"}, nil); err != nil {
		t.Fatal(err)
	}
	var snap []struct{ ID string }
	if err := srv.Do("GET", "/snapshots", nil, &snap); err != nil || len(snap) != 1 {
		t.Fatalf("list snapshots: %v %v", snap, err)
	}
	_, fromSnap := create(t, srv, map[string]any{"name": "cpu-snap", "from_snapshot": snap[0].ID})
	wantCPUQuota(t, srv, fromSnap.ID, 1, "after a create from a snapshot")

	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	var forks struct{ Sandboxes []sandboxInfo }
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/fork", map[string]any{"count": 1}, &forks); err != nil || len(forks.Sandboxes) != 1 {
		t.Fatalf("fork: %+v %v", forks, err)
	}
	wantCPUQuota(t, srv, forks.Sandboxes[0].ID, 1, "after a fork")
	var resumed sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/resume", nil, &resumed); err != nil {
		t.Fatal(err)
	}
	wantCPUQuota(t, srv, sb.ID, 1, "after resume")
	c.token = resumed.AccessToken
	if got := c.sh("nproc"); got != strconv.Itoa(min(goruntime.NumCPU(), 2)) {
		t.Errorf("nproc after resume %s", got)
	}
}

// TestCPULimitAfterCrash: a stasisd killed between a create's boot and its
// CPU limit left the sandbox with the boot quota; when it starts again it
// re-adopts the sandbox with its limit.
func TestCPULimitAfterCrash(t *testing.T) {
	srv := testenv.StartServer(t)
	srv.Kill()
	srv.Env = []string{failpoint.Env + "=create.before-cpu-limit"}
	srv.Restart()
	if err := srv.Do("POST", "/sandboxes", map[string]any{"name": "crash", "from_template": "stasis/minimal", "vcpu": 1}, nil); err == nil {
		t.Fatal("create succeeded although the server should have crashed")
	}
	if !srv.WaitExit(30 * time.Second) {
		t.Fatal("stasisd did not crash at create.before-cpu-limit")
	}
	entries, err := os.ReadDir(filepath.Join(srv.DataDir(), "sandboxes"))
	if err != nil || len(entries) != 1 {
		t.Fatalf("sandbox state dirs: %v %v", entries, err)
	}
	id := entries[0].Name()
	if got := cpuQuota(t, srv, id); got == quotaOf(1) {
		t.Fatalf("the crashed create already had its CPU limit (%s): the failpoint is in the wrong place", got)
	}
	srv.Env = nil
	srv.Restart()
	var list []sandboxInfo
	if err := srv.Do("GET", "/sandboxes", nil, &list); err != nil || len(list) != 1 || list[0].Status != "active" {
		t.Fatalf("after the restart: %+v %v", list, err)
	}
	wantCPUQuota(t, srv, id, 1, "after the restart")
}

// TestCPULimitFailure: a sandbox whose CPU limit cannot be applied does not
// run on without it: the create fails and nothing of it is left running.
func TestCPULimitFailure(t *testing.T) {
	srv := testenv.StartServer(t, testenv.WithFaults())
	srv.ArmFaults(faultinject.Rule{Op: faultinject.OpLimitCPU, Action: faultinject.Fail, Times: 1})
	err := srv.Do("POST", "/sandboxes", map[string]any{"name": "nolimit", "from_template": "stasis/minimal", "vcpu": 1}, nil)
	var he *testenv.HTTPError
	if !errors.As(err, &he) || he.Status < 500 {
		t.Fatalf("create with a failing CPU limit: %v", err)
	}
	var list []sandboxInfo
	if err := srv.Do("GET", "/sandboxes", nil, &list); err != nil {
		t.Fatal(err)
	}
	for _, sb := range list {
		if sb.Status != "failed" {
			t.Errorf("sandbox %s is %s, want failed", sb.ID, sb.Status)
		}
		if procs := hostProcessesMentioning(sb.ID); len(procs) > 0 {
			t.Errorf("processes left of the failed create:\n%s", strings.Join(procs, "\n"))
		}
	}
}

func quotaOf(vcpu int) string { return strconv.Itoa(vcpu * 100000) }

// wantCPUQuota checks that sandbox id's host cgroup has a quota of vcpu cores.
func wantCPUQuota(t *testing.T, srv *testenv.Server, id string, vcpu int, when string) {
	t.Helper()
	if got := cpuQuota(t, srv, id); got != quotaOf(vcpu) {
		t.Errorf("%s: CPU quota %s µs per 100 ms, want %s", when, got, quotaOf(vcpu))
	}
}

// cpuQuota reads the CPU quota (µs per period) of sandbox id's host cgroup.
func cpuQuota(t *testing.T, srv *testenv.Server, id string) string {
	t.Helper()
	v := cpuCgroupFile(t, srv, id, "cpu.cfs_quota_us", "cpu.max")
	q, _, _ := strings.Cut(v, " ") // v2: "quota period"
	return q
}

// cpuThrottled is the number of periods in which sandbox id's host cgroup
// was throttled.
func cpuThrottled(t *testing.T, srv *testenv.Server, id string) int {
	t.Helper()
	for _, line := range strings.Split(cpuCgroupFile(t, srv, id, "cpu.stat", "cpu.stat"), "\n") {
		if n, ok := strings.CutPrefix(line, "nr_throttled "); ok {
			v, err := strconv.Atoi(n)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatal("no nr_throttled in cpu.stat")
	return 0
}

// cpuCgroupFile reads a file of the cpu cgroup of sandbox id's host process
// (the pid file stasisd's driver keeps).
func cpuCgroupFile(t *testing.T, srv *testenv.Server, id, v1file, v2file string) string {
	t.Helper()
	pid, err := os.ReadFile(filepath.Join(srv.DataDir(), "sandboxes", id, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%s/cgroup", strings.TrimSpace(string(pid))))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(cg)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var dir, file string
		if parts[1] == "" { // v2: the cpu controller is there if cpu.max is
			for _, mnt := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
				if _, err := os.Stat(filepath.Join(mnt, parts[2], "cpu.max")); err == nil {
					dir, file = filepath.Join(mnt, parts[2]), v2file
				}
			}
		} else if slices.Contains(strings.Split(parts[1], ","), "cpu") {
			dir, file = filepath.Join("/sys/fs/cgroup", parts[1], parts[2]), v1file
		}
		if dir == "" {
			continue
		}
		v, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(v))
	}
	t.Fatalf("no cpu cgroup for sandbox %s in %s", id, cg)
	return ""
}
