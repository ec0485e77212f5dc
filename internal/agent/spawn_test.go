package agent_test

import (
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// spawnReport is run as `sh -c` by both spawn and ForkExec: what a started
// shell and its children have of their start (pid-independent). The
// shell's own descriptors are listed by the shell (a child listing them
// would race with the shell closing its pipes' ends).
const spawnReport = `exec 2>&1
echo "argv: $0 $*"
grep -E '^(SigBlk|SigIgn|SigPnd|ShdPnd|Uid|Gid|Groups|NoNewPrivs|CapEff|CapPrm)' /proc/self/status
cat /proc/self/limits
set -- $(cut -d' ' -f5-8 /proc/$$/stat)
echo "pgrp=$([ "$1" = $$ ] && echo self || echo "$1") sid=$([ "$2" = $$ ] && echo self || echo "$2") tty=$([ "$3" = 0 ] && echo none || echo set) fg=$([ "$4" = $$ ] && echo self || echo "$4")"
for f in /proc/$$/fd/*; do if [ -p $f ]; then k=pipe; elif [ -c $f ]; then k=char; else k=other; fi; echo "${f##*/} $k"; done
ls /proc/self/fd | tr '\n' ' '; echo
pwd; umask; env | sort`

// spawn starts a shell exactly as syscall.ForkExec would: same signal mask
// and dispositions, credentials, limits, process group, session and
// controlling terminal, descriptors (also when one must move below another
// first), directory and environment. Both run the same report.
func TestSpawnStartsLikeForkExec(t *testing.T) {
	testenv.RequireRoot(t) // to switch users
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	env := []string{"PATH=/usr/bin:/bin", "A=b c", "EMPTY="}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()

	type files func(out *os.File) ([]uintptr, *syscall.SysProcAttr, func())
	cases := []struct {
		name  string
		files files
	}{
		{"pipes, own group", func(out *os.File) ([]uintptr, *syscall.SysProcAttr, func()) {
			return []uintptr{devnull.Fd(), out.Fd(), out.Fd()}, &syscall.SysProcAttr{Setpgid: true}, func() {}
		}},
		{"as nobody with groups", func(out *os.File) ([]uintptr, *syscall.SysProcAttr, func()) {
			cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(gid), 4242}}
			return []uintptr{devnull.Fd(), out.Fd(), out.Fd()}, &syscall.SysProcAttr{Setpgid: true, Credential: cred}, func() {}
		}},
		{"a pty, new session", func(out *os.File) ([]uintptr, *syscall.SysProcAttr, func()) {
			ptmx, tty, err := agent.OpenPTY()
			if err != nil {
				t.Fatal(err)
			}
			return []uintptr{tty.Fd(), out.Fd(), tty.Fd()}, &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}, func() { ptmx.Close(); tty.Close() }
		}},
		// fd 3 is the test binary's stderr (2, below it): moved up first.
		{"a descriptor moved down", func(out *os.File) ([]uintptr, *syscall.SysProcAttr, func()) {
			return []uintptr{devnull.Fd(), out.Fd(), out.Fd(), 2}, nil, func() {}
		}},
		{"two descriptors only", func(out *os.File) ([]uintptr, *syscall.SysProcAttr, func()) {
			return []uintptr{devnull.Fd(), out.Fd()}, &syscall.SysProcAttr{Setpgid: true}, func() {}
		}},
	}
	start := func(name string, fork func([]string, *syscall.ProcAttr) (int, error), files files, direct bool) (string, syscall.WaitStatus) {
		t.Helper()
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		fds, sys, cleanup := files(w)
		defer cleanup()
		attr := &syscall.ProcAttr{Dir: dir, Env: env, Files: fds, Sys: sys}
		// The shell's report, and the started process's own status
		// (a shell may reset its signal mask).
		argv := []string{"/bin/sh", "-c", spawnReport, "zero", "one"}
		if direct {
			argv = []string{"/bin/cat", "/proc/self/status"}
		}
		_, status, err := reaper.Start(func() (int, error) { return fork(argv, attr) })
		w.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		return string(out), <-status
	}
	forkExec := func(argv []string, attr *syscall.ProcAttr) (int, error) { return syscall.ForkExec(argv[0], argv, attr) }
	for _, tc := range cases {
		want, wantSt := start("ForkExec", forkExec, tc.files, false)
		got, gotSt := start("spawn", agent.Spawn, tc.files, false)
		if got != want || gotSt != wantSt {
			t.Errorf("%s: spawn's shell reports (status %v)\n%s\nForkExec's (status %v)\n%s", tc.name, gotSt, got, wantSt, want)
		}
		want, _ = start("ForkExec", forkExec, tc.files, true)
		got, _ = start("spawn", agent.Spawn, tc.files, true)
		if sigs(got) != sigs(want) {
			t.Errorf("%s: spawn's process has\n%s\nForkExec's\n%s", tc.name, sigs(got), sigs(want))
		}
		// Nothing blocked or caught, whatever the test binary has; ignored
		// only what the test binary was started with (an exec keeps
		// SIG_IGN, and Go leaves some inherited ones alone: e.g. signal 32
		// when run under a shell that ignores it).
		for _, line := range []string{"SigBlk:\t0000000000000000", inheritedSigIgn(t), "SigCgt:\t0000000000000000"} {
			if !strings.Contains(got, line+"\n") {
				t.Errorf("%s: no %q in\n%s", tc.name, line, got)
			}
		}
	}
}

// A step of the child that fails is spawn's error, as ForkExec's is, and
// the child that exited is reaped.
func TestSpawnErrors(t *testing.T) {
	testenv.RequireRoot(t)
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	closed := t.TempDir()
	os.Chmod(closed, 0o700)
	for _, tc := range []struct {
		argv []string
		attr *syscall.ProcAttr
		want syscall.Errno
	}{
		{[]string{"/bin/sh"}, &syscall.ProcAttr{Dir: "/does/not/exist"}, syscall.ENOENT},
		{[]string{"/bin/sh"}, &syscall.ProcAttr{Dir: closed, Sys: &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}}, syscall.EACCES},
		{[]string{"/does/not/exist"}, &syscall.ProcAttr{}, syscall.ENOENT},
		{[]string{os.DevNull}, &syscall.ProcAttr{}, syscall.EACCES},
	} {
		_, _, err := reaper.Start(func() (int, error) { return agent.Spawn(tc.argv, tc.attr) })
		if err != tc.want {
			t.Errorf("%v in %q: error %v, want %v", tc.argv, tc.attr.Dir, err, tc.want)
		}
	}
}

// sigs is the signal lines of a /proc/PID/status (but SigQ, the user's
// queued signals).
func sigs(status string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(status, "\n") {
		if strings.HasPrefix(l, "Sig") && !strings.HasPrefix(l, "SigQ") || strings.HasPrefix(l, "ShdPnd") {
			b.WriteString(l)
		}
	}
	return b.String()
}

// inheritedSigIgn is the SigIgn line of the test process's status: the
// signals it was started with ignored, which every child it execs keeps.
func inheritedSigIgn(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "SigIgn:") {
			return line
		}
	}
	t.Fatal("no SigIgn in /proc/self/status")
	return ""
}
