// Package preview routes preview URLs, http://{port}-{id}.{domain}/, to
// that port inside the sandbox: plain HTTP, streamed responses and
// WebSocket upgrades. A paused sandbox is resumed first. Previews are public
// unless the sandbox made them private; then every request must carry the
// sandbox's access token (X-Access-Token) or the cookie that a one-time
// link sets.
package preview

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/stasis-sandbox/stasis/internal/sandbox"
)

// Ports a preview URL may name (as Superserve: no privileged ports).
const (
	MinPort = 1024
	MaxPort = 65535
)

const (
	cookieName   = "stasis_preview"
	linkParam    = "stasis_preview_link"
	linkTTL      = 5 * time.Minute
	cookieTTL    = 24 * time.Hour
	maxUsedLinks = 100000
)

// Sandboxes is what the router needs of the sandbox service.
type Sandboxes interface {
	// Preview resumes the sandbox if needed and says whether its previews
	// are private; errors are *sandbox.Error for unknown sandboxes.
	Preview(ctx context.Context, id string) (private bool, err error)
	CheckAccessToken(ctx context.Context, id, token string) (bool, error)
}

// Config configures a Router.
type Config struct {
	Domain    string // e.g. "sandbox.localhost"
	Sandboxes Sandboxes
	// Addr returns the address of a running sandbox.
	Addr func(id string) (netip.Addr, bool)
	// Key signs one-time links and cookies.
	Key    []byte
	Next   http.Handler // everything that is not a preview host
	Logger *slog.Logger
}

// Router serves preview hosts and hands every other request to Next.
type Router struct {
	cfg    Config
	suffix string // "." + domain
	proxy  *httputil.ReverseProxy

	mu   sync.Mutex
	used map[string]time.Time // one-time links already used, until they expire
}

type ctxKey struct{}

type target struct {
	id   string
	port int
	addr netip.AddrPort
}

// New returns a router.
func New(cfg Config) *Router {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	rt := &Router{cfg: cfg, suffix: "." + strings.ToLower(strings.TrimSuffix(cfg.Domain, ".")), used: map[string]time.Time{}}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     30 * time.Second,
	}
	rt.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := pr.In.Context().Value(ctxKey{}).(target)
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", t.addr.String()
			pr.Out.Host = pr.In.Host // the app sees the preview host it was asked for
			pr.SetXForwarded()
			pr.Out.Header.Del("X-Access-Token")
		},
		Transport:     tr,
		FlushInterval: -1, // stream: every write reaches the client at once
		ErrorHandler:  rt.proxyError,
	}
	return rt
}

// Domain is the preview domain.
func (rt *Router) Domain() string { return strings.TrimPrefix(rt.suffix, ".") }

// IsPreviewHost reports whether host (with or without a port) is a preview host.
func (rt *Router) IsPreviewHost(host string) bool {
	_, _, ok := rt.parseHost(host)
	return ok
}

// SandboxID returns the sandbox that r's Host names, "" if it is not a
// preview host.
func (rt *Router) SandboxID(r *http.Request) string {
	_, id, _ := rt.parseHost(r.Host)
	return id
}

// parseHost reads {port}-{id} from a preview host.
func (rt *Router) parseHost(host string) (port int, id string, ok bool) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	label, found := strings.CutSuffix(strings.ToLower(host), rt.suffix)
	if !found || strings.Contains(label, ".") {
		return 0, "", false
	}
	p, id, found := strings.Cut(label, "-")
	if !found || id == "" {
		return 0, "", false
	}
	port, err := strconv.Atoi(p)
	if err != nil || p != strconv.Itoa(port) {
		return 0, "", false
	}
	return port, id, true
}

func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	port, id, ok := rt.parseHost(r.Host)
	if !ok {
		rt.cfg.Next.ServeHTTP(w, r)
		return
	}
	if port < MinPort || port > MaxPort {
		page(w, http.StatusBadRequest, "Port not served",
			fmt.Sprintf("Preview URLs serve ports %d to %d; %d is not one of them.", MinPort, MaxPort, port))
		return
	}
	// The ID in a host name is lower case; sandbox IDs are too.
	private, err := rt.cfg.Sandboxes.Preview(r.Context(), id)
	if err != nil {
		var e *sandbox.Error
		if errors.As(err, &e) && errors.Is(e.Kind, sandbox.ErrNotFound) {
			page(w, http.StatusNotFound, "No such sandbox", "There is no sandbox "+id+" (it may have been deleted).")
			return
		}
		rt.cfg.Logger.Warn("preview: sandbox unavailable", "sandbox", id, "err", err)
		page(w, http.StatusServiceUnavailable, "Sandbox unavailable", "Sandbox "+id+" cannot serve right now: "+err.Error())
		return
	}
	if private && !rt.authorized(w, r, id) {
		return
	}
	addr, ok := rt.cfg.Addr(id)
	if !ok {
		page(w, http.StatusServiceUnavailable, "Sandbox unavailable", "Sandbox "+id+" has no network link right now; retry shortly.")
		return
	}
	t := target{id: id, port: port, addr: netip.AddrPortFrom(addr, uint16(port))}
	rt.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, t)))
}

// proxyError explains a failed proxied request: mostly, nothing listens.
func (rt *Router) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	t := r.Context().Value(ctxKey{}).(target)
	if errors.Is(err, syscall.ECONNREFUSED) {
		page(w, http.StatusBadGateway, "Nothing is listening",
			fmt.Sprintf("Nothing in sandbox %s is listening on port %d. Start a server on 0.0.0.0:%d inside the sandbox and reload.", t.id, t.port, t.port))
		return
	}
	if errors.Is(err, context.Canceled) {
		return // the client went away
	}
	rt.cfg.Logger.Debug("preview: proxy error", "sandbox", t.id, "port", t.port, "err", err)
	page(w, http.StatusBadGateway, "Bad gateway",
		fmt.Sprintf("The server on port %d in sandbox %s did not answer properly: %v", t.port, t.id, err))
}

// authorized lets a request to a private preview through if it carries the
// sandbox's access token or a valid cookie, or redeems a one-time link
// (then the browser is sent on with the cookie set). Otherwise it answers 401.
func (rt *Router) authorized(w http.ResponseWriter, r *http.Request, id string) bool {
	if tok := r.Header.Get("X-Access-Token"); tok != "" {
		ok, err := rt.cfg.Sandboxes.CheckAccessToken(r.Context(), id, tok)
		if err == nil && ok {
			return true
		}
	}
	if c, err := r.Cookie(cookieName); err == nil && rt.verify("cookie", id, c.Value) {
		return true
	}
	if link := r.URL.Query().Get(linkParam); link != "" {
		if rt.verify("link", id, link) && rt.useOnce(link) {
			http.SetCookie(w, &http.Cookie{Name: cookieName, Value: rt.sign("cookie", id, cookieTTL), Path: "/",
				HttpOnly: true, SameSite: http.SameSiteLaxMode, MaxAge: int(cookieTTL.Seconds())})
			q := r.URL.Query()
			q.Del(linkParam)
			u := url.URL{Path: r.URL.Path, RawQuery: q.Encode()}
			if u.Path == "" {
				u.Path = "/"
			}
			http.Redirect(w, r, u.String(), http.StatusFound)
			return false
		}
	}
	page(w, http.StatusUnauthorized, "Private preview",
		"This sandbox's previews are private: send its access token in X-Access-Token, or open a one-time link (POST /sandboxes/"+id+"/preview-link).")
	return false
}

// Link returns a one-time link that opens a private preview in a browser:
// base is the preview URL to open.
func (rt *Router) Link(id, base string) string {
	u, _ := url.Parse(base)
	q := u.Query()
	q.Set(linkParam, rt.sign("link", id, linkTTL))
	u.RawQuery = q.Encode()
	return u.String()
}

// sign makes a token for id of the given kind: nonce.expiry.mac.
func (rt *Router) sign(kind, id string, ttl time.Duration) string {
	var nonce [12]byte
	rand.Read(nonce[:])
	n := hex.EncodeToString(nonce[:])
	exp := strconv.FormatInt(time.Now().Add(ttl).Unix(), 10)
	return n + "." + exp + "." + rt.mac(kind, id, n, exp)
}

func (rt *Router) mac(kind, id, nonce, exp string) string {
	m := hmac.New(sha256.New, rt.cfg.Key)
	fmt.Fprintf(m, "stasis-preview:%s:%s:%s:%s", kind, id, nonce, exp)
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (rt *Router) verify(kind, id, tok string) bool {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return false
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || time.Now().Unix() > exp {
		return false
	}
	return hmac.Equal([]byte(parts[2]), []byte(rt.mac(kind, id, parts[0], parts[1])))
}

// useOnce records a link as used; false if it was used before.
func (rt *Router) useOnce(link string) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	now := time.Now()
	if len(rt.used) >= maxUsedLinks {
		for k, t := range rt.used {
			if now.After(t) {
				delete(rt.used, k)
			}
		}
	}
	if _, ok := rt.used[link]; ok {
		return false
	}
	rt.used[link] = now.Add(linkTTL)
	return true
}

// page writes a small HTML page explaining the status.
func page(w http.ResponseWriter, status int, title, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<!doctype html><html><head><title>%d %s</title></head><body><h1>%s</h1><p>%s</p><p><small>stasis preview</small></p></body></html>\n",
		status, html.EscapeString(title), html.EscapeString(title), html.EscapeString(msg))
}
