package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// execOutcome is POST /exec's answer, error included.
type execOutcome struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error"`
}

// runExec runs a command through the data plane and returns its outcome. It
// does not touch t, so goroutines may call it.
func runExec(srv *testenv.Server, id, token, command string, timeoutS int) (execOutcome, error) {
	body, _ := json.Marshal(map[string]any{"command": command, "timeout_s": timeoutS})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", srv.URL+"/exec", bytes.NewReader(body))
	if err != nil {
		return execOutcome{}, err
	}
	req.Header.Set("X-Superserve-Sandbox-Id", id)
	req.Header.Set("X-Access-Token", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return execOutcome{}, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return execOutcome{}, fmt.Errorf("exec %q: HTTP %d: %s", command, resp.StatusCode, data)
	}
	var out execOutcome
	if err := json.Unmarshal(data, &out); err != nil {
		return execOutcome{}, fmt.Errorf("exec %q: bad JSON %s", command, data)
	}
	return out, nil
}

// watchResponsive checks, over and over until stop is closed, that the
// neighbour sandbox runs a command and the API lists sandboxes. It returns
// how many rounds passed and the first failure.
func watchResponsive(srv *testenv.Server, neighbour *client, stop <-chan struct{}) (rounds int, failure error) {
	for {
		select {
		case <-stop:
			return rounds, nil
		default:
		}
		r, err := runExec(srv, neighbour.id, neighbour.token, "echo neighbour-ok", 0)
		if err == nil && (r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "neighbour-ok") {
			err = fmt.Errorf("neighbour answered %+v", r)
		}
		if err != nil {
			return rounds, fmt.Errorf("neighbour sandbox: %w", err)
		}
		var list []sandboxInfo
		if err := srv.Do("GET", "/sandboxes", nil, &list); err != nil {
			return rounds, fmt.Errorf("GET /sandboxes: %w", err)
		}
		rounds++
		time.Sleep(100 * time.Millisecond)
	}
}

// eventuallyAnswers polls a sandbox until it runs `echo ok` (a sandbox
// under load may be slow, so the deadline is generous; a sandbox killed by
// the host never answers again).
func eventuallyAnswers(t *testing.T, srv *testenv.Server, c *client) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		r, err := runExec(srv, c.id, c.token, "echo ok", 0)
		if err == nil && r.ExitCode == 0 && strings.TrimSpace(r.Stdout) == "ok" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s does not answer any more: %+v %v", c.id, r, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// hogCase runs a memory hog in c while checking the neighbour and the API,
// and checks that the hog, only the hog, was killed inside the sandbox.
func hogCase(t *testing.T, srv *testenv.Server, c, neighbour *client, hog string) {
	t.Helper()
	stop := make(chan struct{})
	type watch struct {
		rounds int
		err    error
	}
	watched := make(chan watch, 1)
	go func() {
		n, err := watchResponsive(srv, neighbour, stop)
		watched <- watch{n, err}
	}()
	r, err := runExec(srv, c.id, c.token, hog, 0)
	close(stop)
	w := <-watched
	if err != nil {
		t.Fatalf("hog %q: %v", hog, err)
	}
	t.Logf("hog %q: %+v (neighbour and API answered %d times meanwhile)", hog, r, w.rounds)
	if w.err != nil {
		t.Fatalf("while %q ran: %v", hog, w.err)
	}
	if r.ExitCode != 137 || r.Error != "killed: out of memory (sandbox limit 256 MiB)" {
		t.Fatalf("hog %q: exit %d error %q; want 137, killed: out of memory (sandbox limit 256 MiB)", hog, r.ExitCode, r.Error)
	}
	eventuallyAnswers(t, srv, c)
}

// TestMemoryHogFailsInside: a command that allocates more than its sandbox's
// memory_mib is killed inside the sandbox (exit 137 and an out-of-memory
// error), instead of the host killing the whole sandbox; the sandbox, its
// files and a neighbour keep working, and so does the API.
func TestMemoryHogFailsInside(t *testing.T) {
	srv := testenv.StartServer(t)
	a, _ := create(t, srv, map[string]any{"name": "hog", "from_template": "stasis/minimal", "memory_mib": 256})
	b, _ := createMinimal(t, srv, "neighbour")
	a.writeFile("/root/keep.txt", []byte("precious"))
	a.sh("sleep 1000 >/dev/null 2>&1 & echo $! > /root/bystander.pid")

	// busybox tail keeps the one endless line: grows steadily (~20 MB/s).
	hogCase(t, srv, a, b, "head -c 600m /dev/zero | tail")

	if got := string(a.readFile("/root/keep.txt")); got != "precious" {
		t.Fatalf("file written before the hog: %q", got)
	}
	// Only the hog's command went: an unrelated process lives on.
	if got := a.sh("kill -0 $(cat /root/bystander.pid) && echo alive"); got != "alive" {
		t.Fatalf("bystander process: %q", got)
	}
	// Memory is free again: the sandbox can use a good part of it.
	if r := a.exec("dd if=/dev/zero of=/dev/null bs=100M count=1"); r.ExitCode != 0 {
		t.Fatalf("100 MiB after the hog: %+v", r)
	}

	// Fast hogs (~1 GB/s) in Python, on the default template.
	c, _ := create(t, srv, map[string]any{"name": "pyhog", "memory_mib": 256})
	c.writeFile("/home/user/keep.txt", []byte("precious"))
	hogCase(t, srv, c, b, `python3 -c "b = bytearray(800 << 20)"`)
	hogCase(t, srv, c, b, `python3 -c "
chunks = []
while True:
    chunks.append(bytearray(1 << 20))"`)
	if got := string(c.readFile("/home/user/keep.txt")); got != "precious" {
		t.Fatalf("file written before the hogs: %q", got)
	}
	if got := c.sh(`python3 -c "b = bytearray(100 << 20); print(len(b) >> 20)"`); got != "100" {
		t.Fatalf("100 MiB after the hogs: %q", got)
	}
	for _, sb := range []*client{a, b, c} {
		if st := getInfo(t, srv, sb.id).Status; st != "active" {
			t.Fatalf("sandbox %s is %q", sb.id, st)
		}
	}
}

// TestForkBombFailsInside: a fork bomb fails inside its sandbox (forks fail
// at the process limit and the agent kills it), while the sandbox itself, a
// neighbour and the API keep answering.
func TestForkBombFailsInside(t *testing.T) {
	srv := testenv.StartServer(t)
	a, _ := create(t, srv, map[string]any{"name": "bomb", "from_template": "stasis/minimal", "memory_mib": 256})
	b, _ := createMinimal(t, srv, "neighbour")
	// On the default template commands run as a user, not root: their
	// limit is set differently (see agent.Server.forkExec).
	c, _ := create(t, srv, map[string]any{"name": "userbomb", "memory_mib": 256})
	a.writeFile("/root/keep.txt", []byte("precious"))
	c.writeFile("/home/user/keep.txt", []byte("precious"))

	for _, tc := range []struct {
		sb   *client
		bomb string
		// foreground: the command lives on after starting the bomb, so
		// its exec reports the kill. Otherwise the shell returns at once
		// and its processes keep forking in the background, where no exec
		// timeout reaches them.
		foreground bool
	}{
		{a, `f(){ f|f& }; f; sleep 100`, true},
		{a, `f(){ f|f& }; f`, false},
		// A bomb a finished command's background process starts later,
		// once the agent has been left with only that process (the
		// watchdog sleeps only while the agent is alone).
		{a, `(sleep 2; f(){ f|f& }; f) >/dev/null 2>&1 &`, false},
		{c, `f(){ f|f& }; f; sleep 100`, true},
	} {
		// The agent logs each kill on the sandbox's console.
		console := filepath.Join(srv.DataDir(), "sandboxes", tc.sb.id, "console.log")
		kills := func() int {
			t.Helper()
			b, err := os.ReadFile(console)
			if err != nil {
				t.Fatalf("agent's console: %v", err)
			}
			return strings.Count(string(b), ": killed ")
		}
		before := kills()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var rounds int
		var watchErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			rounds, watchErr = watchResponsive(srv, b, stop)
		}()
		r, err := runExec(srv, tc.sb.id, tc.sb.token, tc.bomb, 60)
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("bomb %q: %v", tc.bomb, err)
		}
		t.Logf("bomb %q: %+v", tc.bomb, r)
		// The agent kills a bomb when the sandbox nears its process limit,
		// or, if the bomb's processes (they cost the host memory) fill the
		// memory budget first, as out of memory.
		if tc.foreground && (r.ExitCode != 137 || (r.Error != "killed: too many processes (sandbox limit 256)" && r.Error != "killed: out of memory (sandbox limit 256 MiB)")) {
			close(stop)
			wg.Wait()
			t.Fatalf("bomb %q: exit %d error %q; want 137, killed: too many processes (or out of memory)", tc.bomb, r.ExitCode, r.Error)
		}
		// The bomb is over once the agent has killed it and the sandbox
		// answers again; the neighbour and the API answer throughout.
		deadline := time.Now().Add(2 * time.Minute)
		for kills() == before {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("bomb %q was not killed", tc.bomb)
			}
			time.Sleep(200 * time.Millisecond)
		}
		eventuallyAnswers(t, srv, tc.sb)
		close(stop)
		wg.Wait()
		t.Logf("neighbour and API answered %d times meanwhile", rounds)
		if watchErr != nil {
			t.Fatalf("while %q ran: %v", tc.bomb, watchErr)
		}
		// Nothing of the bomb is left: the sandbox is back to a handful
		// of processes.
		deadline = time.Now().Add(time.Minute)
		for {
			out, _ := runExec(srv, tc.sb.id, tc.sb.token, "ps -e | wc -l", 0)
			n := 0
			fmt.Sscan(out.Stdout, &n)
			if n > 0 && n < 20 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("processes left after the bomb: %+v", out)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	for path, sb := range map[string]*client{"/root/keep.txt": a, "/home/user/keep.txt": c} {
		if got := string(sb.readFile(path)); got != "precious" {
			t.Fatalf("file written before the bomb: %q", got)
		}
		if st := getInfo(t, srv, sb.id).Status; st != "active" {
			t.Fatalf("bombed sandbox is %q", st)
		}
	}
}

// TestNetworkIsolation: a sandbox cannot reach the host's services nor
// another sandbox (its agent or anything it serves), though the host can
// reach both and the tools work. Traffic only goes to the test server's
// link-local sandbox addresses and to loopback inside sandboxes.
func TestNetworkIsolation(t *testing.T) {
	srv := testenv.StartServer(t)
	a, _ := createMinimal(t, srv, "a")
	b, _ := createMinimal(t, srv, "b")

	// A service on the host, on every address.
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "host-secret")
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	gateway := a.sh(`ip route | awk '/^default/ {print $3}'`)
	bAddr := b.sh(`ip -4 addr show eth0 | awk '/inet /{print $2}' | cut -d/ -f1`)
	for _, addr := range []string{gateway, bAddr} {
		if ip := net.ParseIP(addr); ip == nil || !ip.IsLinkLocalUnicast() {
			t.Fatalf("address %q is not link-local", addr)
		}
	}

	// Positive controls: the host reaches its service through A's link's
	// host-side address, and B's web server; A's wget works.
	get := func(url string) string {
		t.Helper()
		c := &http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("host GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	if got := get(fmt.Sprintf("http://%s:%d/", gateway, port)); got != "host-secret" {
		t.Fatalf("host's service through %s: %q", gateway, got)
	}
	for _, c := range []*client{a, b} {
		c.sh("mkdir -p /tmp/www && echo served-by-" + c.id[:8] + " > /tmp/www/index.html && httpd -p 8000 -h /tmp/www")
	}
	if got := get("http://" + bAddr + ":8000/"); !strings.HasPrefix(got, "served-by-"+b.id[:8]) {
		t.Fatalf("host GET B's server: %q", got)
	}
	if got := a.sh("wget -q -O - http://127.0.0.1:8000/"); !strings.HasPrefix(got, "served-by-"+a.id[:8]) {
		t.Fatalf("A's own server from A: %q", got)
	}

	// Connection-level checks, with nc: A connects to its own server.
	connect := func(c *client, addr string, port int) string {
		t.Helper()
		return c.sh(fmt.Sprintf("echo | timeout 10 nc -w 3 %s %d >/dev/null 2>&1; echo $?", addr, port))
	}
	if got := connect(a, "127.0.0.1", 8000); got != "0" {
		t.Fatalf("A cannot connect to its own server: exit %s", got)
	}
	if c, err := net.DialTimeout("tcp", net.JoinHostPort(bAddr, "49983"), 10*time.Second); err != nil {
		t.Fatalf("host cannot connect to B's agent: %v", err)
	} else {
		c.Close()
	}

	// From A, none of it answers: not the host's service, not B's server,
	// not B's agent. (busybox wget's own -T crashes on this busybox when a
	// connection times out, so timeout(1) bounds it.)
	if r := a.exec(fmt.Sprintf("timeout 10 wget -q -O - http://%s:%d/; echo exit=$?", gateway, port)); strings.Contains(r.Stdout, "host-secret") || strings.Contains(r.Stdout, "exit=0") {
		t.Fatalf("A reached the host's service: %+v", r)
	}
	if r := a.exec("timeout 10 wget -q -O - http://" + bAddr + ":8000/; echo exit=$?"); strings.Contains(r.Stdout, "served-by-") || strings.Contains(r.Stdout, "exit=0") {
		t.Fatalf("A reached B's server: %+v", r)
	}
	for _, target := range []struct {
		addr string
		port int
	}{{gateway, port}, {bAddr, 8000}, {bAddr, 49983}, {gateway, 49983}} {
		if got := connect(a, target.addr, target.port); got == "0" {
			t.Fatalf("A connected to %s:%d", target.addr, target.port)
		}
	}
	// Nor does B reach the host through its own link.
	bGateway := b.sh(`ip route | awk '/^default/ {print $3}'`)
	if got := connect(b, bGateway, port); got == "0" {
		t.Fatalf("B connected to the host's service at %s:%d", bGateway, port)
	}
}
