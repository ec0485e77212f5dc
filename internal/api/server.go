// Package api serves stasis's HTTP API: the Superserve-compatible control
// plane (X-API-Key) and data plane (X-Access-Token), mapping requests onto
// the sandbox service and its errors onto the Superserve error envelope.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/cluster"
	"github.com/stasis-sandbox/stasis/internal/health"
	"github.com/stasis-sandbox/stasis/internal/httpguard"
	"github.com/stasis-sandbox/stasis/internal/metrics"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/secrets"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// MaxJSONBody bounds control-plane and exec request bodies.
const MaxJSONBody = 1 << 20

// Server is the HTTP handler for the whole API.
type Server struct {
	svc     *sandbox.Service
	store   store.Store
	metrics *metrics.Registry
	log     *slog.Logger
	mux     *http.ServeMux
	checks  *health.Checker  // nil: /health only says the server answers
	preview PreviewLinker    // nil: no preview links
	secrets *secrets.Service // nil: secrets are refused
	peers   *cluster.Peers   // nil: a single node, forks stay here
}

// UseHealth makes GET /health report c's checks (store, runtime, disk),
// answering 503 when one fails.
func (s *Server) UseHealth(c *health.Checker) { s.checks = c }

// New returns the API handler.
func New(svc *sandbox.Service, st store.Store, reg *metrics.Registry, log *slog.Logger) *Server {
	s := &Server{svc: svc, store: st, metrics: reg, log: log, mux: http.NewServeMux()}
	// The only error is a duplicate name: a second API on one registry.
	_ = reg.GaugeVecFunc("stasis_sandboxes", "Sandboxes by status.", "status", s.sandboxCounts)
	s.routes()
	return s
}

// sandboxCounts counts the sandboxes by status at scrape time.
func (s *Server) sandboxCounts() (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	counts, err := s.store.CountByStatus(ctx)
	if err != nil {
		return nil, fmt.Errorf("count sandboxes by status: %w", err)
	}
	out := map[string]float64{}
	for _, st := range []string{store.StatusStarting, store.StatusActive, store.StatusPausing,
		store.StatusPaused, store.StatusResuming, store.StatusFailed} {
		out[st] = float64(counts[st])
	}
	return out, nil
}

// serveMetrics serves Prometheus metrics. They hold counts and latencies
// only, no identifiers, so they are served without authentication.
func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	s.metrics.Handler().ServeHTTP(w, r)
}

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /health", s.health)
	m.HandleFunc("GET /metrics", s.serveMetrics)

	// Control plane.
	m.HandleFunc("POST /sandboxes", s.withTeam(s.createSandbox))
	m.HandleFunc("GET /sandboxes", s.withTeam(s.listSandboxes))
	m.HandleFunc("GET /sandboxes/{id}", s.withTeam(s.getSandbox))
	m.HandleFunc("PATCH /sandboxes/{id}", s.withTeam(s.updateSandbox))
	m.HandleFunc("DELETE /sandboxes/{id}", s.withTeam(s.deleteSandbox))
	m.HandleFunc("POST /sandboxes/{id}/pause", s.withTeam(s.pauseSandbox))
	m.HandleFunc("POST /sandboxes/{id}/resume", s.withTeam(s.resumeSandbox(false)))
	m.HandleFunc("POST /sandboxes/{id}/activate", s.withTeam(s.resumeSandbox(true)))
	m.HandleFunc("POST /sandboxes/{id}/fork", s.withTeam(s.forkSandbox))
	m.HandleFunc("POST /sandboxes/{id}"+cluster.ForkHerePath, s.withTeam(s.forkHere))
	m.HandleFunc("POST /sandboxes/{id}/snapshots", s.withTeam(s.saveSnapshot))
	m.HandleFunc("GET /sandboxes/{id}/network", s.withTeam(s.networkLog))
	m.HandleFunc("POST /sandboxes/{id}/preview-link", s.withTeam(s.previewLink))
	m.HandleFunc("GET /snapshots", s.withTeam(s.listSnapshots))
	m.HandleFunc("DELETE /snapshots/{id}", s.withTeam(s.deleteSnapshot))
	m.HandleFunc("GET /usage", s.withTeam(s.teamUsage))
	m.HandleFunc("POST /templates", s.withTeam(s.createTemplate))
	m.HandleFunc("GET /templates", s.withTeam(s.listTemplates))
	m.HandleFunc("GET /templates/{id}", s.withTeam(s.getTemplate))
	m.HandleFunc("DELETE /templates/{id}", s.withTeam(s.deleteTemplate))
	m.HandleFunc("POST /templates/{id}/builds", s.withTeam(s.rebuildTemplate))
	m.HandleFunc("GET /templates/{id}/builds", s.withTeam(s.listBuilds))
	m.HandleFunc("GET /templates/{id}/builds/{build}", s.withTeam(s.getBuild))
	m.HandleFunc("DELETE /templates/{id}/builds/{build}", s.withTeam(s.cancelBuild))
	m.HandleFunc("GET /templates/{id}/builds/{build}/logs", s.withTeam(s.buildLogs))
	s.secretRoutes()
	s.nodeRoutes()

	// Data plane, routed by X-Superserve-Sandbox-Id or host boxd-{id}.*.
	m.HandleFunc("POST /exec", s.withAgent(s.exec))
	m.HandleFunc("POST /exec/stream", s.withAgent(s.execStream))
	m.HandleFunc("GET /exec/connect", s.execConnect)
	m.HandleFunc("GET /files", s.withAgent(s.readFile))
	m.HandleFunc("POST /files", s.withAgent(s.writeFile))
	m.HandleFunc("GET /files/stat", s.withAgent(s.statFile))
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	if _, pattern := s.mux.Handler(r); pattern == "" {
		s.noRoute(rw, r)
	} else {
		s.mux.ServeHTTP(rw, r)
	}
	// Never log headers or query strings: they can carry keys and tokens.
	s.log.Debug("request", "method", r.Method, "path", sandbox.Shorten(r.URL.Path), "status", rw.status, "ms", time.Since(start).Milliseconds())
}

// noRoute answers a request no route matches in the error envelope: 405
// with an Allow header when the path is served for other methods, else 404.
// The mux decides which (it knows every route's methods); its plain-text
// answer is discarded.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	probe := &probeWriter{header: http.Header{}}
	s.mux.ServeHTTP(probe, r)
	path := sandbox.Shorten(r.URL.Path)
	if allow := probe.header.Get("Allow"); probe.status == http.StatusMethodNotAllowed && allow != "" {
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed",
			fmt.Sprintf("%s is not allowed on %s; allowed: %s", r.Method, path, allow))
		return
	}
	writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route for %s %s", r.Method, path))
}

// probeWriter records the status and headers a handler writes, and drops the body.
type probeWriter struct {
	header http.Header
	status int
}

func (p *probeWriter) Header() http.Header         { return p.header }
func (p *probeWriter) Write(b []byte) (int, error) { return len(b), nil }
func (p *probeWriter) WriteHeader(code int)        { p.status = code }

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	if s.checks == nil {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		return
	}
	rep := s.checks.Check(r.Context())
	status := http.StatusOK
	if !rep.OK() {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, rep)
}

type teamHandler func(w http.ResponseWriter, r *http.Request, teamID string)

// withTeam authenticates the X-API-Key header.
func (s *Server) withTeam(h teamHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("X-API-Key")
		if key == "" {
			closeAfter(w)
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing API key: send it in the X-API-Key header")
			return
		}
		team, err := s.store.TeamForAPIKey(r.Context(), key)
		if errors.Is(err, store.ErrNotFound) {
			closeAfter(w)
			writeError(w, http.StatusUnauthorized, "unauthorized", "invalid API key")
			return
		}
		if err != nil {
			s.fail(w, err)
			return
		}
		httpguard.Authenticated(r.Context())
		h(w, r, team.ID)
	}
}

// fail writes err as an error envelope with the matching status.
func (s *Server) fail(w http.ResponseWriter, err error) {
	if e, ok := sandbox.AsError(err); ok {
		writeError(w, sandbox.HTTPStatus(e.Kind), e.Code, e.Message)
		return
	}
	s.log.Error("internal error", "err", err)
	writeError(w, http.StatusInternalServerError, "internal", err.Error())
}

// closeAfter ends the connection with this answer: a client that failed
// to authenticate gets no keep-alive, and its unread body is not waited for.
func closeAfter(w http.ResponseWriter) { w.Header().Set("Connection", "close") }

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var b errorBody
	b.Error.Code, b.Error.Message = code, msg
	writeJSON(w, status, b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// decodeJSON reads a JSON body strictly: unknown fields, trailing data and
// oversized bodies are errors. An empty body decodes as {} when allowEmpty.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any, allowEmpty bool) error {
	tooLarge := &sandbox.Error{Kind: sandbox.ErrTooLarge, Code: "request_too_large",
		Message: fmt.Sprintf("request body exceeds %d bytes", MaxJSONBody)}
	// Refused before the first read: with "Expect: 100-continue" that read
	// would invite the client to send the body we refuse.
	if r.ContentLength > MaxJSONBody {
		closeAfter(w)
		return tooLarge
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxJSONBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			closeAfter(w)
			return tooLarge
		}
		return invalidJSON("could not read body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if allowEmpty {
			return nil
		}
		return invalidJSON("request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalidJSON("invalid JSON body: %s", jsonErrorText(err))
	}
	if dec.More() {
		return invalidJSON("invalid JSON body: unexpected data after the object")
	}
	return checkUTF8(body)
}

// checkUTF8 rejects a JSON body with a string that is not valid UTF-8:
// encoding/json would store it rewritten to U+FFFD without a word.
func checkUTF8(body []byte) error {
	path, isKey, found := badUTF8(body)
	switch {
	case !found:
		return nil
	case isKey && path == "":
		return invalidJSON("a field name is not valid UTF-8")
	case isKey:
		return invalidJSON("field %s has a key that is not valid UTF-8", path)
	}
	return invalidJSON("field %s is not valid UTF-8", path)
}

func jsonErrorText(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Sprintf("field %q must be %s, not %s", te.Field, te.Type.String(), te.Value)
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if name, ok := strings.CutPrefix(msg, "unknown field "); ok {
		if f, err := strconv.Unquote(name); err == nil {
			return "unknown field " + sandbox.QuoteShort(f)
		}
	}
	return msg
}

func invalidJSON(format string, args ...any) error {
	return &sandbox.Error{Kind: sandbox.ErrInvalid, Code: "invalid_request", Message: fmt.Sprintf(format, args...)}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// Flush and Unwrap keep streaming and WebSocket hijacking working through the wrapper.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
