package agent

import (
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// A command name may hold spaces and parentheses.
	b := []byte("4242 (we (ird) name) S 17 4200 4200 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 3 0 5 1303261184 2560 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n")
	p, ok := parseStat(b, 4096)
	if !ok {
		t.Fatal("parseStat failed")
	}
	want := procInfo{pid: 4242, ppid: 17, pgid: 4200, state: 'S', comm: "we (ird) name", threads: 3, rss: 2560 * 4096}
	if *p != want {
		t.Fatalf("got %+v, want %+v", *p, want)
	}
	for _, bad := range []string{"", "12 (x", "x (y) S 1 2", "12 (x) S 1 2 3"} {
		if _, ok := parseStat([]byte(bad), 4096); ok {
			t.Errorf("parseStat(%q) succeeded", bad)
		}
	}
}

func TestParseMeminfo(t *testing.T) {
	b := []byte("MemTotal:         393216 kB\nMemFree:          300000 kB\nMemAvailable:     262144 kB\nCached: 5964 kB\n")
	total, used, err := parseMeminfo(b)
	if err != nil || total != 384<<20 || used != 128<<20 {
		t.Fatalf("got %d, %d, %v", total, used, err)
	}
	if _, _, err := parseMeminfo([]byte("MemTotal: 1 kB\n")); err == nil {
		t.Error("meminfo without MemAvailable accepted")
	}
}

func TestMemInterval(t *testing.T) {
	w := &watchdog{cfg: WatchdogConfig{MinInterval: 10 * time.Millisecond, MaxInterval: 500 * time.Millisecond, GrowthRate: 1 << 30}}
	const mib = 1 << 20
	// 544 MiB host limit for a 256 MiB budget: the room to grow before the
	// host limit (less gVisor's own share and the growth during a kill)
	// sets the pace.
	if d := w.memInterval(544*mib, 256*mib, 26*mib); d < 300*time.Millisecond || d > 400*time.Millisecond {
		t.Errorf("far from the limit: %v", d)
	}
	if d := w.memInterval(544*mib, 256*mib, 400*mib); d != 10*time.Millisecond {
		t.Errorf("near the host limit: %v", d)
	}
	// Without headroom, the budget itself.
	if d := w.memInterval(256*mib, 256*mib, 128*mib); d < 100*time.Millisecond || d > 150*time.Millisecond {
		t.Errorf("no headroom: %v", d)
	}
	if d := w.memInterval(64<<30, 32<<30, 0); d != 500*time.Millisecond {
		t.Errorf("huge budget: %v", d)
	}
}

func TestTaskLimit(t *testing.T) {
	for mib, want := range map[int]int{0: 256, 64: 256, 256: 256, 1024: 1024, 16384: 4096} {
		if got := TaskLimit(mib); got != want {
			t.Errorf("TaskLimit(%d) = %d, want %d", mib, got, want)
		}
	}
}

// TestWatchdogIdle: the agent alone, or with only the spare shell that waits
// for the next command, is idle (not sampled); a command's process, or the
// former spare once a command took it, is not.
func TestWatchdogIdle(t *testing.T) {
	s := &Server{spare: &spareShell{pid: 4242}}
	w := &watchdog{s: s, self: 1}
	for _, c := range []struct {
		pids []int
		want bool
	}{
		{[]int{1}, true},
		{[]int{1, 4242}, true},
		{[]int{4242, 1}, true},
		{[]int{1, 4243}, false},
		{[]int{1, 4242, 4243}, false},
	} {
		if got := w.idle(c.pids); got != c.want {
			t.Errorf("idle(%v) with spare 4242 = %v, want %v", c.pids, got, c.want)
		}
	}
	s.spare = nil // a command took it: the shell now runs that command
	if w.idle([]int{1, 4242}) {
		t.Error("the spare's pid counts as idle after a command took it")
	}
}
