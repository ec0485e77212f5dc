package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/failpoint"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestCrashAtEveryStep SIGKILLs stasisd (through a failpoint) at each step of
// create, pause, resume and delete, restarts it, and checks that the sandbox
// is in a state consistent with what the client saw, with its files and its
// processes intact.
func TestCrashAtEveryStep(t *testing.T) {
	type outcome int
	const (
		wantActive outcome = iota // running, same processes
		wantPaused                // paused; resuming gives the same processes
		wantGone                  // 404, nothing left behind
		wantFailed                // visible as failed with a reason
	)
	cases := []struct {
		fp   string
		op   string // the operation that hits the failpoint
		want outcome
		// after: the failpoint is hit after the operation has returned
		// (the background sealing of a pause's snapshot).
		after bool
	}{
		{"create.after-record", "create", wantFailed, false},
		{"create.after-start", "create", wantActive, false},
		{"pause.before-freeze", "pause", wantActive, false},
		{"pause.before-checkpoint", "pause", wantActive, false},
		{"pause.after-checkpoint", "pause", wantActive, false},
		{"pause.after-record", "pause", wantPaused, false}, // before sealing: the restart seals it
		{"pause.after-seal", "pause", wantPaused, true},
		{"resume.before-restore", "resume", wantPaused, false},
		{"resume.after-restore", "resume", wantActive, false},
		{"resume.after-record", "resume", wantActive, false},
		{"delete.after-record", "delete", wantGone, false},
	}
	for _, tc := range cases {
		t.Run(tc.fp, func(t *testing.T) {
			srv := testenv.StartServer(t)
			var c *client
			var before int
			prepare := func() {
				c, _ = createMinimal(t, srv, "crash")
				c.writeFile("/home/user/keep.txt", []byte("precious"))
				startCounter(c)
				before = waitCount(t, c, 5)
			}
			if tc.op != "create" {
				prepare()
				if tc.op == "resume" {
					if err := srv.Do("POST", "/sandboxes/"+c.id+"/pause", nil, nil); err != nil {
						t.Fatal(err)
					}
				}
			}
			// Arm the failpoint and restart, so the next operation crashes.
			srv.Kill()
			srv.Env = []string{failpoint.Env + "=" + tc.fp}
			srv.Restart()
			var id string
			switch tc.op {
			case "create":
				err := srv.Do("POST", "/sandboxes", map[string]any{"name": "crash", "from_template": "stasis/minimal"}, nil)
				if err == nil {
					t.Fatal("create succeeded although the server should have crashed")
				}
			case "pause", "resume", "delete":
				id = c.id
				method, path := "POST", "/sandboxes/"+id+"/"+tc.op
				if tc.op == "delete" {
					method, path = "DELETE", "/sandboxes/"+id
				}
				err := srv.Do(method, path, nil, nil)
				switch {
				case tc.after && err != nil:
					t.Fatalf("%s: %v", tc.op, err)
				case !tc.after && err == nil:
					t.Fatalf("%s succeeded although the server should have crashed", tc.op)
				}
			}
			if !srv.WaitExit(30 * time.Second) {
				t.Fatalf("stasisd did not crash at %s", tc.fp)
			}
			srv.Env = nil
			srv.Restart()

			var list []sandboxInfo
			if err := srv.Do("GET", "/sandboxes", nil, &list); err != nil {
				t.Fatal(err)
			}
			if tc.op == "create" {
				if len(list) != 1 {
					t.Fatalf("after a crashed create: %d sandboxes, want exactly 1 (not lost, not duplicated)", len(list))
				}
				id = list[0].ID
			} else if tc.want != wantGone && (len(list) != 1 || list[0].ID != id) {
				t.Fatalf("after crash: list = %+v, want just %s", list, id)
			}
			info := sandboxInfo{}
			if tc.want != wantGone {
				info = getInfo(t, srv, id)
			}
			switch tc.want {
			case wantFailed:
				if info.Status != "failed" || info.Error == "" {
					t.Fatalf("status %q error %q, want failed with a reason", info.Status, info.Error)
				}
			case wantGone:
				if len(list) != 0 {
					t.Fatalf("deleted sandbox still listed: %+v", list)
				}
				if procs := hostProcessesMentioning(id); len(procs) > 0 {
					t.Fatalf("processes left after delete:\n%s", strings.Join(procs, "\n"))
				}
				if _, err := os.Stat(srv.DataDir() + "/snapshots/" + id); !os.IsNotExist(err) {
					t.Fatalf("snapshot dir left after delete: %v", err)
				}
			case wantActive, wantPaused:
				wantStatus := map[outcome]string{wantActive: "active", wantPaused: "paused"}[tc.want]
				if info.Status != wantStatus {
					t.Fatalf("status %q, want %q (error %q)", info.Status, wantStatus, info.Error)
				}
				var act sandboxInfo
				if err := srv.Do("POST", "/sandboxes/"+id+"/activate", nil, &act); err != nil {
					t.Fatalf("activate: %v", err)
				}
				c2 := &client{t: t, srv: srv, id: id, token: act.AccessToken}
				if tc.op == "create" {
					if got := c2.sh("echo alive"); got != "alive" {
						t.Fatalf("re-adopted sandbox: %q", got)
					}
					return
				}
				if got := string(c2.readFile("/home/user/keep.txt")); got != "precious" {
					t.Fatalf("file after crash: %q", got)
				}
				pid := c2.sh("cat /tmp/counter.pid")
				if got := c2.sh("kill -0 " + pid + " && echo alive"); got != "alive" {
					t.Fatalf("counter process %s gone after crash", pid)
				}
				now := readCount(t, c2)
				if now < before {
					t.Fatalf("counter went back from %d to %d", before, now)
				}
				waitCount(t, c2, now+3) // and it keeps counting
			}
		})
	}
}

// TestPauseNotSealedWhenHostWentDown: a pause is recorded before its
// snapshot is sealed, while the sandbox stays frozen in RAM. If stasisd
// stops then and the frozen sandbox is gone too when it starts again (as
// after a reboot), the snapshot may be torn: it is not trusted, and the
// sandbox is reported failed with the reason rather than resumed from it.
func TestPauseNotSealedWhenHostWentDown(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "reboot")
	srv.Kill()
	srv.Env = []string{failpoint.Env + "=pause.after-record"}
	srv.Restart()
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/pause", nil, nil); err == nil {
		t.Fatal("pause succeeded although the server should have crashed")
	}
	if !srv.WaitExit(30 * time.Second) {
		t.Fatal("stasisd did not crash")
	}
	// The "reboot": the frozen sandbox's host processes die with the host.
	killSandboxProcesses(t, c.id)
	srv.Env = nil
	srv.Restart()
	info := getInfo(t, srv, c.id)
	if info.Status != "failed" || !strings.Contains(info.Error, "not yet on disk") {
		t.Fatalf("status %q error %q, want failed: snapshot not yet on disk", info.Status, info.Error)
	}
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/resume", nil, nil); err == nil {
		t.Fatal("resumed from a snapshot that was never sealed")
	}
}
