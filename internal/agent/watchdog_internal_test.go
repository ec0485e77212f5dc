package agent

import (
	"bytes"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
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

// fakeProcs writes /proc/<pid>/stat files of live processes of group pgid
// under dir, one per pid, and returns the pids.
func fakeProcs(t *testing.T, dir string, pgid int, pids ...int) []int {
	t.Helper()
	for _, pid := range pids {
		d := filepath.Join(dir, fmt.Sprint(pid))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := fmt.Sprintf("%d (sleep) S 1 %d %d 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 1 0 5 1303261184 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n", pid, pgid, pgid)
		if err := os.WriteFile(filepath.Join(d, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return pids
}

// A killed fork bomb's processes, counted while they were being reaped, do
// not get the next command killed in its place: the watchdog judges the
// process count only once the bomb's group is empty and the count was taken
// after that. A new bomb is still killed then.
// (Process groups are above the largest possible pid, so that the kills the
// watchdog sends reach no real process.)
func TestWatchdogIgnoresCountsOfAKilledGroup(t *testing.T) {
	const bomb, innocent, bomb2 = 5_000_001, 5_000_002, 5_000_003
	dir := t.TempDir()
	var logs bytes.Buffer
	w := &watchdog{
		s:       &Server{log: log.New(&logs, "", 0)},
		cfg:     WatchdogConfig{MaxProcesses: 32, ProcDir: dir, MinInterval: time.Millisecond, MaxInterval: time.Second},
		self:    1,
		killing: make(map[int]bool),
	}
	// The listing holds the bomb's 40 processes, which are reaped before
	// the watchdog reads them, and the next command's 6.
	listing := []int{1}
	for pid := 100; pid < 140; pid++ {
		listing = append(listing, pid)
	}
	listing = append(listing, fakeProcs(t, dir, innocent, 200, 201, 202, 203, 204, 205)...)

	// While the bomb's group is being emptied.
	w.killing[bomb] = true
	_, gen := w.groupKills()
	w.checkProcesses(listing, gen)
	// Once it is empty, with a listing taken before.
	w.mu.Lock()
	delete(w.killing, bomb)
	w.emptied++
	w.mu.Unlock()
	w.checkProcesses(listing, gen)
	if logs.Len() > 0 || len(w.killing) > 0 {
		t.Fatalf("the next command's group was killed for the bomb's processes: %q", logs.String())
	}

	// A listing taken now, with a new bomb of 40 processes, gets the new
	// bomb killed.
	listing = []int{1, 200, 201, 202, 203, 204, 205}
	for pid := 300; pid < 340; pid++ {
		listing = append(listing, fakeProcs(t, dir, bomb2, pid)...)
	}
	_, gen = w.groupKills()
	w.checkProcesses(listing, gen)
	if want := fmt.Sprintf("killed process group %d", bomb2); !strings.Contains(logs.String(), want) {
		t.Fatalf("log %q; want %q", logs.String(), want)
	}
}
