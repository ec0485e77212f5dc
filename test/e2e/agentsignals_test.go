package e2e

import (
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// The agent's runtime installs Go's signal handlers at start only for the
// signals it needs itself (patches/go, checked in cmd/stasis-agent's
// TestRuntimeSignalsAtStart); the agent takes the rest with signal.Notify
// before its first command runs. From then on a stray signal from a
// command does not end PID 1, and its reaper (SIGCHLD) reaps orphans.
// gVisor's /proc shows no SigCgt, so this checks what the signals do.
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
