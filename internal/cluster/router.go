package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// ErrUnknownSandbox is what Directory.Owner returns for a sandbox it does
// not know; the request is then served locally, which answers 404.
var ErrUnknownSandbox = errors.New("cluster: unknown sandbox")

// Directory is the router's view of the shared store.
type Directory interface {
	// Owner returns the name of the node that owns sandbox id.
	Owner(ctx context.Context, id string) (string, error)
	// Nodes returns every registered node.
	Nodes(ctx context.Context) ([]Candidate, error)
}

// RouterConfig configures a Router.
type RouterConfig struct {
	Self      string                     // this node's name
	Directory Directory                  // who owns what, which nodes exist
	Forwarder *Forwarder                 // reaches other nodes
	Local     http.Handler               // this node's API
	Lease     time.Duration              // a node not heard from for this long is not placed on
	SandboxID func(*http.Request) string // a data-plane request's sandbox id ("" none)
	// HostSandboxID is the sandbox a request's Host names (a preview URL),
	// "" for none; nil when the node serves no previews.
	HostSandboxID func(*http.Request) string
	// Classify says what a request is for another protocol's listener
	// (E2B's); nil: the Superserve API's routes (SandboxID, HostSandboxID).
	Classify func(*http.Request) Route
	// Address is where a node serves this listener's protocol ("" none);
	// nil: its advertise URL.
	Address func(Candidate) string
	// WriteError writes this protocol's error body; nil: Superserve's.
	WriteError ErrorWriter
	Logger     *slog.Logger
}

// ErrorWriter writes an error answer in a protocol's own body format.
type ErrorWriter func(w http.ResponseWriter, status int, code, msg string)

// RouteKind says how a request is routed.
type RouteKind int

const (
	RouteLocal  RouteKind = iota // served by this node
	RoutePlace                   // a create: served by the node placement picks
	RouteOwner                   // about Sandbox: served by its owner
	RouteResume                  // resumes Sandbox: its owner, or a placed node when the owner is lost or draining
)

// Route is what a request is, as far as routing cares.
type Route struct {
	Kind    RouteKind
	Sandbox string
	// OwnerChecked: the owner's handler refuses a forwarded request for a
	// sandbox it does not own (421 with NotOwnerHeader) before it reads the
	// body, so the forwarding node may route it by a cached owner.
	OwnerChecked bool
}

// Router sends each request to the node that should serve it: requests
// about a sandbox to its owner, creates to the node placement picks,
// resumes of a sandbox whose owner is lost or draining to a placed node,
// and everything else to this node. Every node serves the whole API, so a
// client can talk to any of them.
type Router struct {
	cfg RouterConfig

	mu     sync.Mutex
	rnd    *rand.Rand
	nodes  []Candidate
	listed time.Time
	owners map[string]cachedOwner // sandbox → another node that owned it
}

// cachedOwner is a sandbox's owner as read from the store at some time.
type cachedOwner struct {
	node string
	read time.Time
}

// nodeListTTL bounds how stale the router's node list gets; heartbeats are
// seconds apart, so re-reading it for every request buys nothing.
const nodeListTTL = time.Second

// ownerTTL bounds how long a data-plane request is routed by a remembered
// owner instead of a store read. A stale entry costs one retry, not a
// wrong answer: the node it names refuses the request (Route.OwnerChecked).
const ownerTTL = 5 * time.Second

// maxCachedOwners bounds the owner cache; past it, expired entries go.
const maxCachedOwners = 8192

// maxReplayBody is the largest request body the forwarder keeps a copy of,
// to send it again when the node it tried no longer owns the sandbox.
const maxReplayBody = 64 << 10

// NewRouter returns a router.
func NewRouter(cfg RouterConfig) *Router {
	return &Router{cfg: cfg, rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
}

// Decision says where a request goes: To is empty to serve it here.
type Decision struct {
	To     Candidate
	Reason string
	// Retry: when To answers that it does not own Sandbox, forget its cached
	// owner and route the request again from a fresh store read.
	Retry   bool
	Sandbox string
}

func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt.serve(w, r, true)
}

// serve routes r; cached allows a remembered owner, and with it one retry.
func (rt *Router) serve(w http.ResponseWriter, r *http.Request, cached bool) {
	d, err := rt.decide(r, cached)
	if err != nil {
		rt.cfg.Logger.Warn("routing failed; serving locally", "path", r.URL.Path, "err", err)
	}
	if d.To.Name == "" || d.To.Name == rt.cfg.Self {
		w.Header().Set(NodeHeader, rt.cfg.Self)
		rt.cfg.Local.ServeHTTP(w, r)
		return
	}
	fail := rt.cfg.WriteError
	if fail == nil {
		fail = writeError
	}
	addr := d.To.URL
	if rt.cfg.Address != nil {
		addr = rt.cfg.Address(d.To)
	}
	base, err := url.Parse(addr)
	if err != nil || base.Host == "" {
		fail(w, http.StatusBadGateway, "node_unreachable", "node "+d.To.Name+" does not advertise an address for this protocol (is its listener on?)")
		return
	}
	var retry func(http.ResponseWriter, *http.Request)
	if d.Retry && cached && replayable(r) {
		retry = func(w http.ResponseWriter, r *http.Request) {
			rt.forget(d.Sandbox)
			rt.serve(w, r, false)
		}
	}
	rt.cfg.Forwarder.forward(w, r, base, fail, retry)
}

// replayable says whether r can be sent twice: it has no body, or one small
// enough for the forwarder to keep a copy of.
func replayable(r *http.Request) bool {
	return r.Body == nil || r.Body == http.NoBody || (r.ContentLength >= 0 && r.ContentLength <= maxReplayBody)
}

// dataPlanePaths are served by the node that runs the sandbox.
var dataPlanePaths = map[string]bool{
	"/exec": true, "/exec/stream": true, "/exec/connect": true, "/files": true, "/files/stat": true,
}

// Decide picks the node for r. Errors come with a local decision: when the
// store cannot say, this node serves and reports what it can.
func (rt *Router) Decide(r *http.Request) (Decision, error) { return rt.decide(r, false) }

// decide is Decide; cached lets a data-plane request whose owner checks
// what it is sent be routed by a remembered owner.
func (rt *Router) decide(r *http.Request, cached bool) (Decision, error) {
	if r.Header.Get(ForwardedHeader) != "" {
		return Decision{Reason: "forwarded"}, nil
	}
	classify := rt.cfg.Classify
	if classify == nil {
		classify = rt.superserveRoute
	}
	ctx := r.Context()
	switch route := classify(r); route.Kind {
	case RoutePlace:
		return rt.place(ctx, "create")
	case RouteOwner, RouteResume:
		if route.Sandbox == "" {
			break
		}
		resume := route.Kind == RouteResume
		if !route.OwnerChecked || resume {
			return rt.toOwner(ctx, route.Sandbox, resume, "")
		}
		return rt.toCheckedOwner(r, route.Sandbox, cached)
	}
	return Decision{Reason: "local"}, nil
}

// toCheckedOwner routes a request whose owner checks what it is sent
// (Route.OwnerChecked). A remembered owner saves the store read; the
// decision allows one retry from a fresh read if that node refuses.
func (rt *Router) toCheckedOwner(r *http.Request, id string, cached bool) (Decision, error) {
	ctx := r.Context()
	if cached && replayable(r) {
		if owner, ok := rt.cachedOwner(id); ok {
			// Only a forward is taken on a remembered owner's word: serving
			// here (the owner lost, or this node) needs the store's.
			if d, err := rt.toOwner(ctx, id, false, owner); err == nil && d.To.Name != "" && d.To.Name != rt.cfg.Self {
				d.Retry, d.Sandbox = true, id
				return d, nil
			}
			rt.forget(id)
		}
	}
	d, err := rt.toOwner(ctx, id, false, "")
	if err == nil && d.To.Name != "" && d.To.Name != rt.cfg.Self {
		rt.remember(id, d.To.Name)
		d.Retry, d.Sandbox = true, id
	}
	return d, err
}

// superserveRoute classifies a request to the Superserve API.
func (rt *Router) superserveRoute(r *http.Request) Route {
	if rt.cfg.HostSandboxID != nil {
		if id := rt.cfg.HostSandboxID(r); id != "" {
			// A preview: only the sandbox's own node reaches its ports.
			return Route{Kind: RouteOwner, Sandbox: id}
		}
	}
	p := r.URL.Path
	switch {
	case r.Method == http.MethodPost && p == "/sandboxes":
		return Route{Kind: RoutePlace}
	case strings.HasPrefix(p, "/sandboxes/"):
		id, action, _ := strings.Cut(strings.TrimPrefix(p, "/sandboxes/"), "/")
		// Reads go to the owner too: only it knows whether a pause is
		// durable or still in memory.
		if action == "resume" || action == "activate" {
			return Route{Kind: RouteResume, Sandbox: id}
		}
		return Route{Kind: RouteOwner, Sandbox: id}
	case dataPlanePaths[p] && rt.cfg.SandboxID != nil:
		// The API checks ownership of these (see NotOwnerHeader).
		return Route{Kind: RouteOwner, Sandbox: rt.cfg.SandboxID(r), OwnerChecked: true}
	}
	return Route{Kind: RouteLocal}
}

// toOwner routes a request about sandbox id to its owner while that node
// lives. When it is lost, this node serves: reads and deletes need only the
// store, and a resume claims the sandbox here (or, for a draining owner,
// on a placed node). A non-empty owner is what the store said a moment ago.
func (rt *Router) toOwner(ctx context.Context, id string, resume bool, owner string) (Decision, error) {
	var err error
	if owner == "" {
		owner, err = rt.cfg.Directory.Owner(ctx, id)
	}
	if errors.Is(err, ErrUnknownSandbox) || (err == nil && owner == "") {
		return Decision{Reason: "unowned"}, nil
	}
	if err != nil {
		return Decision{}, err
	}
	if owner == rt.cfg.Self && !resume {
		return Decision{Reason: "owner"}, nil
	}
	// A resume reads the owner's state afresh: one served by an owner that
	// was drained a moment ago would bring the sandbox back onto it.
	n, err := rt.node(ctx, owner, resume)
	if err != nil {
		return Decision{}, err
	}
	switch {
	case n.Name == rt.cfg.Self && n.State != StateDraining:
		return Decision{Reason: "owner"}, nil
	case n.State == StateActive || (n.State == StateDraining && !resume):
		return Decision{To: n, Reason: "owner"}, nil
	case resume:
		return rt.place(ctx, "resume away from "+n.State+" node "+n.Name)
	}
	return Decision{Reason: "owner " + n.State}, nil
}

// cachedOwner returns the remembered owner of sandbox id, if still fresh.
func (rt *Router) cachedOwner(id string) (string, bool) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	o, ok := rt.owners[id]
	if !ok || time.Since(o.read) >= ownerTTL {
		return "", false
	}
	return o.node, true
}

func (rt *Router) remember(id, node string) {
	now := time.Now()
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.owners == nil {
		rt.owners = map[string]cachedOwner{}
	}
	if len(rt.owners) >= maxCachedOwners {
		for k, o := range rt.owners {
			if now.Sub(o.read) >= ownerTTL {
				delete(rt.owners, k)
			}
		}
		if len(rt.owners) >= maxCachedOwners {
			clear(rt.owners) // all fresh: a burst over many sandboxes
		}
	}
	rt.owners[id] = cachedOwner{node: node, read: now}
}

func (rt *Router) forget(id string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	delete(rt.owners, id)
}

func (rt *Router) place(ctx context.Context, why string) (Decision, error) {
	nodes, err := rt.list(ctx, false)
	if err != nil {
		return Decision{}, err
	}
	rt.mu.Lock()
	n, err := Place(nodes, time.Now(), rt.cfg.Lease, 0, rt.rnd)
	rt.mu.Unlock()
	if err != nil {
		// Nothing else can take it: this node tries, and says what is wrong.
		return Decision{Reason: why}, err
	}
	return Decision{To: n, Reason: why}, nil
}

// node returns the named node, re-reading the list once if it is not known
// yet (or at once, with fresh).
func (rt *Router) node(ctx context.Context, name string, fresh bool) (Candidate, error) {
	tries := []bool{false, true}
	if fresh {
		tries = tries[1:]
	}
	for _, fresh := range tries {
		nodes, err := rt.list(ctx, fresh)
		if err != nil {
			return Candidate{}, err
		}
		for _, n := range nodes {
			if n.Name == name {
				return n, nil
			}
		}
	}
	return Candidate{Name: name, State: StateLost}, nil // never registered: nobody to forward to
}

func (rt *Router) list(ctx context.Context, fresh bool) ([]Candidate, error) {
	rt.mu.Lock()
	if !fresh && rt.nodes != nil && time.Since(rt.listed) < nodeListTTL {
		defer rt.mu.Unlock()
		return rt.nodes, nil
	}
	rt.mu.Unlock()
	nodes, err := rt.cfg.Directory.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	rt.mu.Lock()
	rt.nodes, rt.listed = nodes, time.Now()
	rt.mu.Unlock()
	return nodes, nil
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	body.Error.Code, body.Error.Message = code, msg
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}
