package agent

import (
	"os"
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
