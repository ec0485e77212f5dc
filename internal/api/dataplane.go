package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/cluster"
	"github.com/stasis-sandbox/stasis/internal/httpguard"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// MaxBufferedOutput caps each of stdout and stderr in a buffered /exec
// response; the rest is dropped and a marker says so. Streaming endpoints
// are not buffered and not capped.
const MaxBufferedOutput = 4 << 20

// dataPlaneID finds which sandbox a data-plane request is for: the
// X-Superserve-Sandbox-Id header, a boxd-{id}.{domain} host, or (for clients
// that cannot set headers on a WebSocket) a sandbox_id query parameter.
func dataPlaneID(r *http.Request) string {
	if id := r.Header.Get("X-Superserve-Sandbox-Id"); id != "" {
		return id
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if rest, ok := strings.CutPrefix(host, "boxd-"); ok {
		if id, _, ok := strings.Cut(rest, "."); ok {
			return id
		}
	}
	return r.URL.Query().Get("sandbox_id")
}

// DataPlaneID is dataPlaneID for routers in front of the API (a cluster
// node forwards a data-plane request to the node running its sandbox).
func DataPlaneID(r *http.Request) string { return dataPlaneID(r) }

type agentHandler func(w http.ResponseWriter, r *http.Request, t *sandbox.Target)

// withAgent authenticates the X-Access-Token header for the addressed
// sandbox and hands the handler a client for its agent (resuming the sandbox
// first if it is paused).
func (s *Server) withAgent(h agentHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, ok := s.agentFor(w, r, r.Header.Get("X-Access-Token"))
		if !ok {
			return
		}
		h(w, r, c)
		// The agent did not answer: have the sandbox's link and agent
		// checked now, so it does not stay "active" while unusable.
		if sw, ok := w.(*statusWriter); ok && sw.status == http.StatusBadGateway {
			s.svc.CheckSoon(dataPlaneID(r))
		}
	}
}

func (s *Server) agentFor(w http.ResponseWriter, r *http.Request, token string) (*sandbox.Target, bool) {
	id := dataPlaneID(r)
	if id == "" {
		closeAfter(w)
		writeError(w, http.StatusBadRequest, "invalid_request",
			"missing sandbox id: send the X-Superserve-Sandbox-Id header")
		return nil, false
	}
	agent := s.svc.Agent
	if r.Header.Get(cluster.ForwardedHeader) != "" {
		// Sent here as to the owner: refuse if another node owns it now,
		// so the forwarding node re-reads the owner and retries.
		agent = s.svc.OwnedAgent
	}
	c, err := agent(r.Context(), id, token)
	if errors.Is(err, sandbox.ErrNotOwner) { // the token was valid
		httpguard.Authenticated(r.Context())
		w.Header().Set(cluster.NotOwnerHeader, "1")
		s.fail(w, err)
		return nil, false
	}
	if err != nil {
		closeAfter(w) // perhaps not authenticated: see withTeam
		s.fail(w, err)
		return nil, false
	}
	httpguard.Authenticated(r.Context())
	return c, true
}

type execRequest struct {
	Command    string            `json:"command"`
	WorkingDir string            `json:"working_dir"`
	Env        map[string]string `json:"env"`
	TimeoutS   int               `json:"timeout_s"`
	// OutputEncoding (a stasis extension) "base64" sends stdout and stderr
	// as base64 of the exact bytes; by default they are text, with bytes
	// that are not UTF-8 replaced by U+FFFD.
	OutputEncoding string `json:"output_encoding"`
}

// Output encodings of an exec response.
const (
	encodingText   = "utf8"
	encodingBase64 = "base64"
)

func (e *execRequest) validate() error {
	if strings.TrimSpace(e.Command) == "" {
		return invalidJSON("command must not be empty")
	}
	if strings.IndexByte(e.Command, 0) >= 0 {
		return invalidJSON("command must not contain NUL bytes")
	}
	if e.WorkingDir != "" {
		if err := validatePath(e.WorkingDir); err != nil {
			return err
		}
	}
	// What execve and the agent accept: names without "=" or NUL.
	for k, v := range e.Env {
		switch {
		case k == "":
			return invalidJSON("env: a variable name is empty")
		case strings.ContainsAny(k, "=\x00"):
			return invalidJSON("env: name %s must not contain \"=\" or NUL bytes", sandbox.QuoteShort(k))
		case strings.IndexByte(v, 0) >= 0:
			return invalidJSON("env: the value of %s must not contain NUL bytes", sandbox.QuoteShort(k))
		}
	}
	if e.TimeoutS < 0 {
		return invalidJSON("timeout_s must not be negative")
	}
	switch e.OutputEncoding {
	case "", encodingText, encodingBase64:
	default:
		return invalidJSON("output_encoding must be %q or %q, not %s", encodingText, encodingBase64, sandbox.QuoteShort(e.OutputEncoding))
	}
	return nil
}

// decodeExec reads and validates an exec request body, answering the
// client itself when it is bad.
func (s *Server) decodeExec(w http.ResponseWriter, r *http.Request) (*execRequest, bool) {
	var req execRequest
	if err := decodeJSON(w, r, &req, false); err != nil {
		s.fail(w, err)
		return nil, false
	}
	if err := req.validate(); err != nil {
		s.fail(w, err)
		return nil, false
	}
	return &req, true
}

// agentRequest is the request for the agent, with the sandbox's defaults
// (from its template) filled in where the client said nothing.
func (e *execRequest) agentRequest(d store.ExecDefaults) agentclient.ExecRequest {
	ar := agentclient.ExecRequest{Command: e.Command, WorkingDir: e.WorkingDir, TimeoutS: e.TimeoutS, User: d.User}
	if ar.WorkingDir == "" {
		ar.WorkingDir = d.Workdir
	}
	if len(d.Env) > 0 || len(e.Env) > 0 {
		ar.Env = make(map[string]string, len(d.Env)+len(e.Env))
		for k, v := range d.Env {
			ar.Env[k] = v
		}
		for k, v := range e.Env {
			ar.Env[k] = v
		}
	}
	return ar
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request, t *sandbox.Target) {
	c := t.Agent
	req, ok := s.decodeExec(w, r)
	if !ok {
		return
	}
	start := time.Now()
	stdout, stderr := &cappedBuffer{limit: MaxBufferedOutput}, &cappedBuffer{limit: MaxBufferedOutput}
	st, err := c.Run(r.Context(), req.agentRequest(t.Defaults), stdout, stderr)
	if err != nil {
		s.metrics.Fail("exec", "agent")
		s.failAgent(w, err, "")
		return
	}
	s.metrics.Observe("exec", time.Since(start))
	resp := execResult(req.OutputEncoding, stdout, stderr, st)
	body := resp.appendJSON(make([]byte, 0, resp.jsonSizeHint()))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// execResponse is the body of a buffered POST /exec.
type execResponse struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error,omitempty"`
	// With output_encoding "base64" (a stasis extension): the encoding, and
	// how many bytes beyond MaxBufferedOutput each stream dropped.
	OutputEncoding       string `json:"output_encoding,omitempty"`
	StdoutTruncatedBytes int64  `json:"stdout_truncated_bytes,omitempty"`
	StderrTruncatedBytes int64  `json:"stderr_truncated_bytes,omitempty"`
}

func execResult(encoding string, stdout, stderr *cappedBuffer, st agentclient.ExitStatus) execResponse {
	if encoding == encodingBase64 {
		return execResponse{
			Stdout:         base64.StdEncoding.EncodeToString(stdout.buf.Bytes()),
			Stderr:         base64.StdEncoding.EncodeToString(stderr.buf.Bytes()),
			ExitCode:       st.ExitCode,
			Error:          st.Error,
			OutputEncoding: encodingBase64, StdoutTruncatedBytes: stdout.dropped, StderrTruncatedBytes: stderr.dropped,
		}
	}
	resp := execResponse{Stdout: stdout.text(), Stderr: stderr.text(), ExitCode: st.ExitCode, Error: st.Error}
	if st.Error != "" {
		// The SDK's buffered run has no error field; surface it on stderr as
		// its streaming run does.
		resp.Stderr += st.Error
	}
	return resp
}

// execStream runs a command and streams its output as Server-Sent Events.
func (s *Server) execStream(w http.ResponseWriter, r *http.Request, t *sandbox.Target) {
	c := t.Agent
	req, ok := s.decodeExec(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stopped := make(chan struct{})
	go func() {
		select {
		case <-t.Done: // paused or deleted: end the stream instead of hanging
			close(stopped)
			cancel()
		case <-ctx.Done():
		}
	}()
	p, err := c.Start(ctx, req.agentRequest(t.Defaults))
	if err != nil {
		s.failAgent(w, err, "")
		return
	}
	defer p.Close()
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(v any) error {
		b, _ := json.Marshal(v)
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	}
	var outText, errText utf8Joiner
	chunk := func(j *utf8Joiner, data []byte) string {
		if req.OutputEncoding == encodingBase64 {
			return base64.StdEncoding.EncodeToString(data)
		}
		return j.push(data)
	}
	for {
		ev, err := p.Next()
		if err != nil {
			msg := "lost connection to the sandbox: " + err.Error()
			select {
			case <-stopped:
				msg = t.EndReason() + " while the command ran"
			default:
			}
			send(map[string]any{"finished": true, "exit_code": -1, "error": msg})
			return
		}
		switch ev.Kind {
		case agentclient.EventStdout:
			if t := chunk(&outText, ev.Data); t != "" && send(map[string]string{"stdout": t}) != nil {
				return
			}
		case agentclient.EventStderr:
			if t := chunk(&errText, ev.Data); t != "" && send(map[string]string{"stderr": t}) != nil {
				return
			}
		case agentclient.EventExit:
			if t := outText.flush(); t != "" {
				send(map[string]string{"stdout": t})
			}
			if t := errText.flush(); t != "" {
				send(map[string]string{"stderr": t})
			}
			fin := map[string]any{"finished": true, "exit_code": ev.Exit.ExitCode}
			if ev.Exit.Error != "" {
				fin["error"] = ev.Exit.Error
			}
			send(fin)
			return
		}
	}
}

// validatePath enforces what the SDK promises: absolute paths without "..".
func validatePath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return &sandbox.Error{Kind: sandbox.ErrInvalid, Code: "invalid_path", Message: "path must be absolute: " + sandbox.QuoteShort(p)}
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return &sandbox.Error{Kind: sandbox.ErrInvalid, Code: "invalid_path", Message: "path must not contain \"..\": " + sandbox.QuoteShort(p)}
		}
	}
	if strings.IndexByte(p, 0) >= 0 {
		return &sandbox.Error{Kind: sandbox.ErrInvalid, Code: "invalid_path", Message: "path must not contain NUL bytes"}
	}
	return nil
}

func (s *Server) readFile(w http.ResponseWriter, r *http.Request, t *sandbox.Target) {
	c := t.Agent
	path := r.URL.Query().Get("path")
	if err := validatePath(path); err != nil {
		s.fail(w, err)
		return
	}
	var body io.ReadCloser
	var size int64 = -1
	var err error
	switch f := r.URL.Query().Get("format"); f {
	case "zip":
		body, err = c.ZipDir(r.Context(), path)
		w.Header().Set("Content-Type", "application/zip")
	case "", "raw":
		body, size, err = c.ReadFile(r.Context(), path)
		w.Header().Set("Content-Type", "application/octet-stream")
	default:
		writeError(w, http.StatusBadRequest, "invalid_request", "unknown format "+sandbox.QuoteShort(f)+" (use zip, or omit it)")
		return
	}
	if err != nil {
		w.Header().Del("Content-Type")
		s.failAgent(w, err, path)
		return
	}
	defer body.Close()
	if size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	io.CopyBuffer(w, body, make([]byte, 256<<10))
}

func (s *Server) writeFile(w http.ResponseWriter, r *http.Request, t *sandbox.Target) {
	c := t.Agent
	path := r.URL.Query().Get("path")
	if err := validatePath(path); err != nil {
		s.fail(w, err)
		return
	}
	if strings.HasSuffix(path, "/") {
		s.fail(w, &sandbox.Error{Kind: sandbox.ErrInvalid, Code: "invalid_path", Message: "path names a directory; give a file path"})
		return
	}
	if err := c.WriteFile(r.Context(), path, r.Body, r.ContentLength); err != nil {
		s.failAgent(w, err, path)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"path": path})
}

func (s *Server) statFile(w http.ResponseWriter, r *http.Request, t *sandbox.Target) {
	c := t.Agent
	path := r.URL.Query().Get("path")
	if err := validatePath(path); err != nil {
		s.fail(w, err)
		return
	}
	fi, err := c.Stat(r.Context(), path)
	if err != nil {
		s.failAgent(w, err, path)
		return
	}
	writeJSON(w, http.StatusOK, fi)
}

// failAgent maps an agent error onto the API's envelope. path is the file
// the call was about ("" for exec): where the agent's message echoes it, a
// long one is cut short.
func (s *Server) failAgent(w http.ResponseWriter, err error, path string) {
	msg := agentMessage(err)
	if path != "" {
		for _, p := range []string{path, filepath.Clean(path)} {
			msg = strings.ReplaceAll(msg, p, sandbox.Shorten(p))
		}
	}
	var ae *agentclient.Error
	switch {
	case errors.Is(err, agentclient.ErrNotFound):
		writeError(w, http.StatusNotFound, "file_not_found", msg)
	case errors.Is(err, agentclient.ErrInvalidPath), errors.Is(err, agentclient.ErrIsDir):
		writeError(w, http.StatusBadRequest, "invalid_path", msg)
	case errors.Is(err, agentclient.ErrPermission):
		// 400, not 403: the SDK treats 401/403 as a stale token and would
		// re-activate and retry pointlessly.
		writeError(w, http.StatusBadRequest, "permission_denied", msg)
	case errors.Is(err, agentclient.ErrNoSpace):
		writeError(w, http.StatusInsufficientStorage, "sandbox_storage_full", msg)
	case errors.Is(err, agentclient.ErrUnauthorized):
		// The agent refuses stasisd's own credential: no access token the
		// client could get would help (so not 401/403, which make SDKs
		// re-activate and retry), and the sandbox itself cannot be reached.
		s.log.Error("sandbox agent refuses stasisd's credential", "err", err)
		writeError(w, http.StatusBadGateway, "agent_unavailable", agentUnavailableMessage)
	case errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500:
		writeError(w, http.StatusBadRequest, ae.Code, msg)
	case errors.As(err, &ae):
		// The agent answered, so the sandbox is reachable: not a 502, which
		// SDKs answer by re-activating the sandbox and retrying.
		s.log.Error("agent call failed", "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "the sandbox's agent failed: "+msg)
	default:
		s.log.Error("agent call failed", "err", err)
		writeError(w, http.StatusBadGateway, "sandbox_unreachable", "the sandbox did not answer: "+err.Error())
	}
}

// agentUnavailableMessage is the message of a 502 agent_unavailable: what
// happened and what to do (docs/OPERATIONS.md, "The agent's credential, and a lost agent").
const agentUnavailableMessage = "the sandbox's agent no longer accepts stasisd's credential, so its processes and files cannot be reached " +
	"(if the server's node.key was replaced, restore it and restart stasisd); otherwise delete the sandbox, " +
	"or start a new one from a snapshot or fork taken before this happened"

func agentMessage(err error) string {
	var ae *agentclient.Error
	if errors.As(err, &ae) && ae.Message != "" {
		return ae.Message
	}
	return err.Error()
}
