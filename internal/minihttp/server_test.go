package minihttp_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/minihttp"
)

// serve runs a minihttp.Server with h on a loopback port until the test
// ends; it returns the address.
func serve(t *testing.T, h minihttp.HandlerFunc) (string, *minihttp.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &minihttp.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, minihttp.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), srv
}

// rawExchange sends req on a new connection and returns everything the
// server sends until it closes the connection or a second passes quietly.
func rawExchange(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

// TestNetHTTPClient: Go's own client (what stasisd's agentclient uses) gets
// small responses with a Content-Length, large ones chunked, request bodies
// both ways, and keeps one connection for all of it.
func TestNetHTTPClient(t *testing.T) {
	big := strings.Repeat("0123456789", 10_000)
	addr, _ := serve(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		switch r.URL.Path {
		case "/small":
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "hi "+r.URL.Query().Get("who"))
		case "/big":
			for i := 0; i < len(big); i += 1000 {
				io.WriteString(w, big[i:i+1000])
			}
		case "/echo":
			b, err := io.ReadAll(r.Body)
			if err != nil {
				minihttp.Error(w, err.Error(), minihttp.StatusBadRequest)
				return
			}
			w.Header().Set("X-Length", strconv.FormatInt(r.ContentLength, 10))
			w.Write(b)
		case "/empty":
			w.WriteHeader(minihttp.StatusNoContent)
		default:
			minihttp.NewServeMux().ServeHTTP(w, r)
		}
	})
	var dials atomic.Int32
	tr := &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, a)
	}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	get := func(method, path string, body io.Reader, size int64) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+addr+path, body)
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = size
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: body: %v", method, path, err)
		}
		return resp, string(b)
	}

	resp, body := get("GET", "/small?who=you", nil, 0)
	if resp.StatusCode != 200 || body != "hi you" || resp.ContentLength != 6 || resp.Header.Get("Content-Type") != "text/plain" {
		t.Errorf("/small: %d %q, length %d, header %v", resp.StatusCode, body, resp.ContentLength, resp.Header)
	}
	resp, body = get("GET", "/big", nil, 0)
	if body != big || resp.ContentLength != -1 || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("/big: %d bytes (want %d), length %d, coding %v", len(body), len(big), resp.ContentLength, resp.TransferEncoding)
	}
	resp, body = get("HEAD", "/big", nil, 0)
	if resp.StatusCode != 200 || body != "" {
		t.Errorf("HEAD /big: %d %q", resp.StatusCode, body)
	}
	resp, body = get("PUT", "/echo", strings.NewReader(big), int64(len(big)))
	if body != big || resp.Header.Get("X-Length") != strconv.Itoa(len(big)) {
		t.Errorf("PUT /echo with a length: %d bytes back, X-Length %q", len(body), resp.Header.Get("X-Length"))
	}
	resp, body = get("POST", "/echo", io.MultiReader(strings.NewReader(big)), -1) // unknown length: chunked
	if body != big || resp.Header.Get("X-Length") != "-1" {
		t.Errorf("POST /echo chunked: %d bytes back, X-Length %q", len(body), resp.Header.Get("X-Length"))
	}
	resp, body = get("GET", "/empty", nil, 0)
	if resp.StatusCode != 204 || body != "" {
		t.Errorf("/empty: %d %q", resp.StatusCode, body)
	}
	resp, body = get("GET", "/nowhere", nil, 0)
	if resp.StatusCode != 404 || body != "404 page not found\n" {
		t.Errorf("/nowhere: %d %q", resp.StatusCode, body)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d connections for 7 requests, want 1 kept alive", n)
	}
}

// TestUnreadBodyKeepsConnection: a handler that ignores a small body does
// not break the next request on the connection.
func TestUnreadBodyKeepsConnection(t *testing.T) {
	addr, _ := serve(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		io.WriteString(w, r.URL.Path)
	})
	got := rawExchange(t, addr, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"+
		"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	want := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n/a" +
		"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n/b"
	if got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}

// TestMalformedRequest gets a 400 and a closed connection.
func TestMalformedRequest(t *testing.T) {
	called := false
	addr, _ := serve(t, func(w minihttp.ResponseWriter, r *minihttp.Request) { called = true })
	got := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 400 Bad Request\r\n") || !strings.Contains(got, "Connection: close\r\n") {
		t.Errorf("got %q", got)
	}
	got = rawExchange(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 501 Not Implemented\r\n") {
		t.Errorf("got %q", got)
	}
	if called {
		t.Error("the handler ran for a malformed request")
	}
}

// TestHijack: what the client sends right after the header (the exec
// stream's first frame, in the same write) reaches the handler through the
// hijacked reader, and the handler owns the connection.
func TestHijack(t *testing.T) {
	addr, _ := serve(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		conn, brw, err := w.(minihttp.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		line, _ := brw.Reader.ReadString('\n')
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\n\r\necho "+line)
		if _, err := w.Write([]byte("x")); !errors.Is(err, minihttp.ErrHijacked) {
			t.Errorf("Write after Hijack: %v", err)
		}
	})
	got := rawExchange(t, addr, "POST /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\nContent-Length: 0\r\n\r\nframe one\n")
	if want := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\n\r\necho frame one\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestAbortHandler cuts the response short: the client sees a broken body,
// not a complete one.
func TestAbortHandler(t *testing.T) {
	addr, _ := serve(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		w.Header().Set("Content-Length", "100000")
		w.Write(make([]byte, 10000)) // more than the write buffer: the header goes out
		panic(minihttp.ErrAbortHandler)
	})
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("aborted response read to its end without an error")
	}
}

// TestExpectContinue: a client that waits for 100 Continue gets it when
// the handler reads the body.
func TestExpectContinue(t *testing.T) {
	addr, _ := serve(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("got %q, %v; want the 100 before sending the body", line, err)
	}
	br.ReadString('\n')
	io.WriteString(c, "abc")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "abc" {
		t.Errorf("got %d %q", resp.StatusCode, b)
	}
}

// TestShutdown closes connections that never sent a request at once and
// waits for a request in flight to be answered.
func TestShutdown(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	addr, srv := serve(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		close(started)
		<-release
		io.WriteString(w, "done")
	})
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	busy, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	io.WriteString(busy, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	<-started
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()

	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); err == nil {
		t.Errorf("the fresh connection got %d bytes instead of being closed", n)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	busy.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(busy), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "done" || !resp.Close {
		t.Errorf("in-flight request got %q (close %v), want done and Connection: close", b, resp.Close)
	}
}

// TestShutdownLeavesHijacked: a hijacked connection (an exec stream) is the
// handler's; Shutdown does not wait for it.
func TestShutdownLeavesHijacked(t *testing.T) {
	hijacked := make(chan net.Conn, 1)
	release := make(chan struct{})
	addr, srv := serve(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		conn, _, err := w.(minihttp.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		hijacked <- conn
		<-release
	})
	defer close(release)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
	conn := <-hijacked
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a hijacked connection: %v", err)
	}
	if _, err := io.WriteString(conn, "still mine"); err != nil {
		t.Fatalf("the hijacked connection was closed by Shutdown: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 10)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "still mine" {
		t.Errorf("client read %q, %v", b, err)
	}
}

// TestFileBodyThroughReadFrom: a handler that io.Copy's a file of declared
// length (as the agent's file download does) hands it to the connection's
// ReadFrom (sendfile for a file), and the client gets the exact bytes, on a
// connection it keeps for the next request; a source longer than the
// declared length sends only the declared bytes.
func TestFileBodyThroughReadFrom(t *testing.T) {
	data := make([]byte, 3<<20+123)
	for i := range data {
		data[i] = byte(i*7 + i/4096)
	}
	path := t.TempDir() + "/f"
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var fast atomic.Bool
	addr, _ := serve(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		_, ok := w.(io.ReaderFrom)
		fast.Store(ok)
		f, err := os.Open(path)
		if err != nil {
			minihttp.Error(w, err.Error(), minihttp.StatusInternalServerError)
			return
		}
		defer f.Close()
		size := int64(len(data))
		if r.URL.Path == "/short" {
			size = 1000 // the file has more: only 1000 bytes may go out
		}
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		if n, err := io.Copy(w, f); n != size {
			t.Errorf("io.Copy: %d bytes, %v (want %d)", n, err, size)
		}
	})
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	for _, c := range []struct {
		path string
		want []byte
	}{{"/file", data}, {"/short", data[:1000]}, {"/file", data}} {
		resp, err := client.Get("http://" + addr + c.path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, c.want) {
			t.Fatalf("%s: %d bytes (err %v), want %d identical bytes", c.path, len(got), err, len(c.want))
		}
	}
	if !fast.Load() {
		t.Error("the ResponseWriter is no io.ReaderFrom: io.Copy of a file goes through 32 KiB writes instead of sendfile")
	}
}

// TestFileBodyToSlowReader: a file sent to a client that reads slowly
// (the server's sendfile waits for room in the socket, switched to
// blocking mode meanwhile) arrives byte-exact, and the connection is
// non-blocking again after it: the idle timeout still ends it. A client
// that goes away mid-file ends the handler's copy with an error.
func TestFileBodyToSlowReader(t *testing.T) {
	data := make([]byte, 8<<20+5)
	for i := range data {
		data[i] = byte(i*13 + i/65536)
	}
	path := t.TempDir() + "/f"
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	copied := make(chan error, 4)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &minihttp.Server{IdleTimeout: 100 * time.Millisecond, ErrorLog: log.New(io.Discard, "", 0),
		Handler: minihttp.HandlerFunc(func(w minihttp.ResponseWriter, r *minihttp.Request) {
			f, err := os.Open(path)
			if err != nil {
				minihttp.Error(w, err.Error(), minihttp.StatusInternalServerError)
				return
			}
			defer f.Close()
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			n, err := io.Copy(w, io.LimitReader(f, int64(len(data)))) // as the agent's file read
			if err == nil && n != int64(len(data)) {
				err = fmt.Errorf("copied %d bytes of %d", n, len(data))
			}
			copied <- err
		})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	dial := func() (*net.TCPConn, *bufio.Reader) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		tc := c.(*net.TCPConn)
		tc.SetReadBuffer(16 << 10) // the server's sends fill it at once
		if _, err := io.WriteString(c, "GET /f HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second)) // a safety net, not a timing assertion
		br := bufio.NewReaderSize(c, 4<<10)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 || resp.ContentLength != int64(len(data)) {
			t.Fatalf("response %+v, %v", resp, err)
		}
		return tc, br
	}

	c, br := dial()
	got := make([]byte, 0, len(data))
	buf := make([]byte, 8<<10)
	for i := 0; len(got) < len(data); i++ {
		n, err := br.Read(buf[:min(len(buf), len(data)-len(got))])
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		if i%64 == 0 {
			time.Sleep(time.Millisecond) // let the server's sends run into a full socket
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the file arrived changed")
	}
	if err := <-copied; err != nil {
		t.Fatalf("server: %v", err)
	}
	// The server waits for the next request with a read deadline, which
	// a socket left blocking would never honour.
	if n, err := br.Read(buf); err != io.EOF {
		t.Fatalf("idle connection: read %d bytes, %v; want the server to close it", n, err)
	}
	c.Close()

	// A client that reads a little and goes away.
	c, br = dial()
	if _, err := io.ReadFull(br, buf); err != nil {
		t.Fatal(err)
	}
	c.SetLinger(0)
	c.Close()
	if err := <-copied; err == nil {
		t.Fatal("the server's copy to a closed connection succeeded")
	}
}

// TestEarlyAnswerToLargeUpload: a handler that refuses an upload without
// reading it (as the agent's 507 for a file that does not fit) gets its
// answer to Go's client, which is still sending the body, instead of the
// client seeing "connection reset by peer"; the answer says the connection
// closes.
func TestEarlyAnswerToLargeUpload(t *testing.T) {
	addr, _ := serve(t, func(w minihttp.ResponseWriter, r *minihttp.Request) {
		minihttp.Error(w, "no space", minihttp.StatusInsufficientStorage)
	})
	body := bytes.Repeat([]byte("x"), 64<<20)
	for i := 0; i < 5; i++ {
		resp, err := http.Post("http://"+addr+"/upload", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("upload %d: %v (want the 507 answer)", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != minihttp.StatusInsufficientStorage || !resp.Close {
			t.Fatalf("upload %d: %d %q, close %v; want 507 with Connection: close", i, resp.StatusCode, b, resp.Close)
		}
	}
}
