package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// The tiered pause: a pause answers once the sandbox is checkpointed and
// frozen; its snapshot is sealed on disk in the background, after which the
// sandbox leaves RAM (or, with a warm window, stays frozen there so that a
// resume is a thaw). Either way the processes continue where they stopped.
func TestTieredPause(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		stayInRAM bool
	}{
		{name: "default", stayInRAM: false},
		{name: "warm-window", args: []string{"--warm-pause-window", "1h"}, stayInRAM: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testenv.StartServer(t, testenv.WithArgs(tc.args...))
			c, _ := createMinimal(t, srv, "tiered")
			startCounter(c)
			before := waitCount(t, c, 3)
			t0 := time.Now()
			var paused sandboxInfo
			if err := srv.Do("POST", "/sandboxes/"+c.id+"/pause", nil, &paused); err != nil {
				t.Fatal(err)
			}
			// The counter ticks every 0.1 s until the freeze, and not after.
			maxCount := before + int(time.Since(t0)/(100*time.Millisecond)) + 2
			if paused.Status != "paused" || paused.Pause == nil {
				t.Fatalf("after pause: %+v", paused)
			}
			// Sealed soon; then out of RAM unless the window keeps it.
			waitPauseState(t, srv, c.id, true, tc.stayInRAM)
			if procs := hostProcessesMentioning(c.id); tc.stayInRAM != (len(procs) > 0) {
				t.Fatalf("in_memory=%v but host processes: %q", tc.stayInRAM, procs)
			}
			time.Sleep(time.Second) // frozen: the counter must not move

			var resumed sandboxInfo
			if err := srv.Do("POST", "/sandboxes/"+c.id+"/resume", nil, &resumed); err != nil {
				t.Fatal(err)
			}
			if resumed.Status != "active" || resumed.Pause != nil {
				t.Fatalf("after resume: %+v", resumed)
			}
			c.token = resumed.AccessToken
			now := readCount(t, c)
			if now < before || now > maxCount {
				t.Fatalf("counter at %d after the pause, %d..%d expected: it went back or ran while paused", now, before, maxCount)
			}
			waitCount(t, c, now+2)
		})
	}
}

// waitPauseState waits until the paused sandbox's pause state is as given.
func waitPauseState(t *testing.T, srv *testenv.Server, id string, durable, inMemory bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		info := getInfo(t, srv, id)
		if info.Status != "paused" || info.Pause == nil {
			t.Fatalf("waiting for the pause to settle: %+v", info)
		}
		if info.Pause.Durable == durable && info.Pause.InMemory == inMemory {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pause state stuck at %+v", *info.Pause)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestShutdown: on SIGTERM stasisd drains and exits, leaving sandboxes
// running for the next start to re-adopt; with --pause-on-shutdown it pauses
// them first, with their snapshots sealed before it exits.
func TestShutdown(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		wantStatus string
	}{
		{name: "leave-running", wantStatus: "active"},
		{name: "pause-on-shutdown", args: []string{"--pause-on-shutdown"}, wantStatus: "paused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testenv.StartServer(t, testenv.WithArgs(tc.args...))
			c, _ := createMinimal(t, srv, "shutdown")
			pid := startCounter(c)
			before := waitCount(t, c, 3)

			srv.Stop()
			if tc.wantStatus == "paused" {
				if procs := hostProcessesMentioning(c.id); len(procs) > 0 {
					t.Fatalf("sandbox still on the host after a pausing shutdown:\n%q", procs)
				}
			}
			srv.Restart()
			info := getInfo(t, srv, c.id)
			if info.Status != tc.wantStatus {
				t.Fatalf("after restart: status %q (error %q), want %s", info.Status, info.Error, tc.wantStatus)
			}
			if tc.wantStatus == "paused" && (info.Pause == nil || !info.Pause.Durable) {
				t.Fatalf("paused at shutdown but not durable: %+v", info.Pause)
			}
			var act sandboxInfo
			if err := srv.Do("POST", "/sandboxes/"+c.id+"/activate", nil, &act); err != nil {
				t.Fatal(err)
			}
			c.token = act.AccessToken
			if got := c.sh("kill -0 " + pid + " && echo alive"); got != "alive" {
				t.Fatalf("counter process gone after the restart: %q", got)
			}
			waitCount(t, c, before+3)
		})
	}
}

// A snapshot whose pages changed on disk after the pause is refused at
// resume (its checksums are checked while runsc restores it): the sandbox is
// failed with the reason, and nothing of the restore is left running.
func TestResumeRefusesCorruptSnapshot(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "corrupt")
	startCounter(c)
	waitCount(t, c, 2)
	pauseAndFlipPagesByte(t, srv, c.id, 1, 2)

	err := srv.Do("POST", "/sandboxes/"+c.id+"/resume", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "snapshot_corrupt") {
		t.Fatalf("resume of a corrupt snapshot: %v, want snapshot_corrupt", err)
	}
	if info := getInfo(t, srv, c.id); info.Status != "failed" || !strings.Contains(info.Error, "checksum mismatch") {
		t.Fatalf("after the refused resume: status %q error %q", info.Status, info.Error)
	}
	if procs := hostProcessesMentioning(c.id); len(procs) > 0 {
		t.Fatalf("host processes of the refused restore: %q", procs)
	}
}
