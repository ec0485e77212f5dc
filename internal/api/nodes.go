package api

import (
	"fmt"
	"net/http"
	"time"

	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// nodeJSON is a cluster node on the wire (a stasis extension).
type nodeJSON struct {
	Name        string    `json:"name"`
	URL         string    `json:"url"`
	State       string    `json:"state"`
	CPUFeatures string    `json:"cpu_features"`
	Version     string    `json:"version"`
	MemFreeMiB  int64     `json:"mem_free_mib"`
	Running     int       `json:"running"`
	HeartbeatAt time.Time `json:"heartbeat_at"`
	StartedAt   time.Time `json:"started_at"`
}

func nodeToJSON(n store.Node) nodeJSON {
	return nodeJSON{Name: n.Name, URL: n.URL, State: n.State, CPUFeatures: n.CPUFeatures, Version: n.Version,
		MemFreeMiB: n.MemFreeMiB, Running: n.Running, HeartbeatAt: n.HeartbeatAt, StartedAt: n.StartedAt}
}

func (s *Server) nodeRoutes() {
	s.mux.HandleFunc("GET /nodes", s.withTeam(s.listNodes))
	s.mux.HandleFunc("POST /nodes/{name}/drain", s.withTeam(s.setNodeState(store.NodeDraining)))
	s.mux.HandleFunc("POST /nodes/{name}/activate", s.withTeam(s.setNodeState(store.NodeActive)))
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request, _ string) {
	nodes, err := s.store.ListNodes(r.Context())
	if err != nil {
		s.fail(w, err)
		return
	}
	out := make([]nodeJSON, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, nodeToJSON(n))
	}
	writeJSON(w, http.StatusOK, out)
}

// setNodeState drains a node (it takes no new sandboxes; it pauses its
// active ones, which then resume elsewhere) or makes it active again. A
// lost node cannot be drained or activated: it comes back by heartbeating.
func (s *Server) setNodeState(state string) teamHandler {
	return func(w http.ResponseWriter, r *http.Request, _ string) {
		name := r.PathValue("name")
		node, err := s.findNode(r, name)
		if err != nil {
			s.fail(w, err)
			return
		}
		if node.State == store.NodeLost {
			s.fail(w, &sandbox.Error{Kind: sandbox.ErrConflict, Code: "node_lost",
				Message: fmt.Sprintf("node %s is lost (no heartbeat since %s); it rejoins by itself when it runs again", sandbox.QuoteShort(name), node.HeartbeatAt.Format(time.RFC3339))})
			return
		}
		if err := s.store.SetNodeState(r.Context(), name, state); err != nil {
			s.fail(w, err)
			return
		}
		node.State = state
		writeJSON(w, http.StatusOK, nodeToJSON(node))
	}
}

func (s *Server) findNode(r *http.Request, name string) (store.Node, error) {
	nodes, err := s.store.ListNodes(r.Context())
	if err != nil {
		return store.Node{}, err
	}
	for _, n := range nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return store.Node{}, &sandbox.Error{Kind: sandbox.ErrNotFound, Code: "not_found",
		Message: fmt.Sprintf("node %s not found (GET /nodes lists them)", sandbox.QuoteShort(name))}
}
