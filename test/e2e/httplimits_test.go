package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// dial opens a raw TCP connection to the server; every read on it gives up
// after a minute, so a test that waits for the server to act cannot hang.
func dial(t *testing.T, srv *testenv.Server) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", srv.Listen())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(time.Minute))
	t.Cleanup(func() { c.Close() })
	return c
}

// readAnswer reads one HTTP response from c.
func readAnswer(t *testing.T, r *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// expectClosed fails unless the server closes c (before c's deadline).
func expectClosed(t *testing.T, r io.Reader, what string) {
	t.Helper()
	if _, err := io.ReadAll(r); err != nil {
		t.Fatalf("%s: the server did not close the connection: %v", what, err)
	}
}

// TestStalledBodyIsCutOff: a client that sends headers and then stalls its
// body loses the connection after --body-idle-timeout, with or without a
// valid key; a body that keeps flowing, however slowly, is read to the end.
func TestStalledBodyIsCutOff(t *testing.T) {
	srv := testenv.StartServer(t, testenv.WithArgs("--body-idle-timeout", "3s"))
	for _, key := range []string{srv.APIKey, "ss_live_wrong", ""} {
		c := dial(t, srv)
		fmt.Fprintf(c, "POST /sandboxes HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na", key)
		r := bufio.NewReader(c)
		resp, body := readAnswer(t, r)
		want := http.StatusBadRequest // the body was cut off
		if key != srv.APIKey {
			want = http.StatusUnauthorized // refused before the body mattered
		}
		if resp.StatusCode != want {
			t.Errorf("key %q: HTTP %d %s, want %d", key, resp.StatusCode, body, want)
		}
		expectClosed(t, r, "stalled body, key "+key)
	}

	// A body trickling in, each piece well within the idle time, is not cut.
	c := dial(t, srv)
	body := `{"count": 1}`
	fmt.Fprintf(c, "POST /sandboxes/no-such-sandbox/fork HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", srv.APIKey, len(body))
	for _, piece := range strings.SplitAfter(body, " ") {
		time.Sleep(time.Second)
		io.WriteString(c, piece)
	}
	resp, answer := readAnswer(t, bufio.NewReader(c))
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(answer, "not_found") {
		t.Errorf("trickled body: HTTP %d %s, want 404 not_found (the body read in full)", resp.StatusCode, answer)
	}
}

// TestUnauthenticatedConnectionsAreBounded: connections that never
// authenticate (here: keep-alives after /health) are bounded by
// --max-unauthenticated-conns; beyond it a connection is answered 503
// server_busy and closed, so they cannot pile up descriptors.
func TestUnauthenticatedConnectionsAreBounded(t *testing.T) {
	const bound = 8
	srv := testenv.StartServer(t, testenv.WithArgs("--max-unauthenticated-conns", fmt.Sprint(bound)))
	before := sockets(t, srv.Pid())
	var ok, busy int
	var held []net.Conn
	for range 40 {
		c := dial(t, srv)
		io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
		r := bufio.NewReader(c)
		resp, body := readAnswer(t, r)
		switch {
		case resp.StatusCode == http.StatusOK:
			ok++
			held = append(held, c) // stays open, idle, never authenticated
		case resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(body, "server_busy"):
			busy++
			expectClosed(t, r, "refused connection")
			c.Close()
		default:
			t.Fatalf("HTTP %d %s", resp.StatusCode, body)
		}
	}
	if ok > bound || busy < 40-bound {
		t.Fatalf("%d connections served and %d refused; want at most %d served", ok, busy, bound)
	}
	// Refused connections are gone once their 503 is out (within a second,
	// whatever the client does); the served ones idle for minutes.
	deadline := time.Now().Add(30 * time.Second)
	for n := sockets(t, srv.Pid()); n > before+bound; n = sockets(t, srv.Pid()) {
		if time.Now().After(deadline) {
			t.Fatalf("stasisd holds %d sockets, %d before: more than the bound of %d", n, before, bound)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// An authenticated client still gets in once the idle ones are gone.
	for _, c := range held {
		c.Close()
	}
	deadline = time.Now().Add(time.Minute)
	for {
		err := srv.Do("GET", "/sandboxes", nil, nil)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the idle connections closed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sockets counts the sockets process pid has open.
func sockets(t *testing.T, pid int) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink(dir + "/" + e.Name()); err == nil && strings.HasPrefix(target, "socket:") {
			n++
		}
	}
	return n
}

// TestExpectContinueOverLimit: a JSON request announcing a body over 1 MiB
// with "Expect: 100-continue" is answered 413, without a "100 Continue"
// that would invite the body; one within the limit is invited and served.
func TestExpectContinueOverLimit(t *testing.T) {
	srv := testenv.StartServer(t)
	c := dial(t, srv)
	fmt.Fprintf(c, "POST /sandboxes HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", srv.APIKey, 2<<20)
	r := bufio.NewReader(c)
	resp, body := readAnswer(t, r)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "request_too_large") {
		t.Fatalf("HTTP %d %s, want 413 request_too_large (and no 100 Continue)", resp.StatusCode, body)
	}
	expectClosed(t, r, "after 413")

	c = dial(t, srv)
	fmt.Fprintf(c, "POST /sandboxes/no-such-sandbox/fork HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n", srv.APIKey)
	r = bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("within the limit: first line %q (%v), want 100 Continue", line, err)
	}
	r.ReadString('\n') // the empty line ending the interim answer
	io.WriteString(c, "{}")
	resp, body = readAnswer(t, r)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("within the limit: HTTP %d %s, want 404", resp.StatusCode, body)
	}
}
