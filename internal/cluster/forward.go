package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"
)

// ForwardedHeader marks a request one node forwarded to another; its value
// names the forwarding node. A node serves such a request itself and never
// forwards it again, so two nodes that disagree about an owner cannot bounce
// a request between them.
const ForwardedHeader = "X-Stasis-Forwarded-By"

// NodeHeader names the node that served a response.
const NodeHeader = "X-Stasis-Node"

// Forwarder proxies requests to another node's advertise URL: plain
// requests, streamed responses (flushed as they come) and WebSocket
// upgrades. The client's headers, its API key or access token included,
// pass through unchanged: the owner node authenticates the request itself.
type Forwarder struct {
	self  string
	proxy *httputil.ReverseProxy
	log   *slog.Logger
}

type targetKey struct{}

// target is where a forwarded request goes, and how a failure to get there
// is answered.
type target struct {
	base *url.URL
	fail ErrorWriter
}

// NewForwarder returns a forwarder for the node named self.
func NewForwarder(self string, log *slog.Logger) *Forwarder {
	f := &Forwarder{self: self, log: log}
	tr := &http.Transport{
		Proxy:               nil, // nodes talk to each other directly, never through HTTP_PROXY
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   false,
	}
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(pr.In.Context().Value(targetKey{}).(target).base)
			// The owner routes data-plane requests by host (boxd-{id}.…)
			// as well as by header: keep the client's host.
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			pr.Out.Header.Set(ForwardedHeader, f.self)
		},
		Transport:     tr,
		FlushInterval: -1, // streams (exec output, logs) flush every write
		// Without a pool every forwarded request allocates (and zeroes)
		// a fresh 32 KiB copy buffer.
		BufferPool:   newCopyBuffers(),
		ErrorHandler: f.unreachable,
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return f
}

// copyBuffers recycles the proxy's body copy buffers.
type copyBuffers struct{ pool sync.Pool }

func newCopyBuffers() *copyBuffers {
	return &copyBuffers{pool: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (c *copyBuffers) Get() []byte  { return *c.pool.Get().(*[]byte) }
func (c *copyBuffers) Put(b []byte) { c.pool.Put(&b) }

// Forward serves r by proxying it to the node at base (its advertise URL).
func (f *Forwarder) Forward(w http.ResponseWriter, r *http.Request, base *url.URL) {
	f.forward(w, r, base, writeError)
}

// forward proxies r to base; fail answers when base cannot be reached.
func (f *Forwarder) forward(w http.ResponseWriter, r *http.Request, base *url.URL, fail ErrorWriter) {
	ctx := context.WithValue(r.Context(), targetKey{}, target{base: base, fail: fail})
	f.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// unreachable answers when the owner node could not be reached (or broke
// off mid-response, when nothing can be sent any more).
func (f *Forwarder) unreachable(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) {
		return // the client went away
	}
	to := r.Context().Value(targetKey{}).(target)
	// Never log the query: it can carry a token.
	f.log.Warn("forwarding to node failed", "node", to.base.Host, "path", r.URL.Path, "err", err)
	to.fail(w, http.StatusBadGateway, "node_unreachable",
		fmt.Sprintf("the node running this sandbox (%s) did not answer; retry, or resume the sandbox elsewhere once that node is declared lost", to.base.Host))
}
