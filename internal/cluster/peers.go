package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// ForkHerePath is the node-to-node request that makes a fork's children
// that another node placed on this one (POST, {"children": [...]}).
const ForkHerePath = "/fork/here" // after /sandboxes/{id}

// Peers places new sandboxes on the cluster's nodes and asks other nodes
// to make the ones placed on them, as the client whose request this is:
// its credentials go with the request, and the other node checks them.
type Peers struct {
	self   string
	dir    Directory
	lease  time.Duration
	client *http.Client

	mu  sync.Mutex
	rnd *rand.Rand
}

// NewPeers returns the peers of the node named self.
func NewPeers(self string, dir Directory, lease time.Duration) *Peers {
	return &Peers{self: self, dir: dir, lease: lease, rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		client: &http.Client{Transport: &http.Transport{
			Proxy:       nil, // nodes talk to each other directly
			DialContext: (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		}}}
}

// Place picks a node for each of count new sandboxes of memMiB
// (PlaceEach over the registered nodes).
func (p *Peers) Place(ctx context.Context, memMiB int64, count int) ([]string, error) {
	nodes, err := p.dir.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	placed, err := PlaceEach(nodes, time.Now(), p.lease, memMiB, count, p.rnd)
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}
	names := make([]string, len(placed))
	for i, n := range placed {
		names[i] = n.Name
	}
	return names, nil
}

// Fork asks node to make children (sent as {"children": children}) of
// paused sandbox id, with the client's auth headers, and returns the
// access tokens of those it made by ID, with an error unless it made them
// all. The tokens are nil when the answer was lost: the node may have
// made some.
func (p *Peers) Fork(ctx context.Context, auth http.Header, node, id string, children any) (map[string]string, error) {
	body, err := json.Marshal(map[string]any{"children": children})
	if err != nil {
		return nil, err
	}
	resp, err := p.do(ctx, auth, node, http.MethodPost, "/sandboxes/"+id+ForkHerePath, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("node %s: reading its answer: %w", node, err)
	}
	if resp.StatusCode != http.StatusCreated {
		return map[string]string{}, answerError(node, resp.StatusCode, raw)
	}
	var out struct {
		Sandboxes []struct {
			ID    string `json:"id"`
			Token string `json:"access_token"`
		} `json:"sandboxes"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("node %s: bad answer: %w", node, err)
	}
	tokens := make(map[string]string, len(out.Sandboxes))
	for _, sb := range out.Sandboxes {
		tokens[sb.ID] = sb.Token
	}
	if out.Error != "" {
		return tokens, fmt.Errorf("node %s: %s", node, out.Error)
	}
	return tokens, nil
}

// Delete deletes sandbox id through node; one that is not there is fine.
func (p *Peers) Delete(ctx context.Context, auth http.Header, node, id string) error {
	resp, err := p.do(ctx, auth, node, http.MethodDelete, "/sandboxes/"+id, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotFound {
		return nil
	}
	return answerError(node, resp.StatusCode, raw)
}

// do sends a request to node, marked forwarded so that node serves it
// itself, with the client's credentials.
func (p *Peers) do(ctx context.Context, auth http.Header, node, method, path string, body []byte) (*http.Response, error) {
	base, err := p.url(ctx, node)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, v := range auth {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(ForwardedHeader, p.self)
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("node %s did not answer: %w", node, err)
	}
	return resp, nil
}

func (p *Peers) url(ctx context.Context, node string) (string, error) {
	nodes, err := p.dir.Nodes(ctx)
	if err != nil {
		return "", err
	}
	for _, n := range nodes {
		if n.Name == node && n.URL != "" {
			return strings.TrimRight(n.URL, "/"), nil
		}
	}
	return "", fmt.Errorf("node %s is not registered or has no advertise URL", node)
}

// answerError is the error a node answered with.
func answerError(node string, status int, raw []byte) error {
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Error.Code != "" {
		return fmt.Errorf("node %s: %d %s: %s", node, status, e.Error.Code, e.Error.Message)
	}
	return fmt.Errorf("node %s: HTTP %d", node, status)
}
