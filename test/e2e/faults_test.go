package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/failpoint"
	"github.com/stasis-sandbox/stasis/internal/runtime/faultinject"
	"github.com/stasis-sandbox/stasis/internal/snapshot"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// The tests in this file make the runtime fail on purpose (package
// faultinject wraps the real gVisor driver in stasisd), so the branches
// that decide whether a user's sandbox is kept, thawed or lost run for real.

type rule = faultinject.Rule

// once is a rule that fires on the next matching call only.
func once(op, id, action string) rule {
	return rule{Op: op, ID: id, Action: action, Times: 1}
}

// requireFired fails unless every armed one-shot fault was injected: a
// fault that never fired would make the test prove nothing.
func requireFired(t *testing.T, srv *testenv.Server) {
	t.Helper()
	if left := srv.PendingFaults(); len(left) > 0 {
		t.Fatalf("armed faults never fired: %+v", left)
	}
}

// snapshotsOf lists the sandbox's snapshot directories on disk.
func snapshotsOf(srv *testenv.Server, id string) []string {
	dirs, _ := filepath.Glob(filepath.Join(srv.DataDir(), "snapshots", id, "*"))
	return dirs
}

// requireSnapshotsRemoved waits for the sandbox's snapshot directories to be
// gone: a failed seal records the sandbox's status first and removes its
// snapshot right after (a crash in between leaves an orphan, not a paused
// sandbox without its snapshot), so the status can be seen a moment before.
func requireSnapshotsRemoved(t *testing.T, srv *testenv.Server, id, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for snaps := snapshotsOf(srv, id); len(snaps) > 0; snaps = snapshotsOf(srv, id) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q", what, snaps)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// requireKeepsRunning checks that the sandbox is active, its counter keeps
// counting from where it was, and its file is intact.
func requireKeepsRunning(t *testing.T, srv *testenv.Server, c *client, before int) {
	t.Helper()
	if info := getInfo(t, srv, c.id); info.Status != "active" || info.Pause != nil {
		t.Fatalf("status %q pause %+v (error %q), want active", info.Status, info.Pause, info.Error)
	}
	now := readCount(t, c)
	if now < before {
		t.Fatalf("counter went back from %d to %d", before, now)
	}
	waitCount(t, c, now+3)
	if got := string(c.readFile("/home/user/keep.txt")); got != "precious" {
		t.Fatalf("file: %q", got)
	}
}

// prepareCounter gives a new sandbox a file and a running counter and
// returns the counter's value.
func prepareCounter(t *testing.T, c *client) int {
	t.Helper()
	c.writeFile("/home/user/keep.txt", []byte("precious"))
	startCounter(c)
	return waitCount(t, c, 3)
}

func pause(t *testing.T, srv *testenv.Server, id string) sandboxInfo {
	t.Helper()
	var info sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+id+"/pause", nil, &info); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if info.Status != "paused" {
		t.Fatalf("pause returned %+v", info)
	}
	return info
}

// resume resumes c's sandbox and switches c to the new access token.
func resume(t *testing.T, srv *testenv.Server, c *client) {
	t.Helper()
	var info sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/resume", nil, &info); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if info.Status != "active" || info.AccessToken == "" {
		t.Fatalf("resume returned %+v", info)
	}
	c.token = info.AccessToken
}

// resumedFrom says where the sandbox's one resume came from ("memory" or
// "disk"), as stasisd logged it. Its log reaches us through a pipe, maybe
// after the resume's answer: it is waited for.
func resumedFrom(t *testing.T, srv *testenv.Server, id string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var from []string
		for _, line := range strings.Split(srv.Logs(), "\n") {
			if strings.Contains(line, `msg="sandbox resumed"`) && strings.Contains(line, "sandbox="+id) {
				_, rest, _ := strings.Cut(line, " from=")
				f, _, _ := strings.Cut(rest, " ")
				from = append(from, f)
			}
		}
		switch {
		case len(from) == 1:
			return from[0]
		case len(from) > 1:
			t.Fatalf("sandbox %s resumed %d times, want once", id, len(from))
		case time.Now().After(deadline):
			t.Fatalf("no resume of %s in the logs", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killSandboxProcesses SIGKILLs the sandbox's runsc processes on the host,
// as the kernel's OOM killer or a reboot would, and waits until they are gone.
func killSandboxProcesses(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		procs := hostProcessesMentioning(id)
		if len(procs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox processes survive SIGKILL: %q", procs)
		}
		for _, p := range procs {
			if pid, _, ok := strings.Cut(p, ":"); ok && strings.Contains(p, "runsc") {
				n, _ := strconv.Atoi(pid)
				syscall.Kill(n, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func requireNoProcesses(t *testing.T, id string) {
	t.Helper()
	if procs := hostProcessesMentioning(id); len(procs) > 0 {
		t.Fatalf("host processes of sandbox %s left: %q", id, procs)
	}
}

// TestPauseFailureKeepsSandboxRunning: when the freeze or the checkpoint of a
// pause fails (before or after the runtime acted), the pause answers 500,
// the sandbox is thawed and stays active with its processes and files, no
// snapshot is left behind, and a later pause works.
func TestPauseFailureKeepsSandboxRunning(t *testing.T) {
	srv := testenv.StartServer(t, testenv.WithFaults())
	c, _ := createMinimal(t, srv, "pause-faults")
	prepareCounter(t, c)
	for _, tc := range []struct {
		name, op, action string
	}{
		{"freeze fails", faultinject.OpFreeze, faultinject.Fail},
		{"freeze fails after freezing", faultinject.OpFreeze, faultinject.FailAfter},
		{"checkpoint fails", faultinject.OpCheckpoint, faultinject.Fail},
		{"checkpoint fails after writing", faultinject.OpCheckpoint, faultinject.FailAfter},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := c2(t, srv, c.id, c.token)
			before := readCount(t, c)
			srv.ArmFaults(once(tc.op, c.id, tc.action))
			err := srv.Do("POST", "/sandboxes/"+c.id+"/pause", nil, nil)
			if statusOf(err) != http.StatusInternalServerError || !strings.Contains(err.Error(), "still running") {
				t.Fatalf("pause with a failing %s: %v, want 500 saying the sandbox still runs", tc.op, err)
			}
			requireFired(t, srv)
			requireKeepsRunning(t, srv, c, before)
			if snaps := snapshotsOf(srv, c.id); len(snaps) > 0 {
				t.Fatalf("a failed pause left snapshots: %q", snaps)
			}
		})
	}
	// Without faults the same sandbox pauses and resumes where it was.
	before := readCount(t, c)
	pause(t, srv, c.id)
	waitPauseState(t, srv, c.id, true, false)
	resume(t, srv, c)
	requireKeepsRunning(t, srv, c, before)
}

// TestPauseFailureThawFails: a pause whose checkpoint fails and whose
// sandbox then cannot be thawed does not leave a frozen sandbox posing as
// active: it is failed with the reason, and nothing of it is left running.
func TestPauseFailureThawFails(t *testing.T) {
	srv := testenv.StartServer(t, testenv.WithFaults())
	c, _ := createMinimal(t, srv, "thaw-fails")
	startCounter(c)
	srv.ArmFaults(once(faultinject.OpCheckpoint, c.id, faultinject.Fail), once(faultinject.OpThaw, c.id, faultinject.Fail))
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/pause", nil, nil); statusOf(err) != http.StatusInternalServerError {
		t.Fatalf("pause: %v, want 500", err)
	}
	requireFired(t, srv)
	info := getInfo(t, srv, c.id)
	if info.Status != "failed" || !strings.Contains(info.Error, "pause failed at checkpoint") {
		t.Fatalf("status %q error %q, want failed: pause failed at checkpoint", info.Status, info.Error)
	}
	requireNoProcesses(t, c.id)
	if status, body := c.raw("POST", "/exec", strings.NewReader(`{"command":"true"}`)); status != http.StatusConflict {
		t.Fatalf("exec in a failed sandbox: HTTP %d %s, want 409", status, body)
	}
}

// TestSealFailure: the tiered pause answers before the snapshot is sealed.
// If sealing fails, the frozen sandbox is thawed and carries on, active,
// with the reason recorded; if it cannot be thawed either, it is failed.
func TestSealFailure(t *testing.T) {
	srv := testenv.StartServer(t, testenv.WithFaults())
	t.Run("thawed back", func(t *testing.T) {
		c, _ := createMinimal(t, srv, "seal-thaw")
		before := prepareCounter(t, c)
		srv.ArmFaults(once(faultinject.OpCheckpoint, c.id, faultinject.Unsealable))
		pause(t, srv, c.id) // answered before the seal
		waitStatus(t, srv, c.id, "active")
		requireFired(t, srv)
		if info := getInfo(t, srv, c.id); !strings.Contains(info.Error, "snapshot could not be written") {
			t.Fatalf("error %q does not say the snapshot could not be written", info.Error)
		}
		requireKeepsRunning(t, srv, c, before)
		requireSnapshotsRemoved(t, srv, c.id, "the unsealed snapshot was left")
		// Without the fault it pauses durably and resumes.
		before = readCount(t, c)
		pause(t, srv, c.id)
		waitPauseState(t, srv, c.id, true, false)
		resume(t, srv, c)
		requireKeepsRunning(t, srv, c, before)
	})
	t.Run("cannot thaw", func(t *testing.T) {
		c, _ := createMinimal(t, srv, "seal-fail")
		startCounter(c)
		srv.ArmFaults(once(faultinject.OpCheckpoint, c.id, faultinject.Unsealable), once(faultinject.OpThaw, c.id, faultinject.Fail))
		pause(t, srv, c.id)
		waitStatus(t, srv, c.id, "failed")
		requireFired(t, srv)
		if info := getInfo(t, srv, c.id); !strings.Contains(info.Error, "snapshot could not be written") {
			t.Fatalf("error %q does not say the snapshot could not be written", info.Error)
		}
		requireNoProcesses(t, c.id)
		requireSnapshotsRemoved(t, srv, c.id, "the unsealed snapshot was left")
	})
}

// TestRestoreFailureKeepsSandboxPaused: a restore that fails (before or
// after runsc started the sandbox, through the API or an exec's transparent
// resume, or refused as another runsc version's snapshot) leaves the sandbox paused with its snapshot intact and nothing
// running; the next resume succeeds and the processes continue.
func TestRestoreFailureKeepsSandboxPaused(t *testing.T) {
	srv := testenv.StartServer(t, testenv.WithFaults())
	c, _ := createMinimal(t, srv, "restore-faults")
	prepareCounter(t, c)
	for _, tc := range []struct {
		name      string
		action    string
		dataPlane bool
	}{
		{"restore fails", faultinject.Fail, false},
		{"restore fails after starting the sandbox", faultinject.FailAfter, false},
		{"restore fails under an exec", faultinject.Fail, true},
		{"snapshot of another runsc version", faultinject.OtherVersion, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc := c2(t, srv, c.id, c.token)
			before := readCount(t, cc)
			pause(t, srv, c.id)
			waitPauseState(t, srv, c.id, true, false)
			snaps := snapshotsOf(srv, c.id)
			if len(snaps) != 1 {
				t.Fatalf("snapshots after the pause: %q", snaps)
			}
			srv.ArmFaults(once(faultinject.OpRestore, c.id, tc.action))
			if tc.dataPlane {
				status, body := cc.raw("POST", "/exec", strings.NewReader(`{"command":"cat /tmp/count"}`))
				if status != http.StatusServiceUnavailable || !strings.Contains(string(body), "resume_failed") {
					t.Fatalf("exec with a failing restore: HTTP %d %s, want 503 resume_failed", status, body)
				}
			} else {
				err := srv.Do("POST", "/sandboxes/"+c.id+"/resume", nil, nil)
				if tc.action == faultinject.OtherVersion {
					// A clear conflict naming the versions, not an internal error.
					if statusOf(err) != http.StatusConflict || !strings.Contains(err.Error(), "runtime_version_mismatch") || !strings.Contains(err.Error(), "stasis-faultinject-other") {
						t.Fatalf("resume of another version's snapshot: %v, want 409 runtime_version_mismatch naming the version", err)
					}
				} else if statusOf(err) != http.StatusInternalServerError {
					t.Fatalf("resume with a failing restore: %v, want 500", err)
				}
			}
			requireFired(t, srv)
			info := getInfo(t, srv, c.id)
			if info.Status != "paused" || info.Pause == nil || !info.Pause.Durable || !strings.Contains(info.Error, "last resume failed") {
				t.Fatalf("after the failed resume: %+v, want paused, durable, with the reason", info)
			}
			requireNoProcesses(t, c.id)
			if now := snapshotsOf(srv, c.id); len(now) != 1 || now[0] != snaps[0] {
				t.Fatalf("snapshots after the failed resume: %q, want %q", now, snaps)
			}
			if err := snapshot.Verify(snaps[0]); err != nil {
				t.Fatalf("the failed resume damaged the snapshot: %v", err)
			}
			// Retried, the resume succeeds.
			if tc.dataPlane {
				if got := cc.sh("echo back"); got != "back" {
					t.Fatalf("exec after the failed resume: %q", got)
				}
			} else {
				resume(t, srv, cc)
				c.token = cc.token
			}
			requireKeepsRunning(t, srv, cc, before)
		})
	}
}

// TestWarmSandboxFallsBackToDisk: a paused sandbox kept frozen in RAM
// (--warm-pause-window) resumes from its snapshot when the frozen copy is
// no longer there to thaw: the thaw fails, its processes were killed, or
// the window is over and it was evicted.
func TestWarmSandboxFallsBackToDisk(t *testing.T) {
	srv := testenv.StartServer(t, testenv.WithFaults(), testenv.WithArgs("--warm-pause-window", "1h"))
	for _, tc := range []struct {
		name  string
		evict func(t *testing.T, id string)
	}{
		{"thaw fails", func(t *testing.T, id string) {
			srv.ArmFaults(once(faultinject.OpThaw, id, faultinject.Fail))
		}},
		{"frozen sandbox killed", killSandboxProcesses},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := createMinimal(t, srv, "warm")
			before := prepareCounter(t, c)
			pause(t, srv, c.id)
			waitPauseState(t, srv, c.id, true, true)
			tc.evict(t, c.id)
			resume(t, srv, c)
			requireFired(t, srv)
			if from := resumedFrom(t, srv, c.id); from != "disk" {
				t.Fatalf("resumed from %q, want disk", from)
			}
			requireKeepsRunning(t, srv, c, before)
		})
	}
	t.Run("window over", func(t *testing.T) {
		srv := testenv.StartServer(t, testenv.WithArgs("--warm-pause-window", "1s"))
		c, _ := createMinimal(t, srv, "warm-expires")
		before := prepareCounter(t, c)
		pause(t, srv, c.id)
		waitPauseState(t, srv, c.id, true, false) // evicted once the window is over
		// The eviction stops the frozen sandbox.
		for deadline := time.Now().Add(30 * time.Second); len(hostProcessesMentioning(c.id)) > 0; {
			if time.Now().After(deadline) {
				requireNoProcesses(t, c.id)
			}
			time.Sleep(50 * time.Millisecond)
		}
		resume(t, srv, c)
		if from := resumedFrom(t, srv, c.id); from != "disk" {
			t.Fatalf("resumed from %q, want disk", from)
		}
		requireKeepsRunning(t, srv, c, before)
	})
}

// TestRecoveryMeetsBrokenSandboxes: after a restart, recovery finds one
// sandbox running but not answering, one gone from the host, and one still
// running although it was deleted (an orphan: its destroy had failed). The
// first two are failed with a reason that says what happened, and nothing
// of the unresponsive one or the orphan is left running.
func TestRecoveryMeetsBrokenSandboxes(t *testing.T) {
	srv := testenv.StartServer(t, testenv.WithFaults())
	hung, _ := createMinimal(t, srv, "unresponsive")
	lost, _ := createMinimal(t, srv, "lost")
	orphan, _ := createMinimal(t, srv, "orphan")

	// The orphan: deleted for the client, but its destroy fails, so it
	// keeps running until the next start cleans it up.
	t.Cleanup(func() { killSandboxProcesses(t, orphan.id) })
	srv.ArmFaults(once(faultinject.OpDestroy, orphan.id, faultinject.Fail))
	if err := srv.Do("DELETE", "/sandboxes/"+orphan.id, nil, nil); err != nil {
		t.Fatalf("delete: %v", err)
	}
	requireFired(t, srv)
	if len(hostProcessesMentioning(orphan.id)) == 0 {
		t.Fatal("the orphan is not running: its destroy did not fail")
	}

	srv.Kill()
	killSandboxProcesses(t, lost.id)
	// At the restart the runtime reports the unresponsive sandbox running,
	// but its agent does not answer.
	srv.ArmFaults(once(faultinject.OpList, hung.id, faultinject.Hang))
	srv.Restart()
	requireFired(t, srv)

	if info := getInfo(t, srv, hung.id); info.Status != "failed" || !strings.Contains(info.Error, "did not answer") {
		t.Fatalf("unresponsive sandbox: status %q error %q, want failed: did not answer", info.Status, info.Error)
	}
	requireNoProcesses(t, hung.id)
	if info := getInfo(t, srv, lost.id); info.Status != "failed" || !strings.Contains(info.Error, "was lost") {
		t.Fatalf("lost sandbox: status %q error %q, want failed: was lost", info.Status, info.Error)
	}
	if err := srv.Do("GET", "/sandboxes/"+orphan.id, nil, nil); statusOf(err) != http.StatusNotFound {
		t.Fatalf("orphan: %v, want 404", err)
	}
	requireNoProcesses(t, orphan.id)
	var list []sandboxInfo
	if err := srv.Do("GET", "/sandboxes", nil, &list); err != nil || len(list) != 2 {
		t.Fatalf("sandboxes after recovery: %+v %v, want the two failed ones", list, err)
	}
}

// TestBuildInterruptedByRestart: stasisd dies (failpoint build.after-step)
// in the middle of a template build. After the restart the build and the
// template are failed with the reason, the build sandbox is gone, and a
// rebuild succeeds.
func TestBuildInterruptedByRestart(t *testing.T) {
	srv := testenv.StartServer(t, testenv.WithFaults(), testenv.WithEnv(failpoint.Env+"=build.after-step"))
	spec := map[string]any{
		"name": "interrupted",
		"build_spec": map[string]any{
			"from": "stasis/minimal",
			"steps": []any{
				map[string]any{"run": "echo one > /home/user/one"},
				map[string]any{"run": "echo two > /home/user/two"},
			},
		},
	}
	srv.Do("POST", "/templates", spec, nil) // may or may not answer before the crash
	if !srv.WaitExit(2 * time.Minute) {
		t.Fatal("stasisd did not crash after the build's first step")
	}
	srv.Env = nil
	srv.Restart()

	var builds []buildInfo
	if err := srv.Do("GET", "/templates/interrupted/builds", nil, &builds); err != nil || len(builds) != 1 {
		t.Fatalf("builds: %+v %v, want the interrupted one", builds, err)
	}
	if b := builds[0]; b.Status != "failed" || !strings.Contains(b.ErrorMessage, "interrupted by a stasisd restart") {
		t.Fatalf("interrupted build: %+v, want failed: interrupted by a stasisd restart", b)
	}
	var tpl struct {
		Status       string `json:"status"`
		ErrorMessage string `json:"error_message"`
	}
	if err := srv.Do("GET", "/templates/interrupted", nil, &tpl); err != nil || tpl.Status != "failed" {
		t.Fatalf("template after the interrupted build: %+v %v, want failed", tpl, err)
	}
	if left, _ := os.ReadDir(filepath.Join(srv.DataDir(), "sandboxes")); len(left) > 0 {
		t.Fatalf("the build sandbox was left behind: %v", left)
	}
	if procs := hostProcessesMentioning(filepath.Join(srv.DataDir(), "runsc")); len(procs) > 0 {
		t.Fatalf("runsc processes left: %q", procs)
	}

	// A rebuild runs every step and gives a usable template.
	var rebuilt buildInfo
	if err := srv.Do("POST", "/templates/interrupted/builds", nil, &rebuilt); err != nil {
		t.Fatal(err)
	}
	if b := waitBuild(t, srv, "interrupted", rebuilt.ID); b.Status != "ready" {
		t.Fatalf("rebuild: %+v", b)
	}
	c, _ := create(t, srv, map[string]any{"name": "from-rebuilt", "from_template": "interrupted"})
	if got := c.sh("cat /home/user/one /home/user/two"); got != "one\ntwo" {
		t.Fatalf("files from the rebuilt template: %q", got)
	}

	// A build whose snapshot cannot be taken fails with snapshot_failed,
	// leaving no build sandbox behind.
	srv.ArmFaults(rule{Op: faultinject.OpCheckpoint, Action: faultinject.Fail, Times: 1})
	var created struct {
		ID      string `json:"id"`
		BuildID string `json:"build_id"`
	}
	if err := srv.Do("POST", "/templates", map[string]any{
		"name":       "unsnapshotted",
		"build_spec": map[string]any{"from": "stasis/minimal", "steps": []any{map[string]any{"run": "true"}}},
	}, &created); err != nil {
		t.Fatal(err)
	}
	if b := waitBuild(t, srv, created.ID, created.BuildID); b.Status != "failed" || !strings.HasPrefix(b.ErrorMessage, "snapshot_failed:") {
		t.Fatalf("build with a failing checkpoint: %+v, want failed: snapshot_failed", b)
	}
	requireFired(t, srv)
	if left, _ := os.ReadDir(filepath.Join(srv.DataDir(), "sandboxes")); len(left) != 1 {
		t.Fatalf("state dirs after the failed build: %v, want only the sandbox from the template", left)
	}
}
