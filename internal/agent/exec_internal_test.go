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

// TestGatherJoinsBurst: what a command writes in pieces in quick succession
// goes out as one frame; gather stops at the end of its window while the
// writer stays (without losing what it read), and at end of file.
func TestGatherJoinsBurst(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 64)
	w.WriteString("a")
	n, err := r.Read(buf)
	if err != nil || string(buf[:n]) != "a" {
		t.Fatalf("first read: %q %v", buf[:n], err)
	}
	w.WriteString("b")
	w.WriteString("c")
	n, err = gather(r, buf, n, gatherWindow)
	if err != nil || string(buf[:n]) != "abc" {
		t.Fatalf("gather with the writer open: %q %v, want \"abc\" <nil>", buf[:n], err)
	}
	// The window's deadline is gone again: a plain read waits for data.
	go func() {
		time.Sleep(3 * gatherWindow)
		w.WriteString("d")
		w.WriteString("e")
		w.Close()
	}()
	n, err = r.Read(buf)
	if err != nil || string(buf[:n]) != "d" && string(buf[:n]) != "de" {
		t.Fatalf("read after gather: %q %v", buf[:n], err)
	}
	n, err = gather(r, buf, n, time.Minute)
	if err == nil || string(buf[:n]) != "de" {
		t.Fatalf("gather up to end of file: %q %v, want \"de\" and EOF", buf[:n], err)
	}
	// A full buffer ends it too.
	r2, w2, _ := os.Pipe()
	defer r2.Close()
	defer w2.Close()
	w2.WriteString("0123456789")
	small := make([]byte, 4)
	n, _ = r2.Read(small[:1])
	if n, err = gather(r2, small, n, time.Minute); err != nil || string(small[:n]) != "0123" {
		t.Fatalf("gather into a full buffer: %q %v", small[:n], err)
	}
}
