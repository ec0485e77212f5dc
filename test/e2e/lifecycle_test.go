package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestSeedScenario is the seed page end to end: create, run, write, a
// background process that counts, pause, resume with the counter continuing,
// token rotation, transparent resume on a data-plane call, delete.
func TestSeedScenario(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := createMinimal(t, srv, "long-job")

	// The sandbox can run commands as soon as create returns.
	if got := c.sh("echo hello from $(hostname)"); !strings.HasPrefix(got, "hello from ") {
		t.Fatalf("echo: %q", got)
	}
	payload := []byte("state that must survive\x00\xff binary too\n")
	c.writeFile("/home/user/work/notes.bin", payload)

	// A background job that counts, started the way a user would.
	pid := startCounter(c)
	before := waitCount(t, c, 10)

	var paused sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, &paused); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if paused.Status != "paused" || getInfo(t, srv, sb.ID).Status != "paused" {
		t.Fatalf("after pause: status %q / %q", paused.Status, getInfo(t, srv, sb.ID).Status)
	}
	// No compute: the sandbox stays frozen only while its snapshot is sealed
	// on disk (the tiered pause); then nothing of it is left on the host.
	waitPauseState(t, srv, sb.ID, true, false)
	if procs := hostProcessesMentioning(sb.ID); len(procs) > 0 {
		t.Fatalf("sandbox processes still running after pause:\n%s", strings.Join(procs, "\n"))
	}

	oldToken := c.token
	var resumed sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/resume", nil, &resumed); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if resumed.Status != "active" || resumed.AccessToken == "" || resumed.AccessToken == oldToken {
		t.Fatalf("resume returned %+v; want active with a new token", resumed)
	}
	// The counter continues from where it was, in the same process.
	after := readCount(t, c2(t, srv, sb.ID, resumed.AccessToken))
	if after < before {
		t.Fatalf("counter restarted: %d before pause, %d after resume", before, after)
	}
	c.token = resumed.AccessToken
	if got := c.sh("kill -0 " + pid + " && echo alive"); got != "alive" {
		t.Fatalf("counter process %s is gone after resume", pid)
	}
	if later := waitCount(t, c, after+5); later <= after {
		t.Fatalf("counter stopped after resume")
	}
	if got := c.readFile("/home/user/work/notes.bin"); !bytes.Equal(got, payload) {
		t.Fatalf("file after resume = %q, want %q", got, payload)
	}

	// The old token is dead, the new one works.
	stale := &client{t: t, srv: srv, id: sb.ID, token: oldToken}
	if status, body := stale.raw("POST", "/exec", strings.NewReader(`{"command":"true"}`)); status != http.StatusUnauthorized {
		t.Fatalf("old token after resume: HTTP %d %s, want 401", status, body)
	}

	// A command on a paused sandbox resumes it transparently.
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatalf("second pause: %v", err)
	}
	if got := c.sh("ls /tmp"); !strings.Contains(got, "count") {
		t.Fatalf("ls /tmp on paused sandbox: %q", got)
	}
	if st := getInfo(t, srv, sb.ID).Status; st != "active" {
		t.Fatalf("status after transparent resume = %q", st)
	}
	if got := c.sh("kill -0 " + pid + " && echo alive"); got != "alive" {
		t.Fatalf("counter process gone after transparent resume")
	}

	// Delete removes everything; then 404 everywhere.
	if err := srv.Do("DELETE", "/sandboxes/"+sb.ID, nil, nil); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := srv.Do("GET", "/sandboxes/"+sb.ID, nil, nil); statusOf(err) != http.StatusNotFound {
		t.Fatalf("get after delete: %v, want 404", err)
	}
	if err := srv.Do("DELETE", "/sandboxes/"+sb.ID, nil, nil); statusOf(err) != http.StatusNotFound {
		t.Fatalf("second delete: %v, want 404", err)
	}
	if status, _ := c.raw("POST", "/exec", strings.NewReader(`{"command":"true"}`)); status != http.StatusNotFound {
		t.Fatalf("exec after delete: HTTP %d, want 404", status)
	}
	if procs := hostProcessesMentioning(sb.ID); len(procs) > 0 {
		t.Fatalf("processes left after delete:\n%s", strings.Join(procs, "\n"))
	}
}

func c2(t *testing.T, srv *testenv.Server, id, token string) *client {
	return &client{t: t, srv: srv, id: id, token: token}
}

// waitCount polls /tmp/count until it reaches at least min.
// startCounter starts the test counter: a background loop, started the way
// a user would, that writes 1, 2, 3... to /tmp/count every 0.1 s. It
// returns the loop's pid (also in /tmp/counter.pid).
func startCounter(c *client) string {
	c.sh(`sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done' >/dev/null 2>&1 & echo $! > /tmp/counter.pid`)
	return c.sh("cat /tmp/counter.pid")
}

// readCount reads the test counter. The loop writing it truncates the file
// before writing the number, so a read can land in between and find it
// empty: that is retried, not taken for 0.
func readCount(t *testing.T, c *client) int {
	t.Helper()
	for range 50 {
		if n, err := strconv.Atoi(c.sh("cat /tmp/count")); err == nil {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("/tmp/count stays empty or unreadable")
	return 0
}

func waitCount(t *testing.T, c *client, min int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, _ := strconv.Atoi(c.sh("cat /tmp/count 2>/dev/null || echo 0"))
		if n >= min {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("counter stuck at %d, want >= %d", n, min)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestConcurrentResumesRestoreOnce: two resumes race; both succeed (a resume
// of an active sandbox is a no-op that rotates the token, as the seed's
// connect-then-resume needs), but the sandbox is restored exactly once.
func TestConcurrentResumesRestoreOnce(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := createMinimal(t, srv, "racer")
	c.sh("echo 1 > /tmp/marker")
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	results := make([]error, 2)
	tokens := make([]string, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out sandboxInfo
			results[i] = srv.Do("POST", "/sandboxes/"+sb.ID+"/resume", nil, &out)
			tokens[i] = out.AccessToken
		}()
	}
	wg.Wait()
	for i, err := range results {
		if err != nil {
			t.Fatalf("resume %d: %v", i, err)
		}
	}
	if n := strings.Count(srv.Logs(), `msg="sandbox resumed"`); n != 1 {
		t.Fatalf("sandbox restored %d times, want once", n)
	}
	// Resume rotates: of the two tokens exactly the later one works.
	working := 0
	for _, tok := range tokens {
		if status, _ := c2(t, srv, sb.ID, tok).raw("POST", "/exec", strings.NewReader(`{"command":"cat /tmp/marker"}`)); status == http.StatusOK {
			working++
			c.token = tok
		}
	}
	if working != 1 {
		t.Fatalf("%d of the two resume tokens work, want exactly 1", working)
	}
	if got := c.sh("cat /tmp/marker"); got != "1" {
		t.Fatalf("marker = %q", got)
	}

	// Concurrent activates of a paused sandbox: both succeed, both tokens work.
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out sandboxInfo
			results[i] = srv.Do("POST", "/sandboxes/"+sb.ID+"/activate", nil, &out)
			tokens[i] = out.AccessToken
		}()
	}
	wg.Wait()
	for i, err := range results {
		if err != nil {
			t.Fatalf("activate %d: %v", i, err)
		}
	}
	for _, tok := range tokens {
		if got := c2(t, srv, sb.ID, tok).sh("cat /tmp/marker"); got != "1" {
			t.Fatalf("marker via activate token = %q", got)
		}
	}
}

// TestConcurrentSandboxes runs several sandboxes at once; each sees only its own files.
func TestConcurrentSandboxes(t *testing.T) {
	srv := testenv.StartServer(t)
	const n = 3
	clients := make([]*client, n)
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var sb sandboxInfo
			if err := srv.Do("POST", "/sandboxes", map[string]any{"name": "p" + strconv.Itoa(i), "from_template": "stasis/minimal"}, &sb); err != nil {
				errs <- err.Error()
				return
			}
			clients[i] = &client{t: t, srv: srv, id: sb.ID, token: sb.AccessToken}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatalf("parallel create: %s", e)
	}
	for i, c := range clients {
		c.sh("echo " + strconv.Itoa(i) + " > /tmp/who")
	}
	for i, c := range clients {
		if got := c.sh("cat /tmp/who"); got != strconv.Itoa(i) {
			t.Fatalf("sandbox %d sees /tmp/who = %q", i, got)
		}
	}
	var list []sandboxInfo
	if err := srv.Do("GET", "/sandboxes", nil, &list); err != nil || len(list) != n {
		t.Fatalf("list: %d sandboxes, %v", len(list), err)
	}
}

// TestClockCalibratedAtCreate: a new sandbox's clocks are calibrated by the
// time its agent answers, so its processes read the time through the vDSO
// rather than trapping into gVisor for every read (patches/gvisor 0003;
// before it, for the sandbox's first second). The check reads the vDSO
// parameter page's "monotonic ready" word (after its sequence count) from
// the shell's own memory, and the sandbox's uptime; a read made a second or
// more after the boot proves nothing either way and is skipped.
func TestClockCalibratedAtCreate(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "clock")
	out := c.sh(`a=$(grep '\[vvar\]' /proc/$$/maps | cut -d- -f1)
exec 3</proc/self/mem
w=$(dd bs=8 skip=$(( 0x$a / 8 + 1 )) count=1 <&3 | od -An -tu8)
echo $w $(cut -d' ' -f1 /proc/uptime)`)
	var ready int
	var up float64
	if f := strings.Fields(out); len(f) != 2 {
		t.Fatalf("output %q: want the ready word and the uptime", out)
	} else if _, err := fmt.Sscan(out, &ready, &up); err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	if up >= 1 {
		t.Skipf("read %.2f s after the sandbox's boot: its clocks would be calibrated anyway", up)
	}
	if ready != 1 {
		t.Fatalf("monotonic clock not calibrated %.2f s after the sandbox's boot (vDSO ready word %d): its time reads trap into gVisor", up, ready)
	}
}
