package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNoMappingNames checks that the agent is built not to name its memory
// mappings: each name is a system call, a trap into gVisor, while every
// cold create waits for the agent to start.
func TestNoMappingNames(t *testing.T) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("no build info")
	}
	for _, s := range bi.Settings {
		if s.Key == "DefaultGODEBUG" {
			for _, kv := range strings.Split(s.Value, ",") {
				if kv == "decoratemappings=0" {
					return
				}
			}
			t.Fatalf("DefaultGODEBUG %q lacks decoratemappings=0", s.Value)
		}
	}
	t.Fatal("no DefaultGODEBUG in the build info: decoratemappings=0 is not set")
}

// TestRuntimeSignalsAtStart checks the agent as scripts/build-agent.sh
// builds it (the Go runtime patched with patches/go): until its first
// request it catches every signal the stock runtime does but the
// real-time ones, SIGPROF and SIGWINCH, each handler being two system
// calls (traps into gVisor) on every cold create's path. It skips when the
// toolchain is not the one the patch was made for.
func TestRuntimeSignalsAtStart(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "stasis-agent")
	build := exec.Command("../../scripts/build-agent.sh", bin)
	out, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("build-agent.sh: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "stock Go runtime") {
		t.Skipf("the agent is built unpatched: %s", out)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin)
	cmd.Env = []string{"STASIS_AGENT_TOKEN_SHA256=" + strings.Repeat("1", 64), "STASIS_AGENT_LISTEN=" + addr}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	// Listening means main runs, long after the runtime's initsig. The
	// agent refuses the connection (loopback): no request, no boot set-up.
	for i := 0; ; i++ {
		c, err := net.Dial("tcp4", addr)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("the agent exited: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if i == 3000 {
			t.Fatalf("the agent does not listen on %s: %v", addr, err)
		}
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var caught uint64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			if caught, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				t.Fatal(err)
			}
		}
	}
	has := func(sig syscall.Signal) bool { return caught&(1<<(sig-1)) != 0 }
	for _, sig := range []syscall.Signal{syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGQUIT, syscall.SIGPIPE,
		syscall.SIGURG, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR1, syscall.SIGUSR2,
		syscall.SIGCHLD, syscall.SIGALRM, syscall.SIGIO, syscall.SIGPWR, syscall.SIGXCPU, syscall.SIGVTALRM} {
		if !has(sig) {
			t.Errorf("the runtime does not catch %v at start (SigCgt %x)", sig, caught)
		}
	}
	for _, sig := range []syscall.Signal{syscall.SIGPROF, syscall.SIGWINCH, syscall.Signal(35), syscall.Signal(40), syscall.Signal(64)} {
		if has(sig) {
			t.Errorf("the runtime catches %v at start (SigCgt %x): not patched", sig, caught)
		}
	}
}
