package e2b

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/stasis-sandbox/stasis/internal/httpguard"
)

// newPortTransport returns the transport of requests to sandbox ports.
// Connections are not kept for reuse: a pooled connection into a sandbox
// would have to survive the sandbox's pauses, and a fresh one over the
// sandbox's link costs little.
func newPortTransport() *http.Transport {
	return &http.Transport{
		DialContext:       (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		DisableKeepAlives: true,
	}
}

// proxyPort forwards a request for another port of a sandbox (E2B's
// E2b-Sandbox-Port, or a host {port}-{id}.{domain}) to that port on the
// sandbox's link address, streaming both ways (WebSocket upgrades too). A
// paused sandbox is resumed first, as for envd.
func (s *Server) proxyPort(w http.ResponseWriter, r *http.Request, id string, port int) {
	if port == 0 {
		writeError(w, http.StatusBadRequest, "E2b-Sandbox-Port must be a port number")
		return
	}
	if !s.checkProxyAccess(r, id) {
		writeError(w, http.StatusUnauthorized, "missing or invalid X-Access-Token for sandbox %q", id)
		return
	}
	httpguard.Authenticated(r.Context())
	if _, ok := s.reach(r.Context(), w, id); !ok {
		return
	}
	addr, err := s.svc.LinkAddr(r.Context(), id)
	if err != nil {
		s.fail(w, err)
		return
	}
	target := &url.URL{Scheme: "http", Host: netip.AddrPortFrom(addr, uint16(port)).String()}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = r.Host
			pr.Out.Header.Del("X-Access-Token")
			pr.Out.Header.Del("E2B-Traffic-Access-Token")
		},
		Transport:     s.ports,
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			writeError(w, http.StatusBadGateway, "nothing answers on port %s of sandbox %s: %v", strconv.Itoa(port), id, err)
		},
	}
	// Full duplex: otherwise net/http, as the response's headers go out,
	// consumes and closes the rest of the request body, which can race
	// with the transport's last read of that body (its check for EOF);
	// the transport then fails the request and closes the upstream
	// connection in the middle of the response (seen cutting /execute
	// streams under load).
	if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
		s.log.Debug("e2b: port proxy without full duplex", "err", err)
	}
	rp.ServeHTTP(w, r)
}

// checkProxyAccess decides who may reach a sandbox's ports. E2B makes
// sandbox URLs public by default; stasis asks for the sandbox's token, in
// E2B-Traffic-Access-Token (which @e2b/code-interpreter sends on every
// request once the API returned trafficAccessToken) or X-Access-Token.
func (s *Server) checkProxyAccess(r *http.Request, id string) bool {
	if t := r.Header.Get("E2B-Traffic-Access-Token"); t != "" {
		return tokenEqual(t, s.svc.EnvdToken(id))
	}
	return s.checkEnvdToken(r, id)
}
