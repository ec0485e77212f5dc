package stasis

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/coder/websocket"
)

// wsExecServer plays /exec/connect: it behaves like `cat` on the command
// "cat" (echoing stdin on stdout, "E:"-prefixed on stderr), answers
// signals with exit 128+n, and records control frames.
type wsExecServer struct {
	t       *testing.T
	token   string // the valid access token
	rejects atomic.Int32

	mu       sync.Mutex
	start    map[string]any
	controls []map[string]any
	closed   chan struct{}
}

func (s *wsExecServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/sandboxes/sb1/activate" {
		s.token = "fresh"
		writeJSON(w, 200, sandboxJSON("sb1", s.token))
		return
	}
	if r.URL.Path != "/exec/connect" {
		s.t.Errorf("unexpected %s", r.URL.Path)
		return
	}
	if r.Header.Get("X-Superserve-Sandbox-Id") != "sb1" {
		s.t.Errorf("no sandbox id header on upgrade")
	}
	protos := r.Header.Get("Sec-WebSocket-Protocol")
	if !strings.Contains(protos, "superserve.exec.v1") {
		s.t.Errorf("subprotocols %q", protos)
	}
	if !strings.Contains(protos, "token."+s.token) {
		s.rejects.Add(1)
		writeErr(w, 401, "unauthorized", "bad token")
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"superserve.exec.v1"}})
	if err != nil {
		s.t.Error(err)
		return
	}
	defer close(s.closed)
	defer c.CloseNow()
	ctx := r.Context()
	typ, msg, err := c.Read(ctx)
	if err != nil || typ != websocket.MessageText {
		s.t.Errorf("start frame: %v %v", typ, err)
		return
	}
	var start map[string]any
	json.Unmarshal(msg, &start)
	s.mu.Lock()
	s.start = start
	s.mu.Unlock()
	finish := func(code int) {
		b, _ := json.Marshal(map[string]any{"finished": true, "exit_code": code})
		c.Write(ctx, websocket.MessageText, b)
		c.Close(websocket.StatusNormalClosure, "")
	}
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return
		}
		if typ == websocket.MessageBinary {
			if msg[0] != chanStdin {
				s.t.Errorf("client sent channel %d", msg[0])
			}
			c.Write(ctx, websocket.MessageBinary, append([]byte{chanStdout}, msg[1:]...))
			c.Write(ctx, websocket.MessageBinary, append([]byte{chanStderr, 'E', ':'}, msg[1:]...))
			continue
		}
		var ctl map[string]any
		json.Unmarshal(msg, &ctl)
		s.mu.Lock()
		s.controls = append(s.controls, ctl)
		s.mu.Unlock()
		switch ctl["type"] {
		case "stdin_close":
			finish(0)
			return
		case "signal":
			switch ctl["name"] {
			case "SIGTERM":
				finish(143)
				return
			case "SIGKILL":
				finish(137)
				return
			}
		}
	}
}

func newWSServer(t *testing.T) (*wsExecServer, *Sandbox) {
	ws := &wsExecServer{t: t, token: "tok", closed: make(chan struct{})}
	srv := httptest.NewServer(ws)
	t.Cleanup(srv.Close)
	c, _ := newTestClient(t, srv.URL)
	sb, err := c.newSandbox(sandboxWireFor("sb1", "tok"), "test")
	if err != nil {
		t.Fatal(err)
	}
	return ws, sb
}

func sandboxWireFor(id, tok string) sandboxWire {
	return sandboxWire{ID: id, Status: StatusActive, AccessToken: tok}
}

func TestSpawnStdinRoundTrip(t *testing.T) {
	ws, sb := newWSServer(t)
	var mu sync.Mutex
	var out, errOut bytes.Buffer
	sess, err := sb.Commands.Spawn(context.Background(), "cat", &SpawnOptions{
		Dir: "/tmp", Env: map[string]string{"K": "v"},
		OnStdout: func(p []byte) { mu.Lock(); out.Write(p); mu.Unlock() },
		OnStderr: func(p []byte) { mu.Lock(); errOut.Write(p); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	big := bytes.Repeat([]byte("z"), 3*stdinChunk+5) // split into 4 frames
	if _, err := sess.Stdin.Write([]byte("hello ")); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Stdin.Write(big); err != nil {
		t.Fatal(err)
	}
	if err := sess.Stdin.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := sess.Wait(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := "hello " + string(big)
	if res.ExitCode != 0 || res.Stdout != want || !strings.HasPrefix(res.Stderr, "E:hello E:zzz") {
		t.Fatalf("exit=%d stdout=%d bytes stderr=%.20q", res.ExitCode, len(res.Stdout), res.Stderr)
	}
	mu.Lock()
	if out.String() != want {
		t.Fatalf("callback saw %d bytes", out.Len())
	}
	mu.Unlock()
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.start["command"] != "cat" || ws.start["working_dir"] != "/tmp" || ws.start["env"].(map[string]any)["K"] != "v" {
		t.Fatalf("start frame %v", ws.start)
	}
	if _, ok := ws.start["pty"]; ok {
		t.Fatal("pty sent without PTY option")
	}
	// The session is over: writes fail cleanly.
	if _, err := sess.Stdin.Write([]byte("late")); err == nil {
		t.Fatal("write after finish succeeded")
	}
}

func TestSpawnSignalAndResize(t *testing.T) {
	ws, sb := newWSServer(t)
	sess, err := sb.Commands.Spawn(context.Background(), "sh", &SpawnOptions{PTY: &PTYSize{Cols: 80, Rows: 24}})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.Resize(context.Background(), 120, 40); err != nil {
		t.Fatal(err)
	}
	if err := sess.Signal(context.Background(), "term"); err != nil {
		t.Fatal(err)
	}
	res, err := sess.Wait(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 143 {
		t.Fatalf("exit %d", res.ExitCode)
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	pty := ws.start["pty"].(map[string]any)
	if pty["cols"] != 80.0 || pty["rows"] != 24.0 {
		t.Fatalf("pty %v", pty)
	}
	if len(ws.controls) != 2 || ws.controls[0]["type"] != "resize" || ws.controls[0]["cols"] != 120.0 ||
		ws.controls[1]["type"] != "signal" || ws.controls[1]["name"] != "SIGTERM" {
		t.Fatalf("controls %v", ws.controls)
	}
}

func TestSpawnRefreshesTokenOnDial(t *testing.T) {
	ws, sb := newWSServer(t)
	ws.token = "rotated-elsewhere"
	sess, err := sb.Commands.Spawn(context.Background(), "cat", nil)
	if err != nil {
		t.Fatal(err)
	}
	sess.Stdin.Close()
	if _, err := sess.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ws.rejects.Load() != 1 || sb.accessToken() != "fresh" {
		t.Fatalf("rejects=%d token=%q", ws.rejects.Load(), sb.accessToken())
	}
}

func TestSpawnContextCancelKills(t *testing.T) {
	ws, sb := newWSServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	sess, err := sb.Commands.Spawn(ctx, "cat", nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	_, err = sess.Wait(context.Background())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	<-ws.closed
	ws.mu.Lock()
	defer ws.mu.Unlock()
	// The kill is best effort; when it went out, it was SIGKILL.
	for _, c := range ws.controls {
		if c["type"] == "signal" && c["name"] != "SIGKILL" {
			t.Fatalf("controls %v", ws.controls)
		}
	}
	sess.Close() // idempotent after the end
}

func TestSpawnConnectionLost(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"superserve.exec.v1"}})
		if err != nil {
			return
		}
		c.Read(r.Context())
		c.Write(r.Context(), websocket.MessageBinary, []byte{chanStdout, 'x'})
		c.Close(websocket.StatusInternalError, "agent went away")
	}))
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	sb, _ := c.newSandbox(sandboxWireFor("sb1", "tok"), "test")
	sess, err := sb.Commands.Spawn(context.Background(), "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sess.Wait(context.Background())
	if err == nil || !strings.Contains(err.Error(), "before the command finished") {
		t.Fatalf("got %v", err)
	}
}
