package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A row's step timings come from the last log line about that sandbox, not
// from another sandbox's or an earlier one.
func TestLastSteps(t *testing.T) {
	log := filepath.Join(t.TempDir(), "stasisd.log")
	lines := `time=T level=INFO msg="sandbox created" sandbox=a template=stasis/minimal ms=600 link_bundle_ms=5.5 runsc_ms=400 agent_ready_ms=90.25 record_ms=4
time=T level=INFO msg="sandbox created" sandbox=ab template=stasis/minimal ms=700 link_bundle_ms=9 runsc_ms=500 agent_ready_ms=99 record_ms=9
time=T level=INFO msg="sandbox resumed" sandbox=a from=disk ms=500 before_ms=2 link_bundle_ms=6 runsc_ms=480 agent_ms=3 after_ms=2
time=T level=INFO msg="sandbox paused" sandbox=a bytes=15488795 ms=96 settle_ms=0 before_ms=1.5 quiesce_ms=20.25 freeze_ms=1 checkpoint_ms=62 record_ms=5 after_ms=0.02
`
	if err := os.WriteFile(log, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &server{logPath: log}
	got := s.lastSteps("sandbox created", "a")
	want := map[string]time.Duration{"link_bundle_ms": 5500 * time.Microsecond, "runsc_ms": 400 * time.Millisecond,
		"agent_ready_ms": 90250 * time.Microsecond, "record_ms": 4 * time.Millisecond}
	if len(got) != len(want) {
		t.Fatalf("steps %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if r := s.lastSteps("sandbox resumed", "a"); r["runsc_ms"] != 480*time.Millisecond || r["before_ms"] != 2*time.Millisecond {
		t.Errorf("resume steps %v", r)
	}
	if r := s.lastSteps("sandbox paused", "a"); len(r) != 7 || r["quiesce_ms"] != 20250*time.Microsecond || r["checkpoint_ms"] != 62*time.Millisecond {
		t.Errorf("pause steps %v", r)
	}
	if r := s.lastSteps("sandbox resumed", "ab"); r != nil {
		t.Errorf("steps of a sandbox that never resumed: %v", r)
	}
	var st steps
	st.add(got)
	st.add(s.lastSteps("sandbox created", "ab"))
	if e := st.extra(); len(e) != 4 || e["stasis_runsc_ms"].(*Stat).Median != 450 {
		t.Errorf("extra %v", e)
	}
}
