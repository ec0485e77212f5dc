package e2e

import (
	"strconv"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestForkContinuesThenDiverges: three forks of a paused sandbox continue
// its process state (same counter process, same files), each with its own
// identity, and then diverge from each other and from the original.
func TestForkContinuesThenDiverges(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := createMinimal(t, srv, "origin")
	c.writeFile("/home/user/shared.txt", []byte("from the origin"))
	startCounter(c)
	before := waitCount(t, c, 10)
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	var out struct {
		Sandboxes []sandboxInfo `json:"sandboxes"`
		Error     string        `json:"error"`
	}
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/fork", map[string]any{"count": 3}, &out); err != nil {
		t.Fatalf("fork: %v", err)
	}
	if len(out.Sandboxes) != 3 || out.Error != "" {
		t.Fatalf("fork returned %d sandboxes, error %q", len(out.Sandboxes), out.Error)
	}
	pid := ""
	addrs := map[string]bool{}
	forks := make([]*client, 3)
	for i, f := range out.Sandboxes {
		if f.ID == sb.ID || f.Status != "active" || f.AccessToken == "" {
			t.Fatalf("fork %d: %+v", i, f)
		}
		fc := &client{t: t, srv: srv, id: f.ID, token: f.AccessToken}
		forks[i] = fc
		// Same process state: the counter process is there and continues.
		p := fc.sh("cat /tmp/counter.pid")
		if pid == "" {
			pid = p
		}
		if p != pid || fc.sh("kill -0 "+p+" && echo alive") != "alive" {
			t.Fatalf("fork %d: counter process %s not running", i, p)
		}
		n := readCount(t, fc)
		if n < before {
			t.Fatalf("fork %d: counter restarted (%d < %d)", i, n, before)
		}
		if got := string(fc.readFile("/home/user/shared.txt")); got != "from the origin" {
			t.Fatalf("fork %d: file %q", i, got)
		}
		addrs[fc.sh("ip -4 addr show eth0 | grep -o 'inet [0-9.]*'")] = true
	}
	if len(addrs) != 3 {
		t.Fatalf("forks share network addresses: %v", addrs)
	}
	// Diverge: each writes its own file; nobody else sees it.
	for i, fc := range forks {
		fc.writeFile("/home/user/mine.txt", []byte("fork "+strconv.Itoa(i)))
	}
	for i, fc := range forks {
		if got := string(fc.readFile("/home/user/mine.txt")); got != "fork "+strconv.Itoa(i) {
			t.Fatalf("fork %d sees %q", i, got)
		}
	}
	// The original, resumed, has none of the forks' writes.
	var resumed sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/resume", nil, &resumed); err != nil {
		t.Fatal(err)
	}
	c.token = resumed.AccessToken
	if got := c.exec("cat /home/user/mine.txt"); got.ExitCode == 0 {
		t.Fatalf("original sees a fork's write: %q", got.Stdout)
	}
	// Tokens are per sandbox.
	if status, _ := c2(t, srv, out.Sandboxes[0].ID, out.Sandboxes[1].AccessToken).raw("POST", "/exec", strings.NewReader(`{"command":"true"}`)); status != 401 {
		t.Fatalf("fork 1's token works on fork 0: HTTP %d", status)
	}
	// Forking an active sandbox is a conflict.
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/fork", map[string]any{"count": 1}, nil); statusOf(err) != 409 {
		t.Fatalf("fork of active sandbox: %v, want 409", err)
	}
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/fork", map[string]any{"count": 101}, nil); statusOf(err) != 400 {
		t.Fatalf("fork count 101: %v, want 400", err)
	}
}

// TestSavedSnapshots: a snapshot saved from an active sandbox (which keeps
// running) and one from a paused sandbox both start new sandboxes with the
// saved process state; deleting a snapshot makes it unusable.
func TestSavedSnapshots(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := createMinimal(t, srv, "source")
	c.writeFile("/home/user/v.txt", []byte("v1"))
	startCounter(c)
	waitCount(t, c, 5)

	var snap struct {
		ID        string `json:"id"`
		SandboxID string `json:"sandbox_id"`
		SizeBytes int64  `json:"size_bytes"`
	}
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/snapshots", map[string]any{"name": "v1"}, &snap); err != nil {
		t.Fatalf("save snapshot of active sandbox: %v", err)
	}
	if snap.SandboxID != sb.ID || snap.SizeBytes == 0 {
		t.Fatalf("snapshot = %+v", snap)
	}
	// The source keeps running and changes on.
	after := waitCount(t, c, 0)
	waitCount(t, c, after+3)
	c.writeFile("/home/user/v.txt", []byte("v2"))

	n, _ := create(t, srv, map[string]any{"name": "restored", "from_snapshot": snap.ID})
	if got := string(n.readFile("/home/user/v.txt")); got != "v1" {
		t.Fatalf("sandbox from snapshot sees %q, want the saved v1", got)
	}
	if pid := n.sh("cat /tmp/counter.pid"); n.sh("kill -0 "+pid+" && echo alive") != "alive" {
		t.Fatal("counter process not running in the sandbox started from the snapshot")
	}

	// From a paused sandbox too.
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	var snap2 struct{ ID string }
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/snapshots", nil, &snap2); err != nil {
		t.Fatalf("save snapshot of paused sandbox: %v", err)
	}
	n2, _ := create(t, srv, map[string]any{"name": "restored2", "from_snapshot": snap2.ID})
	if got := string(n2.readFile("/home/user/v.txt")); got != "v2" {
		t.Fatalf("sandbox from the paused snapshot sees %q, want v2", got)
	}
	// The paused source still resumes (its own snapshot was linked, not moved).
	var resumed sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/resume", nil, &resumed); err != nil {
		t.Fatalf("resume source: %v", err)
	}

	var list []struct{ ID string }
	if err := srv.Do("GET", "/snapshots", nil, &list); err != nil || len(list) != 2 {
		t.Fatalf("list snapshots: %v %v", list, err)
	}
	if err := srv.Do("DELETE", "/snapshots/"+snap.ID, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.Do("POST", "/sandboxes", map[string]any{"name": "x", "from_snapshot": snap.ID}, nil); statusOf(err) != 404 {
		t.Fatalf("create from deleted snapshot: %v, want 404", err)
	}
}
