package e2b

import (
	"net/http"
	"strings"

	"github.com/stasis-sandbox/stasis/internal/cluster"
)

// Route classifies a request to the E2B listener for a cluster's router:
// envd and sandbox-port traffic (E2b-Sandbox-Id, or a host
// {port}-{id}.{domain}) and the control plane's calls about one sandbox go
// to the node that owns it, creates to a placed node, connect and resume to
// the owner or (when it is lost or draining) a placed node; lists and
// snapshots need only the shared store and are answered here.
func Route(r *http.Request) cluster.Route {
	if id, _, ok := sandboxTarget(r); ok {
		return cluster.Route{Kind: cluster.RouteOwner, Sandbox: id}
	}
	p := strings.TrimPrefix(r.URL.Path, "/v2")
	if p == "/sandboxes" {
		if r.Method == http.MethodPost {
			return cluster.Route{Kind: cluster.RoutePlace}
		}
		return cluster.Route{Kind: cluster.RouteLocal}
	}
	rest, ok := strings.CutPrefix(p, "/sandboxes/")
	if !ok {
		return cluster.Route{Kind: cluster.RouteLocal}
	}
	id, action, _ := strings.Cut(rest, "/")
	if action == "connect" || action == "resume" {
		return cluster.Route{Kind: cluster.RouteResume, Sandbox: id}
	}
	return cluster.Route{Kind: cluster.RouteOwner, Sandbox: id}
}

// RoutingError writes a cluster routing failure (the owner node cannot be
// reached) as E2B's error body, whose numeric code the SDK matches on.
func RoutingError(w http.ResponseWriter, status int, _, msg string) {
	writeError(w, status, "%s", msg)
}
