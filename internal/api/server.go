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
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/metrics"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// MaxJSONBody bounds control-plane and exec request bodies.
const MaxJSONBody = 1 << 20

// Server is the HTTP handler for the whole API.
type Server struct {
	svc     *sandbox.Service
	store   *store.Store
	metrics *metrics.Registry
	log     *slog.Logger
	mux     *http.ServeMux
	preview PreviewLinker // nil: no preview links
}

// New returns the API handler.
func New(svc *sandbox.Service, st *store.Store, reg *metrics.Registry, log *slog.Logger) *Server {
	s := &Server{svc: svc, store: st, metrics: reg, log: log, mux: http.NewServeMux()}
	reg.Gauge(s.sandboxGauges)
	s.routes()
	return s
}

// sandboxGauges writes the number of sandboxes by status at scrape time.
func (s *Server) sandboxGauges(w io.Writer) {
	counts, err := s.store.CountByStatus(context.Background())
	if err != nil {
		return
	}
	fmt.Fprintln(w, "# HELP stasis_sandboxes Sandboxes by status.")
	fmt.Fprintln(w, "# TYPE stasis_sandboxes gauge")
	for _, st := range []string{store.StatusStarting, store.StatusActive, store.StatusPausing,
		store.StatusPaused, store.StatusResuming, store.StatusFailed} {
		fmt.Fprintf(w, "stasis_sandboxes{status=%q} %d\n", st, counts[st])
	}
}

// serveMetrics serves Prometheus metrics. They hold counts and latencies
// only, no identifiers, so they are served without authentication.
func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	s.metrics.Write(w)
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

	// Data plane, routed by X-Superserve-Sandbox-Id or host boxd-{id}.*.
	m.HandleFunc("POST /exec", s.withAgent(s.exec))
	m.HandleFunc("POST /exec/stream", s.withAgent(s.execStream))
	m.HandleFunc("GET /exec/connect", s.execConnect)
	m.HandleFunc("GET /files", s.withAgent(s.readFile))
	m.HandleFunc("POST /files", s.withAgent(s.writeFile))
	m.HandleFunc("GET /files/stat", s.withAgent(s.statFile))

	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	s.mux.ServeHTTP(rw, r)
	// Never log headers or query strings: they can carry keys and tokens.
	s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", rw.status, "ms", time.Since(start).Milliseconds())
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

type teamHandler func(w http.ResponseWriter, r *http.Request, teamID string)

// withTeam authenticates the X-API-Key header.
func (s *Server) withTeam(h teamHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("X-API-Key")
		if key == "" {
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing API key: send it in the X-API-Key header")
			return
		}
		team, err := s.store.TeamForAPIKey(r.Context(), key)
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, http.StatusUnauthorized, "unauthorized", "invalid API key")
			return
		}
		if err != nil {
			s.fail(w, err)
			return
		}
		h(w, r, team.ID)
	}
}

// fail writes err as an error envelope with the matching status.
func (s *Server) fail(w http.ResponseWriter, err error) {
	var e *sandbox.Error
	if errors.As(err, &e) {
		writeError(w, statusFor(e.Kind), e.Code, e.Message)
		return
	}
	s.log.Error("internal error", "err", err)
	writeError(w, http.StatusInternalServerError, "internal", err.Error())
}

func statusFor(kind error) int {
	switch kind {
	case sandbox.ErrInvalid:
		return http.StatusBadRequest
	case sandbox.ErrUnauthorized:
		return http.StatusUnauthorized
	case sandbox.ErrNotFound:
		return http.StatusNotFound
	case sandbox.ErrConflict:
		return http.StatusConflict
	case sandbox.ErrTooLarge:
		return http.StatusRequestEntityTooLarge
	case sandbox.ErrLimit:
		return http.StatusTooManyRequests
	case sandbox.ErrStorageFull:
		return http.StatusInsufficientStorage
	case sandbox.ErrUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

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
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxJSONBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &sandbox.Error{Kind: sandbox.ErrTooLarge, Code: "request_too_large",
				Message: fmt.Sprintf("request body exceeds %d bytes", MaxJSONBody)}
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
	return nil
}

func jsonErrorText(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Sprintf("field %q must be %s, not %s", te.Field, te.Type.String(), te.Value)
	}
	msg := err.Error()
	return strings.TrimPrefix(msg, "json: ")
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
