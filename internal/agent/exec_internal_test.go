package agent

import (
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestExitForTimeoutRace: a shell that exited on its own reports its own
// exit code and no timeout, even when the deadline passed before its status
// was collected; one the timeout killed reports 137 and says so.
func TestExitForTimeoutRace(t *testing.T) {
	exited := func(code int) syscall.WaitStatus { return syscall.WaitStatus(code << 8) }
	killed := syscall.WaitStatus(syscall.SIGKILL)
	for _, tc := range []struct {
		name       string
		ws         syscall.WaitStatus
		killReason string
		timedOut   bool
		code       int
		errHas     string
	}{
		{"finished, deadline passed before reaping", exited(0), "", true, 0, ""},
		{"finished with 3, deadline passed", exited(3), "", true, 3, ""},
		{"killed by the timeout", killed, "", true, 137, "timed out after 1s"},
		{"killed by the watchdog", killed, "memory limit", false, 137, "memory limit"},
		{"watchdog fired but the shell exited itself", exited(0), "memory limit", false, 0, ""},
		{"killed by someone else", killed, "", false, 137, ""},
	} {
		got := exitFor(tc.ws, tc.killReason, tc.timedOut, time.Second)
		if got.ExitCode != tc.code || (tc.errHas == "") != (got.Error == "") || !strings.Contains(got.Error, tc.errHas) {
			t.Errorf("%s: got %+v, want exit %d and error containing %q", tc.name, got, tc.code, tc.errHas)
		}
	}
}

// TestShellExited: the timeout spares a shell that is gone; it must not
// mistake a running process for one.
func TestShellExited(t *testing.T) {
	if shellExited(os.Getpid()) {
		t.Fatal("the running test process counts as exited")
	}
	if !shellExited(1 << 30) { // beyond pid_max: no such process
		t.Fatal("a missing process does not count as exited")
	}
}

// writeLog records each Write it gets.
type writeLog struct{ writes []string }

func (w *writeLog) Write(b []byte) (int, error) {
	w.writes = append(w.writes, string(b))
	return len(b), nil
}

// While holding, writes wait for the first write after hold(false) and go
// out in it, after the started frame held before them; more than maxHeld
// goes out at once, with what was held.
func TestHeldWriterHoldsUntilTheExit(t *testing.T) {
	var w writeLog
	h := &heldWriter{w: &w, held: []byte("started;")}
	h.hold(true)
	for _, s := range []string{"out;", "err;"} {
		if n, err := h.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("held write %q: %d, %v", s, n, err)
		}
	}
	if len(w.writes) != 0 {
		t.Fatalf("sent while holding: %q", w.writes)
	}
	h.hold(false)
	if n, err := h.Write([]byte("exit")); n != 4 || err != nil {
		t.Fatalf("exit write: %d, %v", n, err)
	}
	if want := []string{"started;out;err;exit"}; !slices.Equal(w.writes, want) {
		t.Fatalf("sent %q; want %q", w.writes, want)
	}

	w.writes = nil
	h.hold(true)
	h.Write([]byte("small;"))
	big := strings.Repeat("x", maxHeld)
	h.Write([]byte(big))
	h.Write([]byte("tail;"))
	h.hold(false)
	h.Write([]byte("exit"))
	if want := []string{"small;" + big, "tail;exit"}; !slices.Equal(w.writes, want) {
		t.Fatalf("sent %d writes of %v bytes; want the held bytes with the big write, then the rest with the exit", len(w.writes), lens(w.writes))
	}
}

func lens(ss []string) []int {
	var n []int
	for _, s := range ss {
		n = append(n, len(s))
	}
	return n
}
