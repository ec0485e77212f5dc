package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

// NotOwnerHeader marks a 421 answer to a forwarded request: the node does
// not own the sandbox (any more), and read none of the request's body. The
// forwarding node then routes the request again from a fresh store read.
const NotOwnerHeader = "X-Stasis-Not-Owner"

// errNotOwner is a NotOwnerHeader answer the forwarder retries.
var errNotOwner = errors.New("cluster: the node does not own the sandbox")

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
	// retry, when set, serves the request again after base answered that
	// it does not own the sandbox; body is the request's body to send again.
	retry func(http.ResponseWriter, *http.Request)
	in    *http.Request // as received (the error handler is given the outgoing one)
	body  *replayBody
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
			pr.SetURL(pr.In.Context().Value(targetKey{}).(*target).base)
			// The owner routes data-plane requests by host (boxd-{id}.…)
			// as well as by header: keep the client's host.
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			pr.Out.Header.Set(ForwardedHeader, f.self)
		},
		ModifyResponse: notOwner,
		Transport:      tr,
		FlushInterval:  -1, // streams (exec output, logs) flush every write
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
	f.forward(w, r, base, writeError, nil)
}

// forward proxies r to base; fail answers when base cannot be reached.
// With retry, a NotOwnerHeader answer is not passed on: retry serves the
// request instead, with its body as first sent (r's body must then be
// small: see replayable).
func (f *Forwarder) forward(w http.ResponseWriter, r *http.Request, base *url.URL, fail ErrorWriter, retry func(http.ResponseWriter, *http.Request)) {
	to := &target{base: base, fail: fail, retry: retry, in: r}
	if retry != nil && r.Body != nil && r.Body != http.NoBody {
		to.body = &replayBody{in: r.Body}
	}
	out := r.WithContext(context.WithValue(r.Context(), targetKey{}, to))
	if to.body != nil {
		out.Body = to.body
	}
	f.proxy.ServeHTTP(w, out)
}

// notOwner turns a retryable NotOwnerHeader answer into errNotOwner, for
// unreachable to retry; its short body is read so the connection is kept.
func notOwner(resp *http.Response) error {
	if resp.StatusCode != http.StatusMisdirectedRequest || resp.Header.Get(NotOwnerHeader) == "" {
		return nil
	}
	if to, _ := resp.Request.Context().Value(targetKey{}).(*target); to.retry == nil {
		return nil
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	return errNotOwner
}

// replayBody records what the transport reads of a request body, so it can
// be sent again. The proxy never closes it before its error handler runs,
// so replay detaches it instead: the first transport reads nothing more.
type replayBody struct {
	in       io.ReadCloser
	mu       sync.Mutex // held through each read of in
	read     bytes.Buffer
	detached bool
}

var errDetached = errors.New("cluster: request body taken for a retry")

func (b *replayBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.detached {
		return 0, errDetached
	}
	n, err := b.in.Read(p)
	b.read.Write(p[:n])
	return n, err
}

func (b *replayBody) Close() error { return nil } // the server closes the client's body

// replay returns the whole body again: what was read, then the rest.
func (b *replayBody) replay() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.detached = true
	return io.NopCloser(io.MultiReader(bytes.NewReader(b.read.Bytes()), b.in))
}

// unreachable answers when the owner node could not be reached (or broke
// off mid-response, when nothing can be sent any more).
func (f *Forwarder) unreachable(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) {
		return // the client went away
	}
	to := r.Context().Value(targetKey{}).(*target)
	if errors.Is(err, errNotOwner) {
		in := to.in
		if to.body != nil {
			in = in.WithContext(in.Context())
			in.Body = to.body.replay()
		}
		to.retry(w, in)
		return
	}
	// Never log the query: it can carry a token.
	f.log.Warn("forwarding to node failed", "node", to.base.Host, "path", r.URL.Path, "err", err)
	to.fail(w, http.StatusBadGateway, "node_unreachable",
		fmt.Sprintf("the node running this sandbox (%s) did not answer; retry, or resume the sandbox elsewhere once that node is declared lost", to.base.Host))
}
