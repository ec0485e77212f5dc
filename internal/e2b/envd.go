package e2b

import (
	"compress/gzip"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"path"
	"strings"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/e2b/envdpb/filesystem/filesystemconnect"
	"github.com/stasis-sandbox/stasis/internal/e2b/envdpb/process/processconnect"
	"github.com/stasis-sandbox/stasis/internal/httpguard"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// envd is translated here, in stasisd, onto the stasis agent's API (exec
// streams, files, stat): the agent stays small, and one sandbox is usable
// through both protocols. stasisd holds each command's exec stream, so a
// command outlives its E2B client's connection.

type targetKey struct{}

// envdCall is what an envd request is for: the sandbox, its agent, and the
// user the request acts as.
type envdCall struct {
	id     string
	target *sandbox.Target
	user   string // from Authorization: Basic base64("user:"); "" = sandbox default
}

func callFrom(ctx context.Context) *envdCall { return ctx.Value(targetKey{}).(*envdCall) }

func (s *Server) envdHandler() http.Handler {
	mux := http.NewServeMux()
	path, h := processconnect.NewProcessHandler(&processService{s: s})
	mux.Handle(path, h)
	path, h = filesystemconnect.NewFilesystemHandler(&filesystemService{s: s})
	mux.Handle(path, h)
	mux.HandleFunc("GET /files", s.readFile)
	mux.HandleFunc("POST /files", s.writeFiles)
	mux.HandleFunc("GET /envs", s.envs)
	mux.HandleFunc("GET /metrics", s.envdMetrics)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no route for %s %s", r.Method, r.URL.Path)
	})
	return mux
}

// serveEnvd authenticates an envd request and hands it the sandbox's agent,
// resuming the sandbox first if it is paused.
func (s *Server) serveEnvd(w http.ResponseWriter, r *http.Request, id string) {
	if r.URL.Path == "/health" {
		// No token needed: the SDK's isRunning() asks this.
		sb, err := s.svc.Get(r.Context(), "", id)
		if err != nil || sb.Status != store.StatusActive {
			writeError(w, http.StatusBadGateway, "sandbox %q is not running", id)
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if !s.checkEnvdToken(r, id) && !s.checkFileSignature(r, id) {
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusUnauthorized, "missing or invalid X-Access-Token for sandbox %q", id)
		return
	}
	httpguard.Authenticated(r.Context())
	t, ok := s.reach(r.Context(), w, id)
	if !ok {
		return
	}
	s.reattach(id, t) // commands a pause detached
	call := &envdCall{id: id, target: t, user: basicUser(r)}
	s.envd.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), targetKey{}, call)))
}

// basicUser reads the user from "Authorization: Basic base64(user:)".
func basicUser(r *http.Request) string {
	v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Basic ")
	if !ok {
		return ""
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
	if err != nil {
		return ""
	}
	u, _, _ := strings.Cut(string(b), ":")
	return u
}

// fileError maps an agent error onto envd's /files error body.
func fileError(w http.ResponseWriter, p string, err error) {
	switch {
	case errors.Is(err, agentclient.ErrNotFound):
		writeError(w, http.StatusNotFound, "path '%s' does not exist", p)
	case errors.Is(err, agentclient.ErrIsDir):
		writeError(w, http.StatusBadRequest, "path '%s' is a directory", p)
	case errors.Is(err, agentclient.ErrInvalidPath):
		writeError(w, http.StatusBadRequest, "invalid path '%s'", p)
	case errors.Is(err, agentclient.ErrPermission):
		writeError(w, http.StatusUnauthorized, "permission denied for '%s'", p)
	case errors.Is(err, agentclient.ErrNoSpace):
		writeError(w, http.StatusInsufficientStorage, "not enough disk space available")
	default:
		writeError(w, http.StatusBadGateway, "sandbox agent: %v", err)
	}
}

// filesPath resolves the path of a /files request: relative paths are
// relative to the user's home.
func (s *Server) filesPath(ctx context.Context, c *envdCall, p, user string) (string, error) {
	if p == "" {
		return "", errors.New("path is required")
	}
	if path.IsAbs(p) {
		return path.Clean(p), nil
	}
	return s.absPath(ctx, c, user, p)
}

func (s *Server) readFile(w http.ResponseWriter, r *http.Request) {
	c := callFrom(r.Context())
	q := r.URL.Query()
	p, err := s.filesPath(r.Context(), c, q.Get("path"), q.Get("username"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	body, size, err := c.target.Agent.ReadFile(r.Context(), p)
	if err != nil {
		fileError(w, p, err)
		return
	}
	defer body.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": path.Base(p)}))
	if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") && size != 0 {
		w.Header().Set("Content-Encoding", "gzip")
		w.WriteHeader(http.StatusOK)
		gz := gzip.NewWriter(w)
		io.Copy(gz, body)
		gz.Close()
		return
	}
	if size >= 0 {
		w.Header().Set("Content-Length", fmt.Sprint(size))
	}
	w.WriteHeader(http.StatusOK)
	io.Copy(w, body)
}

type uploadedJSON struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

// writeFiles serves POST /files: multipart (one part per file, the target
// path as the part's filename) or a raw body for ?path=, optionally gzipped.
func (s *Server) writeFiles(w http.ResponseWriter, r *http.Request) {
	c := callFrom(r.Context())
	q := r.URL.Query()
	user := q.Get("username")
	var out []uploadedJSON
	write := func(p string, body io.Reader, size int64) bool {
		abs, err := s.filesPath(r.Context(), c, p, user)
		if err != nil {
			writeError(w, http.StatusBadRequest, "%v", err)
			return false
		}
		if err := c.target.Agent.WriteFile(r.Context(), abs, body, size); err != nil {
			fileError(w, abs, err)
			return false
		}
		out = append(out, uploadedJSON{Path: abs, Name: path.Base(abs), Type: "file"})
		return true
	}
	var body io.Reader = r.Body
	if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
		gz, err := gzip.NewReader(r.Body)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid gzip body: %v", err)
			return
		}
		body = gz
	}
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "multipart/form-data" {
		size := r.ContentLength
		if body != r.Body {
			size = -1
		}
		if !write(q.Get("path"), body, size) {
			return
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	mr := multipart.NewReader(body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid multipart body: %v", err)
			return
		}
		if part.FormName() != "file" {
			continue
		}
		// The filename is the full target path: Part.FileName would strip
		// its directories.
		_, dp, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
		p := dp["filename"]
		if p == "" {
			p = q.Get("path")
		}
		if !write(p, part, -1) {
			return
		}
	}
	if len(out) == 0 {
		writeError(w, http.StatusBadRequest, "no file in the multipart body")
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// envs serves GET /envs: the environment commands get by default.
func (s *Server) envs(w http.ResponseWriter, r *http.Request) {
	c := callFrom(r.Context())
	sb, err := s.svc.Get(r.Context(), "", c.id)
	if err != nil {
		s.fail(w, err)
		return
	}
	out := map[string]string{}
	for k, v := range sb.Defaults.Env {
		out[k] = v
	}
	for k, v := range sb.Env {
		out[k] = v
	}
	writeJSON(w, http.StatusOK, out)
}
