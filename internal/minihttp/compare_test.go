package minihttp_test

// Tests that run the same handler under net/http's server and under
// minihttp, with the same client, and compare what the client sees: the
// agent's handlers and stasisd's agentclient were written against net/http,
// so a difference is a bug unless it is one of these deliberate ones:
//   - no Content-Type sniffing and no Date header: every agent handler
//     sets its Content-Type, and stasisd's own server dates its answers;
//   - no request Context, 1xx informational answers or trailers: no agent
//     handler uses them (exec and attach own their hijacked connection);
//   - an unread chunked body closes the connection (TestUnreadChunkedBody);
//   - a request with both Content-Length and chunked coding, or of an
//     unknown HTTP version, gets 400 (TestCompareRaw);
//   - a header value with a control character is dropped
//     (TestHeaderValueWithNul).

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/minihttp"
)

// netHTTPWriter is net/http's ResponseWriter seen through minihttp's API.
type netHTTPWriter struct{ w http.ResponseWriter }

func (w netHTTPWriter) Header() minihttp.Header     { return minihttp.Header(w.w.Header()) }
func (w netHTTPWriter) Write(p []byte) (int, error) { return w.w.Write(p) }
func (w netHTTPWriter) WriteHeader(code int)        { w.w.WriteHeader(code) }
func (w netHTTPWriter) Flush()                      { w.w.(http.Flusher).Flush() }
func (w netHTTPWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return w.w.(http.Hijacker).Hijack()
}

// underNetHTTP serves a minihttp handler from net/http's server.
func underNetHTTP(h minihttp.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == minihttp.ErrAbortHandler {
					v = http.ErrAbortHandler
				}
				panic(v)
			}
		}()
		h(netHTTPWriter{w}, &minihttp.Request{
			Method: r.Method, URL: r.URL, RequestURI: r.RequestURI, Proto: r.Proto,
			ProtoMinor: r.ProtoMinor, Header: minihttp.Header(r.Header),
			ContentLength: r.ContentLength, Body: r.Body, RemoteAddr: r.RemoteAddr,
		})
	})
}

// both serves h with net/http and with minihttp; it returns their
// addresses, net/http's first.
func both(t *testing.T, h minihttp.HandlerFunc) (netAddr, miniAddr string) {
	t.Helper()
	ts := httptest.NewUnstartedServer(underNetHTTP(h))
	ts.Config.ErrorLog = log.New(io.Discard, "", 0)
	ts.Start()
	t.Cleanup(ts.Close)
	miniAddr, _ = serve(t, h)
	return ts.Listener.Addr().String(), miniAddr
}

// client is a Go client (as agentclient's) that counts its connections.
type client struct {
	t     *testing.T
	addr  string
	hc    *http.Client
	tr    *http.Transport
	dials atomic.Int32
	log   []string
	// headers are response headers to note, besides those do always notes
	headers []string
}

func newClient(t *testing.T, addr string) *client {
	c := &client{t: t, addr: addr}
	c.tr = &http.Transport{DisableCompression: true, DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		c.dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, a)
	}}
	t.Cleanup(c.tr.CloseIdleConnections)
	c.hc = &http.Client{Transport: c.tr}
	return c
}

// do sends a request (size -1: chunked) and notes what came back.
func (c *client) do(method, path string, body []byte, size int64, header ...string) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+c.addr+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != nil {
		req.ContentLength = size
		if size < 0 {
			req.Body = io.NopCloser(rd) // hide the length: Go sends it chunked
		}
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.log = append(c.log, fmt.Sprintf("%s %s: error", method, path))
		return
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	c.log = append(c.log, fmt.Sprintf("%s %s: %d length=%d coding=%v close=%v type=%q body=%s readErr=%v",
		method, path, resp.StatusCode, resp.ContentLength, resp.TransferEncoding, resp.Close,
		resp.Header.Get("Content-Type"), short(b), err != nil))
	for _, k := range c.headers {
		c.log = append(c.log, fmt.Sprintf("  %s: %q", k, resp.Header.Values(k)))
	}
}

// transcript is everything the client saw, and how many connections it used.
func (c *client) transcript() string {
	return strings.Join(c.log, "\n") + fmt.Sprintf("\nconnections: %d", c.dials.Load())
}

func short(b []byte) string {
	if len(b) <= 40 {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("%d bytes crc %08x", len(b), crc32.ChecksumIEEE(b))
}

// compare runs the client script against both servers of h and fails if
// the transcripts differ.
func compare(t *testing.T, h minihttp.HandlerFunc, script func(c *client)) {
	t.Helper()
	netAddr, miniAddr := both(t, h)
	cn, cm := newClient(t, netAddr), newClient(t, miniAddr)
	script(cn)
	script(cm)
	if a, b := cn.transcript(), cm.transcript(); a != b {
		t.Errorf("net/http:\n%s\nminihttp:\n%s", a, b)
	} else {
		t.Logf("both:\n%s", a)
	}
}

func TestCompareResponses(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 8<<10)
	h := func(w minihttp.ResponseWriter, r *minihttp.Request) {
		w.Header().Set("Content-Type", "text/plain")
		switch r.URL.Path {
		case "/small":
			io.WriteString(w, "hello")
		case "/big": // no length: chunked
			for i := 0; i < len(big); i += 1000 {
				w.Write(big[i:min(i+1000, len(big))])
			}
		case "/declared":
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "hello")
		case "/nothing":
		case "/status-only":
			w.WriteHeader(minihttp.StatusNotFound)
		case "/204":
			w.WriteHeader(minihttp.StatusNoContent)
			w.Write([]byte("dropped"))
		case "/304":
			w.WriteHeader(minihttp.StatusNotModified)
		case "/twice":
			w.WriteHeader(minihttp.StatusForbidden)
			w.WriteHeader(minihttp.StatusOK)
			io.WriteString(w, "first wins")
		case "/header-after-write-header":
			w.WriteHeader(minihttp.StatusOK)
			w.Header().Set("Content-Type", "late/ignored")
			w.Header().Set("Content-Length", "3")
			io.WriteString(w, "body")
		case "/header-after-body":
			io.WriteString(w, "body")
			w.Header().Set("X-Late", "ignored")
			w.Header().Set("Content-Type", "late/ignored")
		case "/short-declared": // the client must see a broken body
			w.Header().Set("Content-Length", "10")
			io.WriteString(w, "12345")
		case "/large-header":
			w.Header().Set("X-Big", strings.Repeat("h", 64<<10))
			io.WriteString(w, "ok")
		case "/error":
			minihttp.Error(w, "nope", minihttp.StatusBadRequest)
		case "/newline-in-header":
			w.Header().Set("Content-Disposition", "attachment; filename=\"a\r\nX-Injected: 1.zip\"")
			w.Header().Set("Bad Name", "v")
			fmt.Fprintf(w, "%q", w.Header().Get("Content-Disposition"))
		}
	}
	compare(t, h, func(c *client) {
		for _, p := range []string{"/small", "/big", "/declared", "/nothing", "/status-only", "/204", "/304",
			"/twice", "/header-after-write-header", "/header-after-body", "/large-header", "/error"} {
			c.do("GET", p, nil, 0)
			c.do("HEAD", p, nil, 0)
		}
		c.do("GET", "/newline-in-header", nil, 0)
		c.headers = append(c.headers, "Content-Disposition", "X-Injected", "Bad Name")
		c.do("GET", "/newline-in-header", nil, 0)
		c.headers = nil
		c.do("GET", "/short-declared", nil, 0)
		c.do("GET", "/small", nil, 0)
		c.do("GET", "/small", nil, 0, "Connection", "close")
		c.do("GET", "/small", nil, 0)
	})
}

// TestHeaderValueWithNul: a value with a control character other than a
// line break is dropped. net/http sends it, and Go's client then refuses
// the whole response; here the rest of the response still arrives.
func TestHeaderValueWithNul(t *testing.T) {
	addr, _ := serve(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		w.Header().Set("X-Nul", "a\x00b")
		w.Header().Set("X-Ok", "fine")
		io.WriteString(w, "body")
	})
	c := newClient(t, addr)
	c.headers = []string{"X-Nul", "X-Ok"}
	c.do("GET", "/", nil, 0)
	want := "GET /: 200 length=4 coding=[] close=false type=\"\" body=\"body\" readErr=false\n" +
		"  X-Nul: []\n  X-Ok: [\"fine\"]\nconnections: 1"
	if got := c.transcript(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// TestUnreadChunkedBody: a handler that answers without reading a chunked
// upload (its length unknown) says Connection: close rather than read up to
// 256 KiB of it as net/http does, which keeps the connection only for small
// bodies; agentclient sends chunked only uploads of unknown size, and their
// early answers (bad path, no space) are rare.
func TestUnreadChunkedBody(t *testing.T) {
	addr, _ := serve(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		minihttp.Error(w, "bad path", minihttp.StatusBadRequest)
	})
	c := newClient(t, addr)
	c.do("POST", "/", []byte("small"), -1)
	c.do("POST", "/", bytes.Repeat([]byte("big"), 1<<20), -1)
	want := "POST /: 400 length=9 coding=[] close=true type=\"text/plain; charset=utf-8\" body=\"bad path\\n\" readErr=false\n" +
		"POST /: 400 length=9 coding=[] close=true type=\"text/plain; charset=utf-8\" body=\"bad path\\n\" readErr=false\n" +
		"connections: 2"
	if got := c.transcript(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// TestCompareHeadWithoutLength: a HEAD answered by a handler that writes a
// small body without a length gets the length of what it wrote, as GET does.
func TestCompareHeadWithoutLength(t *testing.T) {
	compare(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"status":"ok"}`)
	}, func(c *client) {
		c.do("HEAD", "/", nil, 0)
		c.do("GET", "/", nil, 0)
	})
}

func TestCompareRequestBodies(t *testing.T) {
	h := func(w minihttp.ResponseWriter, r *minihttp.Request) {
		w.Header().Set("Content-Type", "text/plain")
		switch r.URL.Path {
		case "/echo":
			b, err := io.ReadAll(r.Body)
			if err != nil {
				minihttp.Error(w, "read: "+err.Error(), minihttp.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "%d %d %08x", r.ContentLength, len(b), crc32.ChecksumIEEE(b))
		case "/ignore":
			io.WriteString(w, "ignored")
		case "/close-unread":
			r.Body.Close()
			io.WriteString(w, "closed")
		case "/read-some":
			io.ReadFull(r.Body, make([]byte, 10))
			io.WriteString(w, "read some")
		}
	}
	small := []byte("a small body")
	mid := bytes.Repeat([]byte("m"), 200<<10) // under net/http's 256 KiB drain
	large := bytes.Repeat([]byte("L"), 4<<20)
	compare(t, h, func(c *client) {
		c.do("POST", "/echo", small, int64(len(small)))
		c.do("POST", "/echo", small, -1)
		c.do("POST", "/echo", large, int64(len(large)))
		c.do("POST", "/echo", large, -1)
		c.do("POST", "/ignore", small, int64(len(small)))
		c.do("POST", "/ignore", mid, int64(len(mid)))
		c.do("POST", "/close-unread", small, int64(len(small)))
		c.do("POST", "/read-some", mid, int64(len(mid)))
		c.do("GET", "/echo", nil, 0)
		c.do("POST", "/ignore", large, int64(len(large)))
		c.do("GET", "/echo", nil, 0)
	})
}

// TestCompareExpectContinue: Go's client, told to, sends Expect:
// 100-continue and waits for the 100 before the body (agentclient does not
// ask for it; a client that does must still work).
func TestCompareExpectContinue(t *testing.T) {
	h := func(w minihttp.ResponseWriter, r *minihttp.Request) {
		w.Header().Set("Content-Type", "text/plain")
		if r.URL.Path == "/refuse" {
			minihttp.Error(w, "no", minihttp.StatusUnauthorized)
			return
		}
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %d", len(b))
	}
	body := bytes.Repeat([]byte("e"), 100<<10)
	compare(t, h, func(c *client) {
		c.tr.ExpectContinueTimeout = 10e9 // long: the body must wait for the 100
		c.do("PUT", "/read", body, int64(len(body)), "Expect", "100-continue")
		c.do("PUT", "/refuse", body, int64(len(body)), "Expect", "100-continue")
		c.do("PUT", "/read", body, int64(len(body)), "Expect", "100-continue")
		c.do("GET", "/read", nil, 0)
	})
}

// TestComparePanic: a handler's panic costs the client its response, and
// the server (the agent is PID 1) goes on serving.
func TestComparePanic(t *testing.T) {
	compare(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		w.Header().Set("Content-Type", "text/plain")
		switch r.URL.Path {
		case "/panic":
			panic("handler bug")
		case "/panic-after-write":
			w.Header().Set("Content-Length", "100000")
			w.Write(make([]byte, 10000))
			panic("handler bug")
		case "/abort":
			panic(minihttp.ErrAbortHandler)
		}
		io.WriteString(w, "alive")
	}, func(c *client) {
		c.do("GET", "/ok", nil, 0)
		c.do("POST", "/panic", []byte("x"), 1) // POST: not retried by the client
		c.do("GET", "/panic-after-write", nil, 0)
		c.do("POST", "/abort", []byte("x"), 1)
		c.do("GET", "/ok", nil, 0)
	})
}

// rawTranscript sends raw bytes on one connection, half-closes it, and
// notes each response read back until the server closes.
func rawTranscript(t *testing.T, addr, req string) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	conn.(*net.TCPConn).CloseWrite()
	br := bufio.NewReader(conn)
	var out []string
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if err != io.EOF {
				out = append(out, "read error")
			}
			break
		}
		b, err := io.ReadAll(resp.Body)
		text := short(b)
		if resp.ContentLength < 0 && len(resp.TransferEncoding) == 0 {
			text = "(the server's own, to the close)" // its wording is no handler's
		}
		out = append(out, fmt.Sprintf("%d close=%v body=%s readErr=%v", resp.StatusCode, resp.Close, text, err != nil))
		if resp.Close {
			break
		}
	}
	return strings.Join(out, "\n")
}

// TestCompareRaw: pipelined requests, a body longer or shorter than
// declared, malformed requests and oversized headers get the same answers,
// and the server goes on serving.
func TestCompareRaw(t *testing.T) {
	netAddr, miniAddr := both(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		w.Header().Set("Content-Type", "text/plain")
		b, err := io.ReadAll(r.Body)
		if err != nil {
			minihttp.Error(w, "short body", minihttp.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%s %s %q", r.Method, r.URL.Path, b)
	})
	cases := map[string]string{
		"pipelined": "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" +
			"POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer-X: y\r\n\r\n" +
			"GET /4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: x\r\n\r\n",
		"http/1.0":          "GET /a HTTP/1.0\r\n\r\n",
		"http/1.0 kept":     "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
		"longer than said":  "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcdef",
		"shorter than said": "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\nabc",
		"bad line":          "GARBAGE\r\n\r\n",
		"bad version":       "GET / HTTP/2.5\r\nHost: x\r\n\r\n",
		"no host":           "GET / HTTP/1.1\r\n\r\n",
		"two hosts":         "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
		"bad header":        "GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
		"bad length":        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
		"two lengths":       "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
		"length and chunks": "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"bad chunk":         "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"gzip coding":       "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
		"huge header line":  "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 2<<20) + "\r\n\r\n",
		"many headers":      "GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Many: v\r\n", 200_000) + "\r\n",
		"ok after all":      "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
	}
	// Deliberate differences, with what minihttp answers.
	differs := map[string]string{
		// net/http says 505; any 4xx/5xx and a close does for a client
		// that speaks neither HTTP/1.0 nor 1.1.
		"bad version": "400 close=true body=(the server's own, to the close) readErr=false",
		// net/http drops the Content-Length and reads chunks; RFC 9112
		// 6.3 lets a server refuse the request instead, which leaves no
		// doubt about where it ends (request smuggling). Go's client never
		// sends both.
		"length and chunks": "400 close=true body=(the server's own, to the close) readErr=false",
	}
	for name, req := range cases {
		a, b := rawTranscript(t, netAddr, req), rawTranscript(t, miniAddr, req)
		if want, ok := differs[name]; ok {
			if b != want {
				t.Errorf("%s: minihttp:\n%s\nwant:\n%s (net/http: %s)", name, b, want, a)
			}
			continue
		}
		if a != b {
			t.Errorf("%s: net/http:\n%s\nminihttp:\n%s", name, a, b)
		}
	}
	if got := rawTranscript(t, miniAddr, cases["ok after all"]); !strings.HasPrefix(got, "200 ") {
		t.Errorf("after the bad requests: %s", got)
	}
}

// TestCompareFlush: what a handler flushes reaches the client while the
// handler still runs.
func TestCompareFlush(t *testing.T) {
	var next = make(chan struct{})
	netAddr, miniAddr := both(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "first\n")
		w.(minihttp.Flusher).Flush()
		<-next // until the client has read the first line
		io.WriteString(w, "second\n")
	})
	for _, addr := range []string{netAddr, miniAddr} {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		first, err := br.ReadString('\n')
		if err != nil || first != "first\n" {
			t.Fatalf("%s: first line %q, %v", addr, first, err)
		}
		next <- struct{}{}
		rest, err := io.ReadAll(br)
		resp.Body.Close()
		if err != nil || string(rest) != "second\n" || resp.ContentLength != -1 {
			t.Errorf("%s: rest %q, %v, length %d", addr, rest, err, resp.ContentLength)
		}
	}
}

// TestCompareClientGone: a client that goes away in the middle of a long
// response makes the handler's writes fail (the agent's download then
// stops reading the file), under both servers.
func TestCompareClientGone(t *testing.T) {
	results := make(chan string, 1)
	netAddr, miniAddr := both(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		chunk := make([]byte, 64<<10)
		for i := 0; i < 1<<14; i++ { // 1 GiB at most
			if _, err := w.Write(chunk); err != nil {
				results <- "write failed"
				return
			}
		}
		results <- "wrote everything"
	})
	for _, addr := range []string{netAddr, miniAddr} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if _, err := io.ReadFull(conn, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		if got := <-results; got != "write failed" {
			t.Errorf("%s: %s", addr, got)
		}
	}
}

// TestCompareHijack: the 101 exec stream: what the client sent with the
// header reaches the handler, and the handler speaks on the raw connection.
func TestCompareHijack(t *testing.T) {
	netAddr, miniAddr := both(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		conn, brw, err := w.(minihttp.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		first, _ := brw.Reader.ReadString('\n')
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
		second, _ := brw.Reader.ReadString('\n')
		io.WriteString(conn, "echo "+first+"echo "+second)
	})
	var got []string
	for _, addr := range []string{netAddr, miniAddr} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, "POST /exec HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\nframe one\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, "frame two\n")
		rest, _ := io.ReadAll(br)
		conn.Close()
		got = append(got, fmt.Sprintf("%d %q", resp.StatusCode, rest))
	}
	if got[0] != got[1] || got[1] != `101 "echo frame one\necho frame two\n"` {
		t.Errorf("net/http %s, minihttp %s", got[0], got[1])
	}
}
