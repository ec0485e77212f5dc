// Package agent is stasis-agent's server: it runs commands and serves files
// inside a sandbox on behalf of stasisd, speaking the protocol in
// internal/agentproto. It is a library so that it can be tested as an ordinary
// process; cmd/stasis-agent wires it up as the sandbox's PID 1.
package agent

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentproto"
	http "github.com/stasis-sandbox/stasis/internal/minihttp" // net/http's API, not its weight (see the package)
)

// Server is the agent's HTTP server.
type Server struct {
	cfg    Config
	reaper *Reaper
	log    *log.Logger
	start  time.Time
	pid    int // /health's, asked once (a system call is a trap into gVisor)

	tokenHash atomic.Pointer[[sha256.Size]byte] // of the token; the agent never keeps the token

	mux *http.ServeMux

	mu   sync.Mutex
	srv  *http.Server
	runs map[*execSession]struct{}
	kept keptTable // commands that outlive their connection (attach.go)

	watchdogKick chan struct{} // see kickWatchdog

	// booted is closed once the sandbox's set-up (Boot) is done, bootErr
	// then says whether it failed. Requests other than /health wait for it.
	// bootStart is closed (startBoot) by the first request: the set-up
	// waits for it.
	booted    chan struct{}
	bootErr   error
	bootStart chan struct{}
	bootOnce  sync.Once

	// The spare shell (spare.go).
	spareMu      sync.Mutex
	spare        *spareShell   // ready for the next command; nil if none
	spareFilling chan struct{} // non-nil while one is started; closed after
	spareClosed  bool          // shut down: start no more
}

// New returns a Server. Commands are started through reaper, which must
// outlive the server. logger receives errors only (nil: discard). Boot
// checks that the default user exists.
func New(cfg Config, reaper *Reaper, logger *log.Logger) (*Server, error) {
	if cfg.TokenHash == ([sha256.Size]byte{}) {
		return nil, errors.New("agent: no token hash")
	}
	if reaper == nil {
		return nil, errors.New("agent: nil reaper")
	}
	if cfg.DefaultWorkdir != "" && !strings.HasPrefix(cfg.DefaultWorkdir, "/") {
		return nil, fmt.Errorf("agent: default workdir %q is not absolute", cfg.DefaultWorkdir)
	}
	if logger == nil {
		logger = log.New(io.Discard, "", 0)
	}
	s := &Server{
		cfg:    cfg,
		reaper: reaper,
		log:    logger,
		start:  time.Now(),
		pid:    os.Getpid(),
		mux:    http.NewServeMux(),
		runs:   make(map[*execSession]struct{}),

		watchdogKick: make(chan struct{}, 1),
		booted:       make(chan struct{}),
		bootStart:    make(chan struct{}),
	}
	close(s.booted) // nothing to set up unless Boot says otherwise
	h := cfg.TokenHash
	s.tokenHash.Store(&h)
	s.mux.HandleFunc(agentproto.PathHealth, s.handleHealth)
	s.mux.HandleFunc(agentproto.PathToken, s.handleToken)
	s.mux.HandleFunc(agentproto.PathExec, s.handleExec)
	s.mux.HandleFunc(agentproto.PathFiles, s.handleFiles)
	s.mux.HandleFunc(agentproto.PathStat, s.handleStat)
	s.mux.HandleFunc(agentproto.PathQuiesce, s.handleQuiesce)
	return s, nil
}

// Boot checks the default user and runs setup, what the sandbox needs
// before the first command (its resolver, its trust store), in the
// background, and returns its result once it is done. Until then every
// request but /health waits for it, and if it failed they are answered with
// its error. Both start only once the first request arrives, and for a
// /health once it is answered: stasisd waits for that answer at create,
// and in gVisor the set-up's reads and writes (the gofer's) and the threads
// Go starts for them would otherwise compete with it (5-15 ms in
// docs/density/NOTES.md "Create floor"). Call it before Serve.
func (s *Server) Boot(setup func() error) <-chan error {
	done := make(chan struct{})
	s.booted = done
	res := make(chan error, 1)
	go func() {
		<-s.bootStart
		_, err := lookupAccount(s.cfg.DefaultUser)
		if err != nil {
			err = fmt.Errorf("agent: default user: %w", err)
		} else {
			err = setup()
		}
		s.bootErr = err
		close(done)
		res <- err
	}()
	return res
}

// Handler returns the server's authenticated HTTP handler.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

// Listen listens on TCP address addr with agentproto.KeepAlive on the
// connections it accepts (Go's default would probe an idle one every 15 s,
// waking the sandbox). It listens on plain TCP, and on IPv4 only for an
// address without a host (the sandbox's link is IPv4): Go would otherwise
// first try a Multipath TCP socket (gVisor has none) and probe the IPv6
// stack, 12 system calls that every cold create waits for, each a trap into
// gVisor (docs/density/NOTES.md, "Session 13").
func Listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAliveConfig: agentproto.KeepAlive()}
	lc.SetMultipathTCP(false)
	return lc.Listen(context.Background(), listenNetwork(addr), addr)
}

// listenNetwork is "tcp4" for an address without a host, else "tcp".
func listenNetwork(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil && host == "" {
		return "tcp4"
	}
	return "tcp"
}

// Serve accepts connections on ln until Shutdown is called.
func (s *Server) Serve(ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       10 * time.Minute,
		ErrorLog:          s.log,
	}
	s.mu.Lock()
	if s.srv != nil {
		s.mu.Unlock()
		return errors.New("agent: Serve called twice")
	}
	s.srv = srv
	s.mu.Unlock()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting requests, kills the process groups of running
// commands (hijacked exec streams are not the HTTP server's), closes the
// connections that have not sent a request (stasisd dials the next exec's
// ahead of need) and waits for in-flight plain requests until ctx is done.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv := s.srv
	runs := make([]*execSession, 0, len(s.runs))
	for r := range s.runs {
		runs = append(runs, r)
	}
	s.mu.Unlock()
	for _, r := range runs {
		r.abort()
	}
	s.closeSpare()
	if srv == nil {
		return nil
	}
	return srv.Shutdown(ctx)
}

// authorized compares the hash of the bearer token with the one the agent
// holds, in constant time (and the hash does not even leak the token's
// length).
func (s *Server) authorized(r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return false
	}
	got := agentproto.TokenHash(tok)
	want := s.tokenHash.Load()
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r) {
		writeError(w, http.StatusUnauthorized, agentproto.CodeUnauthorized, "missing or invalid token")
		return
	}
	if r.URL.Path == agentproto.PathHealth {
		s.mux.ServeHTTP(w, r)
		if f, ok := w.(http.Flusher); ok {
			f.Flush() // the answer is out before the set-up starts
		}
		s.startBoot()
		return
	}
	s.startBoot()
	<-s.booted
	if s.bootErr != nil {
		writeError(w, http.StatusInternalServerError, agentproto.CodeInternal, "sandbox set-up failed: "+s.bootErr.Error())
		return
	}
	s.mux.ServeHTTP(w, r)
}

// startBoot lets Boot's set-up start.
func (s *Server) startBoot() { s.bootOnce.Do(func() { close(s.bootStart) }) }

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	if !allowMethods(w, r, http.MethodGet, http.MethodHead) {
		return
	}
	writeJSON(w, http.StatusOK, agentproto.Health{
		Pid:      s.pid,
		UptimeMs: time.Since(s.start).Milliseconds(),
		Version:  agentproto.Version,
	})
}

// handleQuiesce readies the sandbox for a checkpoint: what the agent can
// rebuild later (its spare shell) goes, so the snapshot carries less.
func (s *Server) handleQuiesce(w http.ResponseWriter, r *http.Request) {
	if !allowMethods(w, r, http.MethodPost) {
		return
	}
	s.dropSpare()
	releaseMemory()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if !allowMethods(w, r, http.MethodPost) {
		return
	}
	var req agentproto.TokenRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, agentproto.CodeBadRequest, "bad token request: "+err.Error())
		return
	}
	if req.Token == "" {
		writeError(w, http.StatusBadRequest, agentproto.CodeBadRequest, "empty token")
		return
	}
	h := agentproto.TokenHash(req.Token)
	s.tokenHash.Store(&h)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) track(r *execSession, on bool) {
	s.mu.Lock()
	if on {
		s.runs[r] = struct{}{}
	} else {
		delete(s.runs, r)
	}
	s.mu.Unlock()
}

func allowMethods(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, http.StatusMethodNotAllowed, agentproto.CodeMethodNotAllowed, "method "+r.Method+" not allowed")
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, agentproto.ErrorBody{Error: agentproto.ErrorDetail{Code: code, Message: msg}})
}
