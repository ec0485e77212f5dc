package e2b

import (
	"net/http/httptest"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/cluster"
)

// TestRouteSendsSandboxTrafficToItsOwner: in a cluster, envd traffic (by
// header or host) and calls about one sandbox go to its owner, creates are
// placed, connect/resume may move a sandbox, and lists stay local.
func TestRouteSendsSandboxTrafficToItsOwner(t *testing.T) {
	for _, c := range []struct {
		method, path, host, header string
		want                       cluster.Route
	}{
		{"POST", "/process.Process/Start", "", "sb1", cluster.Route{Kind: cluster.RouteOwner, Sandbox: "sb1"}},
		{"GET", "/files?path=/x", "49983-sb2.e2b.test", "", cluster.Route{Kind: cluster.RouteOwner, Sandbox: "sb2"}},
		{"GET", "/", "8000-sb3.e2b.test:3000", "", cluster.Route{Kind: cluster.RouteOwner, Sandbox: "sb3"}},
		{"POST", "/sandboxes", "", "", cluster.Route{Kind: cluster.RoutePlace}},
		{"POST", "/v2/sandboxes", "", "", cluster.Route{Kind: cluster.RoutePlace}},
		{"GET", "/v2/sandboxes", "", "", cluster.Route{Kind: cluster.RouteLocal}},
		{"GET", "/sandboxes", "", "", cluster.Route{Kind: cluster.RouteLocal}},
		{"GET", "/snapshots", "", "", cluster.Route{Kind: cluster.RouteLocal}},
		{"DELETE", "/templates/snap1", "", "", cluster.Route{Kind: cluster.RouteLocal}},
		{"POST", "/v2/sandboxes/sb4/connect", "", "", cluster.Route{Kind: cluster.RouteResume, Sandbox: "sb4"}},
		{"POST", "/sandboxes/sb4/resume", "", "", cluster.Route{Kind: cluster.RouteResume, Sandbox: "sb4"}},
		{"POST", "/sandboxes/sb5/pause", "", "", cluster.Route{Kind: cluster.RouteOwner, Sandbox: "sb5"}},
		{"GET", "/sandboxes/sb5", "", "", cluster.Route{Kind: cluster.RouteOwner, Sandbox: "sb5"}},
		{"DELETE", "/sandboxes/sb5", "", "", cluster.Route{Kind: cluster.RouteOwner, Sandbox: "sb5"}},
		{"POST", "/sandboxes/sb5/fork", "", "", cluster.Route{Kind: cluster.RouteOwner, Sandbox: "sb5"}},
	} {
		r := httptest.NewRequest(c.method, c.path, nil)
		r.Host = "127.0.0.1:3000"
		if c.host != "" {
			r.Host = c.host
		}
		if c.header != "" {
			r.Header.Set("E2b-Sandbox-Id", c.header)
		}
		if got := Route(r); got != c.want {
			t.Errorf("%s %s (host %q, sandbox header %q): %+v, want %+v", c.method, c.path, r.Host, c.header, got, c.want)
		}
	}
}
