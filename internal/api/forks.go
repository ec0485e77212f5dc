package api

import (
	"context"
	"fmt"
	"net/http"

	"github.com/stasis-sandbox/stasis/internal/cluster"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
)

// UsePeers spreads the children of forks over the cluster's nodes, as
// creates are placed (a single node has none: its forks stay on it).
func (s *Server) UsePeers(p *cluster.Peers) { s.peers = p }

// forkPeers is the cluster seen by one fork request: other nodes are asked
// with the request's own API key, so they check it and its team.
type forkPeers struct {
	p    *cluster.Peers
	auth http.Header
}

func (f forkPeers) Place(ctx context.Context, memMiB int64, count int) ([]string, error) {
	return f.p.Place(ctx, memMiB, count)
}

func (f forkPeers) Fork(ctx context.Context, node, id string, children []sandbox.ForkChild) (map[string]string, error) {
	return f.p.Fork(ctx, f.auth, node, id, children)
}

func (f forkPeers) Delete(ctx context.Context, node, id string) error {
	return f.p.Delete(ctx, f.auth, node, id)
}

// forkHere serves POST /sandboxes/{id}/fork/here, the node-to-node request
// by which the node that placed a fork's children asks this one to make
// its share of them ({children: [{id, index}]}), with the client's API key.
// Only another node sends it (it is marked forwarded).
func (s *Server) forkHere(w http.ResponseWriter, r *http.Request, teamID string) {
	if s.peers == nil || r.Header.Get(cluster.ForwardedHeader) == "" {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route for %s %s", r.Method, sandbox.Shorten(r.URL.Path)))
		return
	}
	var req struct {
		Children []sandbox.ForkChild `json:"children"`
	}
	if err := decodeJSON(w, r, &req, false); err != nil {
		s.fail(w, err)
		return
	}
	created, err := s.svc.ForkHere(r.Context(), teamID, r.PathValue("id"), req.Children)
	s.writeForks(w, r, created, err)
}

// writeForks answers a fork: 201 with the children made, and an error if
// not all were; the error alone when none was.
func (s *Server) writeForks(w http.ResponseWriter, r *http.Request, created []sandbox.Created, err error) {
	if err != nil && len(created) == 0 {
		s.fail(w, err)
		return
	}
	out := struct {
		Sandboxes []sandboxJSON `json:"sandboxes"`
		Error     string        `json:"error,omitempty"` // set when only some forks could be made
	}{Sandboxes: []sandboxJSON{}}
	for _, c := range created {
		out.Sandboxes = append(out.Sandboxes, s.toJSON(r, c.Sandbox, c.Token))
	}
	if err != nil {
		out.Error = err.Error()
	}
	writeJSON(w, http.StatusCreated, out)
}
