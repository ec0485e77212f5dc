package e2e

import (
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// A stray signal from a command does not end PID 1 (the agent notifies
// itself of the ones Go would exit on; its runtime, patches/go, leaves only
// the real-time signals, SIGPROF and SIGWINCH at their defaults), and its
// reaper (SIGCHLD) reaps orphans. gVisor's /proc shows no SigCgt, hence
// what the signals do; cmd/stasis-agent's TestRuntimeSignalsAtStart checks
// the handlers on the host.
func TestAgentSignals(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "agent-signals")

	stray := []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE,
		syscall.SIGALRM, syscall.SIGIO, syscall.SIGPWR, syscall.SIGXCPU, syscall.SIGXFSZ, syscall.SIGVTALRM}
	var kill strings.Builder
	for _, sig := range stray {
		kill.WriteString("kill -" + strconv.Itoa(int(sig)) + " 1 && ")
	}
	c.sh(kill.String() + "true")
	// An orphan is reaped (SIGCHLD: a zombie keeps its /proc entry; waits
	// up to 30 s), and the agent still answers.
	reaped := c.sh(`pid=$(sh -c 'sleep 0.1 >/dev/null & echo $!'); i=0; ` +
		`while [ -e /proc/$pid ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; ` +
		`[ -e /proc/$pid ] && echo "left: $(cat /proc/$pid/stat)" || echo reaped`)
	if reaped != "reaped" {
		t.Errorf("an orphan that exited was not reaped: %s", reaped)
	}
	if got := c.sh("echo alive"); got != "alive" {
		t.Errorf("after the stray signals: %q", got)
	}
}
