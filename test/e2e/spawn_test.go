package e2e

import (
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// A command's shell starts as a fresh process would, whichever way the
// agent started it (its own shell, the spare, or its own shell beside the
// spare): nothing blocked or ignored in what it runs (SIGPIPE kills a
// writer), its own process group in the agent's session, the user's uid,
// gid and groups, the agent's limits, only fds 0-2 for its children, the
// directory asked for. (gVisor's /proc/PID/status has no signal lines: the
// shell's own mask is compared with ForkExec's by the agent's
// TestSpawnStartsLikeForkExec.)
func TestExecShellStartsFresh(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := create(t, srv, map[string]any{"from_template": "stasis/base"}) // as "user"
	const report = `ls /proc/self/fd | tr '\n' ' '; echo
python3 -c 'import signal as s; print("blocked", sorted(s.pthread_sigmask(s.SIG_BLOCK, [])))'
python3 -c 'import signal as s; print("ignored", [n.name for n in s.Signals if n not in (s.SIGPIPE, s.SIGXFSZ, s.SIGINT, s.SIGKILL, s.SIGSTOP) and s.getsignal(n) == s.SIG_IGN])'
exec 3>&1; { yes; echo "yes: $(kill -l $?)" >&3; } | head -c 1 >/dev/null; exec 3>&-
set -- $(cut -d' ' -f5,6 /proc/$$/stat) $(cut -d' ' -f6 /proc/1/stat)
echo "pgrp $([ "$1" = $$ ] && echo own || echo "$1") session $([ "$2" = "$3" ] && echo agent || echo "$2")"
echo "$(id -un) $(id -u) $(id -g) $(id -G | tr ' ' '\n' | sort -n | tr '\n' ' ')"
echo "user $(id -u user) $(id -g user) $(id -G user | tr ' ' '\n' | sort -n | tr '\n' ' ')"
grep -v '^Max processes' /proc/self/limits >/tmp/limits.$$; grep -v '^Max processes' /proc/1/limits | diff /tmp/limits.$$ - && echo "limits: the agent's"; rm /tmp/limits.$$
pwd`
	want := func(dir string) string {
		return "0 1 2 3 \nblocked []\nignored []\nyes: PIPE\npgrp own session agent\n" +
			"user 1000 1000 1000 \nuser 1000 1000 1000 \nlimits: the agent's\n" + dir
	}
	for i, tc := range []struct{ name, dir string }{
		{"the first command (its own shell)", ""},
		{"on the spare", ""},
		{"in another directory (its own shell)", "/tmp"},
		{"on the spare again", ""},
	} {
		body := map[string]any{"command": report}
		if tc.dir != "" {
			body["working_dir"] = tc.dir
		}
		r := c.execJSON(body)
		dir := tc.dir
		if dir == "" {
			dir = "/home/user"
		}
		if got, _ := r["stdout"].(string); strings.TrimSpace(got) != want(dir) || r["exit_code"] != float64(0) {
			t.Errorf("command %d, %s: exit %v stderr %q, stdout\n%s\nwant\n%s", i+1, tc.name, r["exit_code"], r["stderr"], got, want(dir))
		}
	}
}
