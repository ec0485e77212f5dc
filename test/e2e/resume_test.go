package e2e

import (
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// The agent drops its spare shell before a checkpoint (a process less to
// save and restore) and starts it again at its first request after the
// restore, so the first command after a resume from disk runs on a spare
// like any other: its shell is the spare's `sh -c '. /proc/self/fd/3'`,
// not an `sh -c <command>` started for it.
func TestFirstCommandAfterResumeRunsOnSpare(t *testing.T) {
	const spare = "/bin/sh\x00-c\x00. /proc/self/fd/3\x00"
	srv := testenv.StartServer(t)
	c, sb := createMinimal(t, srv, "spare")
	if got := c.exec("cat /proc/$$/cmdline"); got.Stdout == spare {
		t.Fatalf("the first command ran on a spare: the test no longer tells spares apart")
	}
	if got := c.exec("cat /proc/$$/cmdline"); got.Stdout != spare {
		t.Fatalf("the second command did not run on a spare: shell %q", got.Stdout)
	}
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatalf("pause: %v", err)
	}
	waitPauseState(t, srv, sb.ID, true, false) // resumed from disk, not thawed
	var resumed sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/resume", nil, &resumed); err != nil {
		t.Fatalf("resume: %v", err)
	}
	c.token = resumed.AccessToken
	if got := c.exec("cat /proc/$$/cmdline"); got.Stdout != spare || got.ExitCode != 0 {
		t.Fatalf("the first command after resume did not run on a spare: shell %q, exit %d", got.Stdout, got.ExitCode)
	}
}
