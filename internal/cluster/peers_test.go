package cluster

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// peerNode is another node's API over real HTTP: it records what a fork
// request carried and answers as told.
type peerNode struct {
	srv    *httptest.Server
	got    http.Header
	body   string
	status int
	answer string
}

func newPeerNode(t *testing.T) *peerNode {
	p := &peerNode{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		p.got, p.body = r.Header.Clone(), r.Method+" "+r.URL.Path+" "+string(b)
		w.WriteHeader(p.status)
		io.WriteString(w, p.answer)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func peersOver(nodes ...Candidate) *Peers {
	dir := &fakeDirectory{nodes: map[string]*Candidate{}}
	for i := range nodes {
		dir.nodes[nodes[i].Name] = &nodes[i]
	}
	return NewPeers("a", dir, time.Minute)
}

func TestPeersForkSendsTheChildrenAsTheClient(t *testing.T) {
	b := newPeerNode(t)
	p := peersOver(Candidate{Name: "b", URL: b.srv.URL + "/", State: StateActive})
	b.status, b.answer = http.StatusCreated,
		`{"sandboxes":[{"id":"c1","access_token":"t1","node":"b"},{"id":"c2","access_token":"t2"}]}`
	auth := http.Header{"X-Api-Key": {"client-key"}}
	tokens, err := p.Fork(context.Background(), auth, "b", "src", []map[string]any{{"id": "c1", "index": 1}, {"id": "c2", "index": 2}})
	if err != nil || tokens["c1"] != "t1" || tokens["c2"] != "t2" || len(tokens) != 2 {
		t.Fatalf("Fork = %v, %v", tokens, err)
	}
	if want := `POST /sandboxes/src/fork/here {"children":[{"id":"c1","index":1},{"id":"c2","index":2}]}`; b.body != want {
		t.Errorf("node b got %s, want %s", b.body, want)
	}
	if b.got.Get("X-API-Key") != "client-key" || b.got.Get(ForwardedHeader) != "a" {
		t.Errorf("node b got key %q forwarded-by %q; want the client's key, marked forwarded by a",
			b.got.Get("X-API-Key"), b.got.Get(ForwardedHeader))
	}
}

func TestPeersForkReportsWhatTheNodeDidNotMake(t *testing.T) {
	b := newPeerNode(t)
	p := peersOver(Candidate{Name: "b", URL: b.srv.URL, State: StateActive})

	// Some made: those, and the node's reason for the rest.
	b.status, b.answer = http.StatusCreated, `{"sandboxes":[{"id":"c1","access_token":"t1"}],"error":"start c2 from snapshot: boom"}`
	tokens, err := p.Fork(context.Background(), nil, "b", "src", nil)
	if len(tokens) != 1 || err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("partial fork = %v, %v; want c1 and the reason", tokens, err)
	}
	// None made: an answer (tokens not nil: nothing to clean up) with its error.
	b.status, b.answer = http.StatusConflict, `{"error":{"code":"snapshot_not_portable","message":"not in the object store"}}`
	tokens, err = p.Fork(context.Background(), nil, "b", "src", nil)
	if tokens == nil || len(tokens) != 0 || err == nil || !strings.Contains(err.Error(), "409 snapshot_not_portable: not in the object store") {
		t.Errorf("refused fork = %#v, %v", tokens, err)
	}
	// No answer at all: tokens nil, the node may have made some.
	b.srv.Close()
	tokens, err = p.Fork(context.Background(), nil, "b", "src", nil)
	if tokens != nil || err == nil || !strings.Contains(err.Error(), "node b did not answer") {
		t.Errorf("fork on a dead node = %#v, %v; want nil tokens and an error", tokens, err)
	}
	if _, err := p.Fork(context.Background(), nil, "zz", "src", nil); err == nil || !strings.Contains(err.Error(), "node zz is not registered") {
		t.Errorf("fork on an unknown node: %v", err)
	}
}

func TestPeersDeleteAcceptsAGoneSandbox(t *testing.T) {
	b := newPeerNode(t)
	p := peersOver(Candidate{Name: "b", URL: b.srv.URL, State: StateActive})
	for _, status := range []int{http.StatusNoContent, http.StatusNotFound} {
		b.status = status
		if err := p.Delete(context.Background(), nil, "b", "c1"); err != nil {
			t.Errorf("delete answered %d: %v", status, err)
		}
	}
	if b.body != "DELETE /sandboxes/c1 " {
		t.Errorf("node b got %q", b.body)
	}
	b.status, b.answer = http.StatusServiceUnavailable, `{"error":{"code":"store_unavailable","message":"retry"}}`
	if err := p.Delete(context.Background(), nil, "b", "c1"); err == nil {
		t.Error("delete answered 503: no error")
	}
}

func TestPeersPlaceSkipsTheDrainingNode(t *testing.T) {
	now := time.Now()
	p := peersOver(
		Candidate{Name: "a", State: StateDraining, MemFreeMiB: 1 << 20, HeartbeatAt: now},
		Candidate{Name: "b", State: StateActive, MemFreeMiB: 4096, HeartbeatAt: now},
		Candidate{Name: "c", State: StateActive, MemFreeMiB: 4096, HeartbeatAt: now},
	)
	names, err := p.Place(context.Background(), 256, 6)
	if err != nil || len(names) != 6 {
		t.Fatalf("Place = %v, %v", names, err)
	}
	for _, n := range names {
		if n == "a" {
			t.Fatalf("Place put a child on the draining node: %v", names)
		}
	}
}
