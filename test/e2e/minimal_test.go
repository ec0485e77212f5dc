package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestMinimalEverydayCommands runs the commands people type first in a real
// stasis/minimal sandbox, through the agent's /bin/sh, and checks what they
// print. nohup and wget -T are the two that Debian's busybox lacks or crashes
// on; wget fetches from busybox httpd and nc started in the sandbox itself
// (sandboxes have no network, but they have loopback).
// waitForSleep waits (up to 10 s) until the background `sleep 300` has
// been exec'd: right after `&` the child may still be the shell, or nohup
// before it has ignored SIGHUP (its command line has "sleep 300" too).
const waitForSleep = `i=0; until ps | grep '[s]leep 300' | grep -qv nohup || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done`

func TestMinimalEverydayCommands(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "everyday")

	for _, tc := range []struct{ name, cmd, want string }{
		{"sh", `sh -c 'x=4; echo $((x * 2)) $0' arg0`, "8 arg0"},
		{"echo and cat", `echo hello > /tmp/a.txt && cat /tmp/a.txt`, "hello"},
		{"ls", `mkdir -p /tmp/d/sub && touch /tmp/d/f1 /tmp/d/f2 && ls /tmp/d`, "f1\nf2\nsub"},
		{"grep", `printf 'a1\nb2\na3\n' | grep -c a`, "2"},
		{"sed", `echo hello | sed 's/l/L/g'`, "heLLo"},
		{"awk", `printf '1 2\n3 4\n' | awk '{s += $1 * $2} END {print s}'`, "14"},
		{"sort head tail", `printf '3\n1\n2\n' | sort -n | head -2 | tail -1`, "2"},
		{"wc", `printf 'a b\nc\n' | wc -lw | tr -s ' '`, " 2 3"},
		{"tar and gzip", `cd /tmp && echo packed > d/f1 && tar czf t.tgz d && rm -r d && tar xzf t.tgz && cat d/f1 && gzip -c d/f1 | gzip -dc`, "packed\npacked"},
		{"find and xargs", `find /tmp/d -type f | sort | xargs cat`, "packed"},
		{"env", `FOO=bar env | grep '^FOO='`, "FOO=bar"},
		{"date", `date -u -d @0 +%Y-%m-%dT%H:%M:%S`, "1970-01-01T00:00:00"},
		{"ps kill sleep", `sleep 300 & pid=$!; ` + waitForSleep + `; ps | grep -c '[s]leep 300'; kill $pid; wait $pid; echo $?`, "1\n143"},
		// nohup: the command ignores SIGHUP and keeps running after the
		// exec that started it in the background returned.
		{"nohup survives SIGHUP", `nohup sleep 300 >/dev/null 2>&1 & pid=$!; ` + waitForSleep + `; kill -HUP $pid; sleep 0.2; kill -0 $pid && echo alive; kill $pid`, "alive"},
		{"nohup background job", `nohup sh -c 'sleep 0.5; echo finished > /tmp/nohup-job' > /dev/null 2>&1 & echo started`, "started"},
	} {
		r := c.exec(tc.cmd)
		if got := strings.TrimRight(r.Stdout, "\n"); r.ExitCode != 0 || got != tc.want {
			t.Errorf("%s: %q exited %d with stdout %q (want %q), stderr %q", tc.name, tc.cmd, r.ExitCode, got, tc.want, r.Stderr)
		}
	}
	if got := c.sh(`date +%Y`); got < "2024" {
		t.Errorf("date +%%Y = %q", got)
	}
	// The background job outlives the exec that started it.
	var job string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if job = c.exec(`cat /tmp/nohup-job 2>/dev/null`).Stdout; job != "" {
			break
		}
	}
	if job != "finished\n" {
		t.Errorf("nohup's background job wrote %q, want \"finished\"", job)
	}

	// wget against busybox httpd on the sandbox's loopback, with a CGI that
	// shows the request headers.
	c.sh(`mkdir -p /tmp/www/cgi-bin && echo served > /tmp/www/index.html && ` +
		`printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho "ua=$HTTP_USER_AGENT"\n' > /tmp/www/cgi-bin/ua && ` +
		`chmod +x /tmp/www/cgi-bin/ua && busybox httpd -p 127.0.0.1:8080 -h /tmp/www`)
	for _, tc := range []struct{ name, cmd, want string }{
		{"wget -T", `wget -q -T 5 -O - http://127.0.0.1:8080/index.html`, "served"},
		{"wget -qO- -T5", `wget -qO- -T5 127.0.0.1:8080/index.html`, "served"},
		{"wget to a file", `cd /tmp && wget -q -T 5 http://127.0.0.1:8080/index.html && cat index.html`, "served"},
		{"wget -U", `wget -q -T 5 -U stasis-e2e -O - http://127.0.0.1:8080/cgi-bin/ua`, "ua=stasis-e2e"},
		{"wget --header", `wget -q -T 5 --header 'User-Agent: from-header' -O - http://127.0.0.1:8080/cgi-bin/ua`, "ua=from-header"},
		{"busybox wget still there", `busybox wget -q -O - http://127.0.0.1:8080/index.html`, "served"},
	} {
		r := c.exec(tc.cmd)
		if got := strings.TrimRight(r.Stdout, "\n"); r.ExitCode != 0 || got != tc.want {
			t.Errorf("%s: %q exited %d with stdout %q (want %q), stderr %q", tc.name, tc.cmd, r.ExitCode, got, tc.want, r.Stderr)
		}
	}
	r := c.exec(`wget -q -T 5 -O - http://127.0.0.1:8080/missing`)
	if r.ExitCode != 1 || !strings.Contains(r.Stderr, "404") {
		t.Errorf("wget of a missing page: exit %d, stderr %q; want 1 and the 404", r.ExitCode, r.Stderr)
	}
	// A page that never comes (its CGI sleeps): -T ends the wait.
	c.sh(`printf '#!/bin/sh\nsleep 60\n' > /tmp/www/cgi-bin/stall && chmod +x /tmp/www/cgi-bin/stall`)
	r = c.exec(`wget -q -T 1 -O - http://127.0.0.1:8080/cgi-bin/stall; echo "exit=$?"`)
	if r.Stdout != "exit=1\n" || !strings.Contains(r.Stderr, "download timed out") {
		t.Errorf("wget -T 1 against a stalled page: stdout %q, stderr %q; want exit 1 and a timeout", r.Stdout, r.Stderr)
	}
	if n, err := strconv.Atoi(c.sh(`ps | grep -c '[s]leep 300' || true`)); err != nil || n != 0 {
		t.Errorf("sleeps left running: %v %v", n, err)
	}
}
