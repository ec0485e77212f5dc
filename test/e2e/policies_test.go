package e2e

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// waitStatus polls a sandbox until it has status want (or is gone, for "").
func waitStatus(t *testing.T, srv *testenv.Server, id, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var sb sandboxInfo
		err := srv.Do("GET", "/sandboxes/"+id, nil, &sb)
		if want == "" && statusOf(err) == http.StatusNotFound {
			return
		}
		if err == nil && sb.Status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s: status %q (err %v), want %q", id, sb.Status, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTimersAndUsage: timeout_seconds pauses after active time, null clears
// it, auto_delete_seconds deletes a paused sandbox; usage and metrics follow.
func TestTimersAndUsage(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := create(t, srv, map[string]any{"name": "timed", "from_template": "stasis/minimal", "timeout_seconds": 1})
	c.sh("echo kept > /home/user/f")
	waitStatus(t, srv, sb.ID, "paused") // the timeout paused it
	// A data-plane call resumes it transparently; the timer is re-armed.
	if got := c.sh("cat /home/user/f"); got != "kept" {
		t.Fatalf("file after timed pause: %q", got)
	}
	waitStatus(t, srv, sb.ID, "paused")

	// null clears the timer: the sandbox stays active.
	c2, sb2 := create(t, srv, map[string]any{"name": "cleared", "from_template": "stasis/minimal", "timeout_seconds": 2})
	if err := srv.Do("PATCH", "/sandboxes/"+sb2.ID, map[string]any{"timeout_seconds": nil}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // longer than the cleared timeout
	if st := getInfo(t, srv, sb2.ID).Status; st != "active" {
		t.Fatalf("cleared timeout still fired: %s", st)
	}
	c2.sh("true")

	// auto_delete_seconds 0: deleted as soon as it is paused.
	_, sb3 := create(t, srv, map[string]any{"name": "ephemeral", "from_template": "stasis/minimal", "auto_delete_seconds": 0})
	if err := srv.Do("POST", "/sandboxes/"+sb3.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, srv, sb3.ID, "")

	// Usage: the timed sandbox was active for at least its timeout, and is paused now.
	var info struct {
		Usage struct {
			ActiveSeconds float64 `json:"active_seconds"`
			PausedSeconds float64 `json:"paused_seconds"`
			SnapshotBytes int64   `json:"snapshot_bytes"`
		} `json:"usage"`
	}
	if err := srv.Do("GET", "/sandboxes/"+sb.ID, nil, &info); err != nil {
		t.Fatal(err)
	}
	if info.Usage.ActiveSeconds < 1 || info.Usage.PausedSeconds <= 0 || info.Usage.SnapshotBytes == 0 {
		t.Fatalf("usage = %+v", info.Usage)
	}
	var team struct {
		ActiveSeconds float64 `json:"active_seconds"`
	}
	if err := srv.Do("GET", "/usage", nil, &team); err != nil || team.ActiveSeconds < info.Usage.ActiveSeconds {
		t.Fatalf("team usage %+v (%v) below one sandbox's %v", team, err, info.Usage.ActiveSeconds)
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`stasis_sandboxes{status="paused"} 1`, `stasis_sandboxes{status="active"} 1`,
		`stasis_operation_duration_seconds_count{operation="pause"}`, `stasis_operation_duration_seconds_count{operation="create"} 3`} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("/metrics lacks %q:\n%s", want, body)
		}
	}
}

// TestTeamLimitAndDiskQuota: the per-team limit on running sandboxes answers
// 429, and the writable-layer quota gives ENOSPC inside and 507 on the files API.
func TestTeamLimitAndDiskQuota(t *testing.T) {
	srv := testenv.StartServer(t, testenv.WithArgs("--max-sandboxes-per-team", "2"))
	c, sb := create(t, srv, map[string]any{"name": "q", "from_template": "stasis/minimal", "disk_mib": 32})
	create(t, srv, map[string]any{"name": "two", "from_template": "stasis/minimal"})
	err := srv.Do("POST", "/sandboxes", map[string]any{"name": "three", "from_template": "stasis/minimal"}, nil)
	if statusOf(err) != http.StatusTooManyRequests || !strings.Contains(err.Error(), "too_many_sandboxes") {
		t.Fatalf("third create: %v, want 429 too_many_sandboxes", err)
	}
	var list []sandboxInfo
	srv.Do("GET", "/sandboxes", nil, &list)
	if len(list) != 2 {
		t.Fatalf("the refused create changed state: %d sandboxes", len(list))
	}

	// Disk quota: writes past 32 MiB fail inside with ENOSPC...
	r := c.exec("dd if=/dev/zero of=/home/user/big bs=1M count=64 2>&1; echo rc=$?")
	if !strings.Contains(r.Stdout, "No space left on device") {
		t.Fatalf("64 MiB into a 32 MiB quota: %q", r.Stdout)
	}
	c.sh("rm -f /home/user/big")
	// ...and with 507 sandbox_storage_full through the files API.
	status, body := c.raw("POST", "/files?path=/home/user/upload", bytes.NewReader(make([]byte, 64<<20)))
	if status != http.StatusInsufficientStorage || !strings.Contains(string(body), "sandbox_storage_full") {
		t.Fatalf("64 MiB upload: HTTP %d %s, want 507 sandbox_storage_full", status, body)
	}
	c.sh("echo still-works > /home/user/small") // small writes still fit

	// Pausing one frees a slot.
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	create(t, srv, map[string]any{"name": "three", "from_template": "stasis/minimal"})
}

// TestDeadSandboxIsFailed: a sandbox killed underneath stasis (as the host's
// OOM killer would) is reported failed with a reason, not active.
func TestDeadSandboxIsFailed(t *testing.T) {
	srv := testenv.StartServer(t)
	_, sb := createMinimal(t, srv, "victim")
	procs := hostProcessesMentioning(sb.ID)
	if len(procs) == 0 {
		t.Fatal("no host processes found for the sandbox")
	}
	for _, p := range procs {
		pid, _ := strconv.Atoi(strings.SplitN(p, ":", 2)[0])
		syscall.Kill(pid, syscall.SIGKILL) // processes of a sandbox this test created
	}
	waitStatus(t, srv, sb.ID, "failed")
	if info := getInfo(t, srv, sb.ID); !strings.Contains(info.Error, "stopped unexpectedly") {
		t.Fatalf("error = %q", info.Error)
	}
}
