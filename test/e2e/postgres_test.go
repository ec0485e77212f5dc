package e2e

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/store"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestPostgresOutage runs stasisd on a real PostgreSQL (--database-url),
// stops PostgreSQL under it, and checks that the API answers 503
// store_unavailable and changes nothing, then that it recovers by itself
// once PostgreSQL is back, with nothing lost: the sandbox, its files and
// processes, and its pause and resume.
func TestPostgresOutage(t *testing.T) {
	testenv.RequireRoot(t)
	pg := testenv.StartPostgresServer(t)
	srv := testenv.StartServer(t, testenv.WithArgs("--database-url", pg.NewDatabase()))
	c, _ := createMinimal(t, srv, "on-postgres")
	c.writeFile("/home/user/keep.txt", []byte("precious"))
	startCounter(c)
	waitCount(t, c, 2)

	pg.Stop()
	want503 := func(what string, err error) {
		t.Helper()
		var he *testenv.HTTPError
		if !errors.As(err, &he) || he.Status != http.StatusServiceUnavailable || !strings.Contains(he.Body, `"store_unavailable"`) {
			t.Fatalf("%s with PostgreSQL down: %v; want 503 store_unavailable", what, err)
		}
	}
	want503("list", srv.Do("GET", "/sandboxes", nil, nil))
	want503("get", srv.Do("GET", "/sandboxes/"+c.id, nil, nil))
	want503("create", srv.Do("POST", "/sandboxes", map[string]any{"name": "lost", "from_template": "stasis/minimal"}, nil))
	want503("pause", srv.Do("POST", "/sandboxes/"+c.id+"/pause", nil, nil))

	pg.Start()
	// No restart of stasisd: its next requests find the database again.
	var list []sandboxInfo
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := srv.Do("GET", "/sandboxes", nil, &list)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stasisd did not recover after PostgreSQL came back: %v\n%s", err, srv.Logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(list) != 1 || list[0].ID != c.id || list[0].Status != "active" {
		t.Fatalf("after the outage: %+v; want just the one active sandbox (the refused create made nothing)", list)
	}
	if got := string(c.readFile("/home/user/keep.txt")); got != "precious" {
		t.Fatalf("file after the outage: %q", got)
	}
	before := waitCount(t, c, 1)
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/pause", nil, nil); err != nil {
		t.Fatalf("pause after the outage: %v", err)
	}
	resume(t, srv, c)
	waitCount(t, c, before+1) // the same counter process continues
}

// TestPostgresTimersAndRestart: on PostgreSQL, the timeout pauses a
// sandbox and auto-delete deletes one (each timer firing takes its lease in
// PostgreSQL), and a stasisd restart finds its sandboxes where it left them.
func TestPostgresTimersAndRestart(t *testing.T) {
	testenv.RequireRoot(t)
	pg := testenv.StartPostgresServer(t)
	srv := testenv.StartServer(t, testenv.WithArgs("--database-url", pg.NewDatabase()))
	c, sb := create(t, srv, map[string]any{"name": "timed", "from_template": "stasis/minimal", "timeout_seconds": 1})
	c.sh("echo kept > /home/user/f")
	waitStatus(t, srv, sb.ID, "paused") // the timeout paused it

	_, gone := create(t, srv, map[string]any{"name": "ephemeral", "from_template": "stasis/minimal", "auto_delete_seconds": 0})
	if err := srv.Do("POST", "/sandboxes/"+gone.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, srv, gone.ID, "") // auto-delete deleted it

	srv.Restart()
	var list []sandboxInfo
	if err := srv.Do("GET", "/sandboxes", nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != sb.ID || list[0].Status != "paused" {
		t.Fatalf("after restart: %+v; want the one paused sandbox", list)
	}
	if got := c.sh("cat /home/user/f"); got != "kept" { // resumes it transparently
		t.Fatalf("file after restart: %q", got)
	}
}

// TestFencedNodeStopsStaleCopy: another node claims a sandbox (bumping its
// epoch in PostgreSQL) while this stasisd still runs it. This stasisd's next
// change to it is refused with 409 sandbox_moved and changes nothing, and
// it stops its stale copy: runsc no longer runs the sandbox here.
func TestFencedNodeStopsStaleCopy(t *testing.T) {
	testenv.RequireRoot(t)
	pg := testenv.StartPostgresServer(t)
	url := pg.NewDatabase()
	srv := testenv.StartServer(t, testenv.WithArgs("--database-url", url))
	c, _ := createMinimal(t, srv, "moved")
	if !runscRuns(t, srv, c.id) {
		t.Fatal("runsc does not list the new sandbox")
	}

	// The other node's claim, straight through the store as it would do it.
	ctx := context.Background()
	st, err := store.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sb, err := st.GetSandbox(ctx, "", c.id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.ClaimSandbox(ctx, c.id, sb.Epoch, "other-node"); err != nil {
		t.Fatal(err)
	}

	err = srv.Do("POST", "/sandboxes/"+c.id+"/pause", nil, nil)
	var he *testenv.HTTPError
	if !errors.As(err, &he) || he.Status != http.StatusConflict || !strings.Contains(he.Body, `"sandbox_moved"`) {
		t.Fatalf("pause of a sandbox another node claimed: %v; want 409 sandbox_moved", err)
	}
	cur, err := st.GetSandbox(ctx, "", c.id)
	if err != nil {
		t.Fatal(err)
	}
	if cur.Node != "other-node" || cur.Epoch != sb.Epoch+1 || cur.Status != store.StatusActive || cur.Error != "" {
		t.Fatalf("row after the fenced pause: node %q epoch %d status %s error %q; want it untouched",
			cur.Node, cur.Epoch, cur.Status, cur.Error)
	}
	if runscRuns(t, srv, c.id) {
		t.Fatal("the stale copy still runs on the node that lost the sandbox")
	}
}

// runscRuns reports whether the server's runsc lists sandbox id.
func runscRuns(t *testing.T, srv *testenv.Server, id string) bool {
	t.Helper()
	out, err := exec.Command(os.Getenv("STASIS_RUNSC"), "--root="+filepath.Join(srv.DataDir(), "runsc"),
		"list", "--quiet").CombinedOutput()
	if err != nil {
		t.Fatalf("runsc list: %v: %s", err, out)
	}
	for _, line := range strings.Fields(string(out)) {
		if line == id {
			return true
		}
	}
	return false
}
