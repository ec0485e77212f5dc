package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// previewApp is a web app run inside a sandbox (python3, stasis/base) on
// port 8000:
//
//	GET /         "hello from preview host=<Host>"
//	GET /stream   "first\n", then, once /release was requested, "second\n"
//	GET /release  lets /stream finish
//	GET /ws       a WebSocket that answers every text message with "echo:" + it
const previewApp = `
import base64, hashlib, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
release = threading.Event()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, body):
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        if self.path == "/":
            self.reply(("hello from preview host=" + self.headers.get("Host", "")).encode())
        elif self.path == "/stream":
            self.send_response(200); self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
            def chunk(b):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b)); self.wfile.flush()
            chunk(b"first\n"); release.wait(60); chunk(b"second\n")
            self.wfile.write(b"0\r\n\r\n"); self.wfile.flush()
        elif self.path == "/release":
            release.set(); self.reply(b"ok")
        elif self.path == "/ws":
            acc = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            self.send_response(101); self.send_header("Upgrade", "websocket"); self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", acc); self.end_headers(); self.wfile.flush()
            while True:
                h = self.rfile.read(2)
                if len(h) < 2: return
                op, n = h[0] & 0x0f, h[1] & 0x7f
                if n == 126: n = int.from_bytes(self.rfile.read(2), "big")
                mask = self.rfile.read(4)
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
                if op == 8: return
                out = b"echo:" + data
                self.wfile.write(bytes([0x81, len(out)]) + out); self.wfile.flush()
    def log_message(self, *a): pass
ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
`

// previewGet sends a request for a preview host to stasisd's listener.
func previewGet(t *testing.T, srv *testenv.Server, host, path string, hdr map[string]string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+path, nil)
	req.Host = host
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 60 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s%s: %v", host, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func startPreviewApp(t *testing.T, c *client, srv *testenv.Server, host string) {
	t.Helper()
	c.writeFile("/tmp/app.py", []byte(previewApp))
	c.sh("python3 /tmp/app.py >/tmp/app.log 2>&1 &")
	for range 100 {
		if st, _, _ := previewGet(t, srv, host, "/", nil); st == http.StatusOK {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the app never answered: %s", c.exec("cat /tmp/app.log").Stdout)
}

// TestPreviewURL: a server in the sandbox is reachable at
// {port}-{id}.sandbox.localhost on stasisd's listener: plain HTTP, a
// streamed response and a WebSocket; a paused sandbox is woken by a
// request; clear pages when nothing listens or the sandbox is unknown.
func TestPreviewURL(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := create(t, srv, map[string]any{"name": "web", "from_template": "stasis/base"})
	host := "8000-" + c.id + ".sandbox.localhost"

	// Nothing listens yet: a 502 page that says so.
	st, body, _ := previewGet(t, srv, host, "/", nil)
	if st != http.StatusBadGateway || !strings.Contains(body, "listening on port 8000") {
		t.Fatalf("nothing listening: %d %q", st, body)
	}
	startPreviewApp(t, c, srv, host)
	st, body, _ = previewGet(t, srv, host, "/", nil)
	if st != http.StatusOK || body != "hello from preview host="+host {
		t.Fatalf("GET /: %d %q", st, body)
	}

	// A streamed response: the first chunk arrives while the app still
	// holds the second back (it waits for /release).
	req, _ := http.NewRequest("GET", srv.URL+"/stream", nil)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(resp.Body)
	if line, err := rd.ReadString('\n'); line != "first\n" {
		t.Fatalf("first chunk: %q %v", line, err)
	}
	if st, body, _ := previewGet(t, srv, host, "/release", nil); st != http.StatusOK || body != "ok" {
		t.Fatalf("release: %d %q", st, body)
	}
	if rest, _ := io.ReadAll(rd); string(rest) != "second\n" {
		t.Fatalf("rest of the stream: %q", rest)
	}
	resp.Body.Close()

	// A WebSocket echo.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", &websocket.DialOptions{Host: host})
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	for _, msg := range []string{"hello", "again"} {
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, got, err := ws.Read(ctx); err != nil || string(got) != "echo:"+msg {
			t.Fatalf("websocket echo: %q %v", got, err)
		}
	}
	ws.Close(websocket.StatusNormalClosure, "")

	// Ports below 1024 are not served; unknown sandboxes are 404; hosts
	// outside the preview domain are the API.
	if st, _, _ := previewGet(t, srv, "80-"+c.id+".sandbox.localhost", "/", nil); st != http.StatusBadRequest {
		t.Fatalf("port 80: %d", st)
	}
	if st, body, _ := previewGet(t, srv, "8000-00000000-0000-4000-8000-000000000000.sandbox.localhost", "/", nil); st != http.StatusNotFound || !strings.Contains(body, "No such sandbox") {
		t.Fatalf("unknown sandbox: %d %q", st, body)
	}
	if st, body, _ := previewGet(t, srv, "example.localhost", "/health", nil); st != http.StatusOK || !strings.Contains(body, "ok") {
		t.Fatalf("API through another host: %d %q", st, body)
	}

	// A request to a paused sandbox wakes it and is served.
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	if s := getInfo(t, srv, c.id).Status; s != "paused" {
		t.Fatalf("status after pause: %s", s)
	}
	st, body, _ = previewGet(t, srv, host, "/", nil)
	if st != http.StatusOK || body != "hello from preview host="+host {
		t.Fatalf("GET / of a paused sandbox: %d %q", st, body)
	}
	if s := getInfo(t, srv, c.id).Status; s != "active" {
		t.Fatalf("status after a preview request: %s", s)
	}

	// Deleted: 404.
	if err := srv.Do("DELETE", "/sandboxes/"+c.id, nil, nil); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := previewGet(t, srv, host, "/", nil); st != http.StatusNotFound {
		t.Fatalf("deleted sandbox: %d", st)
	}
}

// TestPreviewPrivate: a sandbox with preview_private needs its access
// token, as a header or as the cookie a one-time link sets.
func TestPreviewPrivate(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := create(t, srv, map[string]any{"name": "private", "from_template": "stasis/base", "preview_private": true})
	if !sb.PreviewPrivate {
		t.Fatalf("create answered preview_private false")
	}
	host := "8000-" + c.id + ".sandbox.localhost"
	c.writeFile("/tmp/app.py", []byte(previewApp))
	c.sh("python3 /tmp/app.py >/tmp/app.log 2>&1 &")
	tok := map[string]string{"X-Access-Token": c.token}
	for i := 0; ; i++ {
		if st, _, _ := previewGet(t, srv, host, "/", tok); st == http.StatusOK {
			break
		}
		if i == 100 {
			t.Fatal("the app never answered")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st, body, _ := previewGet(t, srv, host, "/", nil); st != http.StatusUnauthorized || !strings.Contains(body, "private") {
		t.Fatalf("no token: %d %q", st, body)
	}
	if st, _, _ := previewGet(t, srv, host, "/", map[string]string{"X-Access-Token": "sst_wrong"}); st != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", st)
	}

	var link struct{ URL, Link string }
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/preview-link", map[string]any{"port": 8000}, &link); err != nil {
		t.Fatal(err)
	}
	wantURL := "http://" + host + ":" + strings.Split(srv.URL, ":")[2] + "/"
	if link.URL != wantURL || !strings.HasPrefix(link.Link, wantURL+"?") {
		t.Fatalf("preview-link answered %+v, want URL %s", link, wantURL)
	}
	path := strings.TrimPrefix(link.Link, strings.TrimSuffix(wantURL, "/"))
	st, _, hdr := previewGet(t, srv, host, path, nil)
	cookie := hdr.Get("Set-Cookie")
	if st != http.StatusFound || !strings.HasPrefix(cookie, "stasis_preview=") || !strings.Contains(cookie, "HttpOnly") {
		t.Fatalf("one-time link: %d, cookie %q", st, cookie)
	}
	cv := strings.SplitN(strings.SplitN(cookie, ";", 2)[0], "=", 2)[1]
	if st, body, _ := previewGet(t, srv, host, "/", map[string]string{"Cookie": "stasis_preview=" + cv}); st != http.StatusOK || !strings.HasPrefix(body, "hello from preview") {
		t.Fatalf("with the cookie: %d %q", st, body)
	}
	if st, _, _ := previewGet(t, srv, host, path, nil); st != http.StatusUnauthorized {
		t.Fatalf("the link a second time: %d", st)
	}
	// Another sandbox's cookie is no good here.
	other, _ := create(t, srv, map[string]any{"name": "other", "from_template": "stasis/minimal", "preview_private": true})
	otherHost := fmt.Sprintf("8000-%s.sandbox.localhost", other.id)
	if st, _, _ := previewGet(t, srv, otherHost, "/", map[string]string{"Cookie": "stasis_preview=" + cv}); st != http.StatusUnauthorized {
		t.Fatalf("a cookie of another sandbox: %d", st)
	}
	// Made public by PATCH: no token needed.
	if err := srv.Do("PATCH", "/sandboxes/"+c.id, map[string]any{"preview_private": false}, nil); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := previewGet(t, srv, host, "/", nil); st != http.StatusOK {
		t.Fatalf("public again: %d", st)
	}
}
