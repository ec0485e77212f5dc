package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// fakeDirectory is an in-memory store view.
type fakeDirectory struct {
	mu     sync.Mutex
	owners map[string]string
	nodes  map[string]*Candidate
	reads  int // Owner calls
}

func (d *fakeDirectory) Owner(_ context.Context, id string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reads++
	o, ok := d.owners[id]
	if !ok {
		return "", ErrUnknownSandbox
	}
	return o, nil
}

func (d *fakeDirectory) Nodes(context.Context) ([]Candidate, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Candidate
	for _, n := range d.nodes {
		out = append(out, *n)
	}
	return out, nil
}

func (d *fakeDirectory) move(id, to string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.owners[id] = to
}

// ownerOf is Owner without counting: the owner's own check.
func (d *fakeDirectory) ownerOf(id string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.owners[id]
}

func (d *fakeDirectory) ownerReads() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reads
}

func (d *fakeDirectory) set(name, state string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nodes[name].State = state
}

// testCluster runs one Router per node over real HTTP. Each node's local
// API is a stand-in that says which node served and what it was sent.
type testCluster struct {
	dir *fakeDirectory
	// refused counts, per node, forwarded requests it answered "not owner".
	refusedMu sync.Mutex
	refused   map[string]int
	urls      map[string]string
	hold      chan struct{} // the streaming handler waits on it between chunks
	sawWS     chan string
}

func sandboxHeader(r *http.Request) string { return r.Header.Get("X-Superserve-Sandbox-Id") }

// previewHost reads "<port>-<id>.preview.test" as the preview package does.
func previewHost(r *http.Request) string {
	label, ok := strings.CutSuffix(r.Host, ".preview.test")
	if !ok {
		return ""
	}
	_, id, _ := strings.Cut(label, "-")
	return id
}

func newTestCluster(t testing.TB, names ...string) *testCluster {
	t.Helper()
	c := &testCluster{
		dir:  &fakeDirectory{owners: map[string]string{}, nodes: map[string]*Candidate{}},
		urls: map[string]string{}, hold: make(chan struct{}), sawWS: make(chan string, 1),
		refused: map[string]int{},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, name := range names {
		local := http.NewServeMux()
		local.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			json.NewEncoder(w).Encode(map[string]string{
				"body": string(body),
				"node": name, "path": r.URL.Path, "query": r.URL.RawQuery, "host": r.Host,
				"api_key": r.Header.Get("X-API-Key"), "token": r.Header.Get("X-Access-Token"),
				"forwarded_by": r.Header.Get(ForwardedHeader),
			})
		})
		local.HandleFunc("POST /exec/stream", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "first from %s\n", name)
			w.(http.Flusher).Flush()
			<-c.hold
			fmt.Fprintf(w, "second from %s\n", name)
		})
		local.HandleFunc("GET /exec/connect", func(w http.ResponseWriter, r *http.Request) {
			ws, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer ws.CloseNow()
			_, msg, err := ws.Read(r.Context())
			if err != nil {
				return
			}
			ws.Write(r.Context(), websocket.MessageText, []byte(name+" got "+string(msg)))
			ws.Close(websocket.StatusNormalClosure, "")
		})
		// As the API does: a data-plane request forwarded here for a
		// sandbox this node does not own is refused before its body is read.
		checked := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if id := sandboxHeader(r); id != "" && dataPlanePaths[r.URL.Path] && r.Header.Get(ForwardedHeader) != "" {
				if owner := c.dir.ownerOf(id); owner != name {
					c.refusedMu.Lock()
					c.refused[name]++
					c.refusedMu.Unlock()
					w.Header().Set(NotOwnerHeader, "1")
					writeError(w, http.StatusMisdirectedRequest, "not_owner", "moved to "+owner)
					return
				}
			}
			local.ServeHTTP(w, r)
		})
		srv := httptest.NewUnstartedServer(nil)
		srv.Start()
		t.Cleanup(srv.Close)
		c.urls[name] = srv.URL
		c.dir.nodes[name] = &Candidate{Name: name, URL: srv.URL, State: StateActive, MemFreeMiB: 8192, HeartbeatAt: time.Now()}
		srv.Config.Handler = NewRouter(RouterConfig{
			Self: name, Directory: c.dir, Forwarder: NewForwarder(name, log), Local: checked,
			Lease: time.Minute, SandboxID: sandboxHeader, HostSandboxID: previewHost, Logger: log,
		})
	}
	return c
}

func (c *testCluster) do(t *testing.T, via, method, path string, hdr map[string]string) (*http.Response, map[string]string) {
	t.Helper()
	req, _ := http.NewRequest(method, c.urls[via]+path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s via %s: %v", method, path, via, err)
	}
	defer resp.Body.Close()
	var body map[string]string
	json.NewDecoder(resp.Body).Decode(&body)
	return resp, body
}

func TestDataPlaneIsForwardedToTheOwnerWithTheClientsCredentials(t *testing.T) {
	c := newTestCluster(t, "a", "b")
	c.dir.owners["sb1"] = "b"
	resp, body := c.do(t, "a", "POST", "/exec?x=1", map[string]string{
		"X-Superserve-Sandbox-Id": "sb1", "X-Access-Token": "tok-123"})
	if body["node"] != "b" || resp.Header.Get(NodeHeader) != "b" {
		t.Fatalf("exec for b's sandbox via a was served by %q (header %q), want b", body["node"], resp.Header.Get(NodeHeader))
	}
	if body["token"] != "tok-123" || body["forwarded_by"] != "a" || body["query"] != "x=1" || body["path"] != "/exec" {
		t.Errorf("owner saw %v: want the client's token, path and query, forwarded by a", body)
	}
	// Control-plane calls about the sandbox go to the owner too, key included.
	_, body = c.do(t, "a", "POST", "/sandboxes/sb1/pause", map[string]string{"X-API-Key": "key-1"})
	if body["node"] != "b" || body["api_key"] != "key-1" {
		t.Errorf("pause via a: served by %q with key %q, want b with key-1", body["node"], body["api_key"])
	}
	// The owner serves its own sandbox without a hop.
	_, body = c.do(t, "b", "POST", "/exec", map[string]string{"X-Superserve-Sandbox-Id": "sb1"})
	if body["node"] != "b" || body["forwarded_by"] != "" {
		t.Errorf("exec via the owner: served by %q forwarded by %q, want b directly", body["node"], body["forwarded_by"])
	}
	// Unknown sandboxes and lists are answered here (the local API says 404).
	for _, p := range []string{"/sandboxes/nope", "/sandboxes"} {
		if _, body = c.do(t, "a", "GET", p, nil); body["node"] != "a" {
			t.Errorf("GET %s via a served by %q, want a", p, body["node"])
		}
	}
	if _, body = c.do(t, "a", "GET", "/sandboxes/sb1", nil); body["node"] != "b" {
		t.Errorf("GET of b's sandbox via a served by %q, want b (only the owner knows its pause state)", body["node"])
	}
}

func TestPreviewIsForwardedToTheOwnerWithItsHost(t *testing.T) {
	c := newTestCluster(t, "a", "b")
	c.dir.owners["sb1"] = "b"
	req, _ := http.NewRequest("GET", c.urls["a"]+"/index.html", nil)
	req.Host = "8000-sb1.preview.test"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]string
	json.NewDecoder(resp.Body).Decode(&body)
	if body["node"] != "b" || body["host"] != "8000-sb1.preview.test" || body["path"] != "/index.html" {
		t.Fatalf("preview of b's sandbox via a: %v; want it served by b with the preview host and path", body)
	}
}

func TestForwardedRequestIsNeverForwardedAgain(t *testing.T) {
	c := newTestCluster(t, "a", "b")
	c.dir.owners["sb1"] = "b"
	_, body := c.do(t, "a", "GET", "/sandboxes/sb1", map[string]string{ForwardedHeader: "b"})
	if body["node"] != "a" {
		t.Fatalf("a request already forwarded was served by %q, want a (no second hop)", body["node"])
	}
	// A data-plane request is refused instead (the API checks ownership),
	// so the node that forwarded it can look again.
	resp, _ := c.do(t, "a", "POST", "/exec", map[string]string{
		"X-Superserve-Sandbox-Id": "sb1", ForwardedHeader: "b"})
	if resp.StatusCode != http.StatusMisdirectedRequest || resp.Header.Get(NodeHeader) != "a" || c.refusals("a") != 1 {
		t.Fatalf("forwarded exec to a non-owner: status %d from %q, want 421 from a", resp.StatusCode, resp.Header.Get(NodeHeader))
	}
}

func TestStreamsAreFlushedThroughTheHop(t *testing.T) {
	c := newTestCluster(t, "a", "b")
	c.dir.owners["sb1"] = "b"
	req, _ := http.NewRequest("POST", c.urls["a"]+"/exec/stream", nil)
	req.Header.Set("X-Superserve-Sandbox-Id", "sb1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	// The owner holds the second chunk until we have read the first.
	line, err := rd.ReadString('\n')
	if err != nil || line != "first from b\n" {
		t.Fatalf("first streamed line = %q, %v", line, err)
	}
	close(c.hold)
	if line, err = rd.ReadString('\n'); err != nil || line != "second from b\n" {
		t.Fatalf("second streamed line = %q, %v", line, err)
	}
}

func TestWebSocketUpgradesAreForwarded(t *testing.T) {
	c := newTestCluster(t, "a", "b", "c")
	c.dir.owners["sb1"] = "a"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, c.urls["c"]+"/exec/connect", &websocket.DialOptions{
		HTTPHeader: http.Header{"X-Superserve-Sandbox-Id": {"sb1"}}})
	if err != nil {
		t.Fatalf("WebSocket through c to a: %v", err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	_, msg, err := ws.Read(ctx)
	if err != nil || string(msg) != "a got hello" {
		t.Fatalf("WebSocket answer = %q, %v; want a's echo", msg, err)
	}
}

func TestLostOwnerServesLocallyAndResumeIsPlacedElsewhere(t *testing.T) {
	c := newTestCluster(t, "a", "b", "c")
	c.dir.owners["sb1"] = "b"
	c.dir.set("b", StateLost)
	c.dir.set("c", StateDraining)
	// Nobody to forward to: a answers (the local API fails it or deletes it).
	if _, body := c.do(t, "a", "POST", "/exec", map[string]string{"X-Superserve-Sandbox-Id": "sb1"}); body["node"] != "a" {
		t.Errorf("exec for a lost node's sandbox served by %q, want a", body["node"])
	}
	// A resume is placed on a live, non-draining node: only a is one.
	for _, via := range []string{"a", "c"} {
		if _, body := c.do(t, via, "POST", "/sandboxes/sb1/resume", nil); body["node"] != "a" {
			t.Errorf("resume via %s of a lost node's sandbox served by %q, want a (the only active node)", via, body["node"])
		}
	}
	// A draining owner still serves its sandbox's data plane, but a resume goes elsewhere.
	c.dir.owners["sb2"] = "c"
	if _, body := c.do(t, "a", "POST", "/exec", map[string]string{"X-Superserve-Sandbox-Id": "sb2"}); body["node"] != "c" {
		t.Errorf("exec for a draining node's sandbox served by %q, want c", body["node"])
	}
	if _, body := c.do(t, "c", "POST", "/sandboxes/sb2/resume", nil); body["node"] != "a" {
		t.Errorf("resume of a draining node's sandbox served by %q, want a", body["node"])
	}
}

func TestCreateGoesToAPlacedNode(t *testing.T) {
	c := newTestCluster(t, "a", "b", "c")
	c.dir.set("a", StateDraining)
	c.dir.set("c", StateLost)
	for range 5 {
		if _, body := c.do(t, "a", "POST", "/sandboxes", nil); body["node"] != "b" {
			t.Fatalf("create via a was served by %q, want b (a drains, c is lost)", body["node"])
		}
	}
}

func TestUnreachableOwnerIsABadGatewayError(t *testing.T) {
	c := newTestCluster(t, "a", "b")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	c.dir.mu.Lock()
	c.dir.nodes["b"].URL = dead
	c.dir.mu.Unlock()
	c.dir.owners["sb1"] = "b"
	req, _ := http.NewRequest("POST", c.urls["a"]+"/exec", strings.NewReader("{}"))
	req.Header.Set("X-Superserve-Sandbox-Id", "sb1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Error struct{ Code, Message string }
	}
	json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != http.StatusBadGateway || e.Error.Code != "node_unreachable" || !strings.Contains(e.Error.Message, ln.Addr().String()) {
		t.Fatalf("got %d %+v; want 502 node_unreachable naming the node", resp.StatusCode, e)
	}
}

// A resume right after its owner was drained goes elsewhere, although the
// router's node list (cached for a second) still says the owner is active.
func TestResumeSeesADrainAtOnce(t *testing.T) {
	c := newTestCluster(t, "a", "b")
	c.dir.owners["sb1"] = "b"
	if _, body := c.do(t, "a", "POST", "/exec", map[string]string{"X-Superserve-Sandbox-Id": "sb1"}); body["node"] != "b" {
		t.Fatalf("exec served by %q, want the owner b", body["node"]) // a has now cached b as active
	}
	c.dir.set("b", StateDraining)
	if _, body := c.do(t, "a", "POST", "/sandboxes/sb1/resume", nil); body["node"] != "a" {
		t.Errorf("resume just after b was drained served by %q, want a", body["node"])
	}
}

// TestSecondProtocolGoesToTheOwnersOwnListener: a second listener (E2B's)
// classifies its own requests, forwards them to the address the owner
// advertises for that protocol, and answers in that protocol's error format
// when the owner has none.
func TestSecondProtocolGoesToTheOwnersOwnListener(t *testing.T) {
	c := newTestCluster(t, "a", "b", "c")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	other := map[string]string{}
	for _, name := range []string{"a", "b", "c"} {
		local := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			json.NewEncoder(w).Encode(map[string]string{"node": name, "listener": "other", "path": r.URL.Path,
				"host": r.Host, "forwarded_by": r.Header.Get(ForwardedHeader)})
		})
		srv := httptest.NewServer(NewRouter(RouterConfig{
			Self: name, Directory: c.dir, Forwarder: NewForwarder(name, log), Local: local, Lease: time.Minute,
			Classify: func(r *http.Request) Route {
				if id := r.Header.Get("Other-Sandbox-Id"); id != "" {
					return Route{Kind: RouteOwner, Sandbox: id}
				}
				if r.Method == http.MethodPost && r.URL.Path == "/v2/sandboxes" {
					return Route{Kind: RoutePlace}
				}
				return Route{Kind: RouteLocal}
			},
			Address: func(n Candidate) string { return n.E2BURL },
			WriteError: func(w http.ResponseWriter, status int, code, msg string) {
				w.WriteHeader(status)
				json.NewEncoder(w).Encode(map[string]any{"code": status, "message": msg})
			},
			Logger: log,
		}))
		t.Cleanup(srv.Close)
		other[name] = srv.URL
	}
	c.dir.mu.Lock()
	c.dir.nodes["b"].E2BURL = other["b"]
	c.dir.nodes["c"].E2BURL = "" // c serves no second listener
	c.dir.mu.Unlock()
	c.dir.set("a", StateDraining)
	c.dir.set("c", StateDraining) // still serves its own sandboxes
	c.dir.owners["sb1"], c.dir.owners["sb2"] = "b", "c"

	do := func(method, path string, hdr http.Header) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, other["a"]+path, nil)
		req.Header = hdr
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	_, body := do("GET", "/files", http.Header{"Other-Sandbox-Id": {"sb1"}})
	if body["node"] != "b" || body["listener"] != "other" || body["forwarded_by"] != "a" {
		t.Errorf("second-protocol request for b's sandbox via a: %v; want b's own listener, forwarded by a", body)
	}
	// a and c drain: a create goes to b, on b's second listener.
	for range 5 {
		if status, body := do("POST", "/v2/sandboxes", nil); status != http.StatusOK || body["node"] != "b" || body["listener"] != "other" {
			t.Fatalf("create via a: %d %v; want b's second listener", status, body)
		}
	}
	// c owns sb2 but has no second listener: an error in this protocol's
	// format, never a request to c's other listener.
	status, body := do("GET", "/files", http.Header{"Other-Sandbox-Id": {"sb2"}})
	if status != http.StatusBadGateway || body["code"] != float64(http.StatusBadGateway) ||
		!strings.Contains(body["message"].(string), "node c does not advertise an address") {
		t.Errorf("request for c's sandbox (c has no second listener): %d %v; want 502 in the protocol's format naming c", status, body)
	}
	if _, body := do("GET", "/v2/sandboxes", nil); body["node"] != "a" {
		t.Errorf("a list via a served by %v, want a", body["node"])
	}
}

// doBody sends a data-plane request with a body via node via.
func (c *testCluster) doBody(t *testing.T, via, path, id, body string) map[string]string {
	t.Helper()
	req, _ := http.NewRequest("POST", c.urls[via]+path, strings.NewReader(body))
	req.Header.Set("X-Superserve-Sandbox-Id", id)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s via %s: %v", path, via, err)
	}
	defer resp.Body.Close()
	var out map[string]string
	json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s via %s: status %d, body %v", path, via, resp.StatusCode, out)
	}
	return out
}

func (c *testCluster) refusals(node string) int {
	c.refusedMu.Lock()
	defer c.refusedMu.Unlock()
	return c.refused[node]
}

// TestForwardingNodeRemembersTheOwner: data-plane requests through a node
// that does not run the sandbox read its owner from the store once, not
// for every request.
func TestForwardingNodeRemembersTheOwner(t *testing.T) {
	c := newTestCluster(t, "a", "b")
	c.dir.owners["sb1"] = "b"
	for i := range 3 {
		if got := c.doBody(t, "a", "/exec", "sb1", `{"command":"true"}`); got["node"] != "b" {
			t.Fatalf("exec %d via a served by %q, want b", i, got["node"])
		}
	}
	if n := c.dir.ownerReads(); n != 1 {
		t.Errorf("3 execs via a read the owner %d times (the owner's check included), want 1", n)
	}
	// Control-plane requests still read the owner every time.
	c.do(t, "a", "GET", "/sandboxes/sb1", nil)
	c.do(t, "a", "GET", "/sandboxes/sb1", nil)
	if n := c.dir.ownerReads(); n != 3 {
		t.Errorf("after 2 GETs: %d owner reads, want 3", n)
	}
}

// TestStaleOwnerStillReachesTheNewOwner: after a sandbox moves, a node that
// remembers the old owner sends the request there, is refused, reads the
// new owner and sends it again, body and all; the client sees one answer
// from the new owner.
func TestStaleOwnerStillReachesTheNewOwner(t *testing.T) {
	c := newTestCluster(t, "a", "b", "c")
	c.dir.owners["sb1"] = "b"
	if got := c.doBody(t, "a", "/exec", "sb1", `{"command":"true"}`); got["node"] != "b" {
		t.Fatalf("exec via a served by %q, want b", got["node"])
	}
	c.dir.move("sb1", "c")
	body := `{"command":"echo moved"}` + strings.Repeat(" ", 40<<10) // several transport writes
	got := c.doBody(t, "a", "/exec", "sb1", body)
	if got["node"] != "c" || got["body"] != body {
		t.Fatalf("exec via a after the move: served by %q with a %d-byte body, want c with the %d-byte body", got["node"], len(got["body"]), len(body))
	}
	if n := c.refusals("b"); n != 1 {
		t.Errorf("the old owner refused %d requests, want 1", n)
	}
	// Without a body (a file read), and now remembered: straight to c.
	resp, out := c.do(t, "a", "GET", "/files?path=/x", map[string]string{"X-Superserve-Sandbox-Id": "sb1"})
	if resp.StatusCode != http.StatusOK || out["node"] != "c" || c.refusals("b") != 1 {
		t.Errorf("file read via a: status %d served by %q (%d refusals by b), want 200 from c", resp.StatusCode, out["node"], c.refusals("b"))
	}
	// Moved to the forwarding node itself: served there.
	c.dir.move("sb1", "a")
	if got := c.doBody(t, "a", "/exec", "sb1", `{}`); got["node"] != "a" || got["forwarded_by"] != "" {
		t.Errorf("exec via a once a owns it: served by %q forwarded by %q, want a directly", got["node"], got["forwarded_by"])
	}
}

// TestLargeBodyIsRoutedByAFreshOwner: a body too large to keep a copy of
// cannot be sent twice, so its owner is read from the store every time.
func TestLargeBodyIsRoutedByAFreshOwner(t *testing.T) {
	c := newTestCluster(t, "a", "b", "c")
	c.dir.owners["sb1"] = "b"
	c.doBody(t, "a", "/files?path=/f", "sb1", "small")
	c.dir.move("sb1", "c")
	big := strings.Repeat("x", maxReplayBody+1)
	if got := c.doBody(t, "a", "/files?path=/f", "sb1", big); got["node"] != "c" || len(got["body"]) != len(big) {
		t.Fatalf("large upload via a after the move: served by %q with %d bytes, want c with %d", got["node"], len(got["body"]), len(big))
	}
	if n := c.refusals("b"); n != 0 {
		t.Errorf("the old owner was sent the large upload (%d refusals), want it routed by a fresh read", n)
	}
}
