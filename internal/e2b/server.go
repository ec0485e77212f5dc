// Package e2b serves E2B's protocol on stasis: the REST control plane the
// e2b SDK calls, and the in-sandbox daemon envd (Connect-RPC process and
// filesystem services, /files), translated onto the sandbox service and the
// stasis agent. Requests that name a sandbox (E2b-Sandbox-Id, or a host
// {port}-{id}.{domain}) go to the sandbox; all others are the control plane.
package e2b

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/stasis-sandbox/stasis/internal/httpguard"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// EnvdPort is the port E2B clients address envd on.
const EnvdPort = 49983

// EnvdVersion is the envd version stasis reports. The SDK gates features on
// it (e2b-protocol.md §3.9): 0.5.2 enables closeStdin and the default user;
// file metadata (0.6.2) and watch entries (0.6.3) are not implemented, so
// the SDK refuses them with a clear error rather than getting wrong answers.
const EnvdVersion = "0.5.7"

// Server is the E2B handler: control plane and sandbox router on one address.
type Server struct {
	svc     *sandbox.Service
	store   store.Store
	log     *slog.Logger
	control *http.ServeMux
	envd    http.Handler

	mu    sync.Mutex
	procs map[string]*procTable // by sandbox ID: envd processes stasisd tracks
}

// New returns the E2B handler.
func New(svc *sandbox.Service, st store.Store, log *slog.Logger) *Server {
	s := &Server{svc: svc, store: st, log: log, control: http.NewServeMux(), procs: map[string]*procTable{}}
	s.controlRoutes()
	s.envd = s.envdHandler()
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, port, ok := sandboxTarget(r)
	if !ok {
		s.control.ServeHTTP(w, r)
		return
	}
	if port == EnvdPort {
		s.serveEnvd(w, r, id)
		return
	}
	s.proxyPort(w, r, id, port)
}

// sandboxTarget tells which sandbox and port a request is for: the
// E2b-Sandbox-Id and E2b-Sandbox-Port headers, or a host {port}-{id}.{domain}.
func sandboxTarget(r *http.Request) (id string, port int, ok bool) {
	if id = r.Header.Get("E2b-Sandbox-Id"); id != "" {
		port = EnvdPort
		if p := r.Header.Get("E2b-Sandbox-Port"); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				return id, 0, true
			}
			port = n
		}
		return id, port, true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	label, _, found := strings.Cut(host, ".")
	if !found {
		return "", 0, false
	}
	p, sid, found := strings.Cut(label, "-")
	n, err := strconv.Atoi(p)
	if !found || err != nil || n < 1 || n > 65535 || sid == "" {
		return "", 0, false
	}
	return sid, n, true
}

// apiError is E2B's error body; the SDK matches on the numeric code, which
// equals the HTTP status.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, apiError{Code: status, Message: fmt.Sprintf(format, args...)})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// fail writes a service error with the status E2B clients expect.
func (s *Server) fail(w http.ResponseWriter, err error) {
	if e, ok := sandbox.AsError(err); ok {
		writeError(w, sandbox.HTTPStatus(e.Kind), "%s", e.Message)
		return
	}
	s.log.Error("e2b: internal error", "err", err)
	writeError(w, http.StatusInternalServerError, "%v", err)
}

type teamHandler func(w http.ResponseWriter, r *http.Request, teamID string)

// withTeam authenticates X-API-Key: a stasis API key.
func (s *Server) withTeam(h teamHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("X-API-Key")
		if key == "" {
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusUnauthorized, "missing API key: send it in the X-API-Key header")
			return
		}
		team, err := s.store.TeamForAPIKey(r.Context(), key)
		if errors.Is(err, store.ErrNotFound) {
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusUnauthorized, "invalid API key")
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

// checkEnvdToken authenticates an envd request for sandbox id by its
// X-Access-Token, in constant time.
func (s *Server) checkEnvdToken(r *http.Request, id string) bool {
	return tokenEqual(r.Header.Get("X-Access-Token"), s.svc.EnvdToken(id))
}

func tokenEqual(got, want string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// reach returns the agent of sandbox id (resuming it if paused), or writes
// E2B's answer for a sandbox that is not there: 502, which the SDK reads as
// "not running".
func (s *Server) reach(ctx context.Context, w http.ResponseWriter, id string) (*sandbox.Target, bool) {
	if _, err := s.svc.Get(ctx, "", id); err != nil {
		writeError(w, http.StatusBadGateway, "sandbox %q is not running", id)
		return nil, false
	}
	t, err := s.svc.Reach(ctx, id)
	if err != nil {
		s.fail(w, err)
		return nil, false
	}
	return t, true
}
