package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/secrets"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// UseSecrets serves the secrets API and secret bindings of sandboxes.
func (s *Server) UseSecrets(sec *secrets.Service) { s.secrets = sec }

func (s *Server) secretRoutes() {
	m := s.mux
	m.HandleFunc("POST /secrets", s.withSecrets(s.createSecret))
	m.HandleFunc("GET /secrets", s.withSecrets(s.listSecrets))
	m.HandleFunc("GET /secrets/{name}", s.withSecrets(s.getSecret))
	m.HandleFunc("PATCH /secrets/{name}", s.withSecrets(s.rotateSecret))
	m.HandleFunc("DELETE /secrets/{name}", s.withSecrets(s.deleteSecret))
	m.HandleFunc("GET /secrets/{name}/audit", s.withSecrets(s.secretAudit))
	m.HandleFunc("GET /secrets/{name}/sandboxes", s.withSecrets(s.secretSandboxes))
	m.HandleFunc("GET /providers", s.withTeam(s.listProviders))
	m.HandleFunc("POST /sandboxes/{id}/secrets", s.withSecrets(s.attachSecret))
	m.HandleFunc("DELETE /sandboxes/{id}/secrets/{env_key}", s.withSecrets(s.detachSecret))
}

// withSecrets is withTeam for routes that need the secrets service.
func (s *Server) withSecrets(h teamHandler) http.HandlerFunc {
	return s.withTeam(func(w http.ResponseWriter, r *http.Request, teamID string) {
		if s.secrets == nil {
			writeError(w, http.StatusNotImplemented, "not_supported", "secrets are not enabled on this server")
			return
		}
		h(w, r, teamID)
	})
}

// failSecret answers a secrets error; the messages never hold a value.
func (s *Server) failSecret(w http.ResponseWriter, err error) {
	var e *secrets.Error
	if errors.As(err, &e) {
		writeError(w, e.Status, e.Code, e.Message)
		return
	}
	s.fail(w, err)
}

// secretJSON is Superserve's SecretResponse; there is no value in it.
type secretJSON struct {
	ID               string         `json:"id"`
	Name             string         `json:"name"`
	AuthType         string         `json:"auth_type"`
	AuthConfig       map[string]any `json:"auth_config"`
	ProviderShortcut *string        `json:"provider_shortcut"`
	Hosts            []string       `json:"hosts"`
	CreatedAt        time.Time      `json:"created_at"`
	UpdatedAt        time.Time      `json:"updated_at"`
	LastUsedAt       *time.Time     `json:"last_used_at"`
}

func secretToJSON(sc *store.Secret) secretJSON {
	out := secretJSON{ID: sc.ID, Name: sc.Name, Hosts: sc.Hosts, CreatedAt: sc.CreatedAt, UpdatedAt: sc.UpdatedAt,
		LastUsedAt: sc.LastUsedAt, AuthConfig: map[string]any{}}
	if sc.Provider != "" {
		p := sc.Provider
		out.ProviderShortcut = &p
	}
	if a, err := secrets.AuthOf(sc); err == nil {
		out.AuthType, out.AuthConfig = a.Type(), a.Config()
	}
	return out
}

func (s *Server) createSecret(w http.ResponseWriter, r *http.Request, teamID string) {
	var req struct {
		Name     string          `json:"name"`
		Value    *string         `json:"value"`
		Provider *string         `json:"provider"`
		Auth     json.RawMessage `json:"auth"`
		Hosts    []string        `json:"hosts"`
	}
	if err := decodeJSON(w, r, &req, false); err != nil {
		s.fail(w, err)
		return
	}
	p := secrets.CreateParams{Name: req.Name, Value: req.Value, Auth: req.Auth, Hosts: req.Hosts}
	if req.Provider != nil {
		if *req.Provider == "" {
			writeError(w, http.StatusBadRequest, "invalid_request", "provider must not be empty")
			return
		}
		p.Provider = *req.Provider
	}
	if string(req.Auth) == "null" {
		p.Auth = nil
	}
	sc, err := s.secrets.Create(r.Context(), teamID, p)
	if err != nil {
		s.failSecret(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, secretToJSON(sc))
}

func (s *Server) listSecrets(w http.ResponseWriter, r *http.Request, teamID string) {
	list, err := s.secrets.List(r.Context(), teamID)
	if err != nil {
		s.failSecret(w, err)
		return
	}
	out := make([]secretJSON, 0, len(list))
	for _, sc := range list {
		out = append(out, secretToJSON(sc))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getSecret(w http.ResponseWriter, r *http.Request, teamID string) {
	sc, err := s.secrets.Get(r.Context(), teamID, r.PathValue("name"))
	if err != nil {
		s.failSecret(w, err)
		return
	}
	writeJSON(w, http.StatusOK, secretToJSON(sc))
}

func (s *Server) rotateSecret(w http.ResponseWriter, r *http.Request, teamID string) {
	var req struct {
		Value *string `json:"value"`
	}
	if err := decodeJSON(w, r, &req, false); err != nil {
		s.fail(w, err)
		return
	}
	sc, err := s.secrets.Rotate(r.Context(), teamID, r.PathValue("name"), req.Value)
	if err != nil {
		s.failSecret(w, err)
		return
	}
	writeJSON(w, http.StatusOK, secretToJSON(sc))
}

func (s *Server) deleteSecret(w http.ResponseWriter, r *http.Request, teamID string) {
	if err := s.secrets.Delete(r.Context(), teamID, r.PathValue("name")); err != nil {
		s.failSecret(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// auditJSON is Superserve's ProxyAuditEvent.
type auditJSON struct {
	ID             int64     `json:"id"`
	TS             time.Time `json:"ts"`
	SandboxID      string    `json:"sandbox_id"`
	SandboxName    *string   `json:"sandbox_name"`
	SecretID       string    `json:"secret_id"`
	Method         string    `json:"method"`
	Host           string    `json:"host"`
	Path           string    `json:"path"`
	Status         int       `json:"status"`
	UpstreamStatus *int      `json:"upstream_status"`
	LatencyMs      *int64    `json:"latency_ms"`
	ErrorCode      *string   `json:"error_code"`
}

func (s *Server) secretAudit(w http.ResponseWriter, r *http.Request, teamID string) {
	q := r.URL.Query()
	for k := range q {
		if k != "limit" && k != "before" && k != "status" {
			writeError(w, http.StatusBadRequest, "invalid_request", "unknown query parameter "+sandbox.Shorten(k)+" (limit, before, status)")
			return
		}
	}
	limit := secrets.DefaultAuditLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid_request", "limit must be an integer")
			return
		}
		limit = n
	}
	var before int64
	if v := q.Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "invalid_request", "before must be an event id (a positive integer)")
			return
		}
		before = n
	}
	events, err := s.secrets.Audit(r.Context(), teamID, r.PathValue("name"), limit, before, q.Get("status"))
	if err != nil {
		s.failSecret(w, err)
		return
	}
	out := make([]auditJSON, 0, len(events))
	for _, e := range events {
		out = append(out, auditJSON{ID: e.ID, TS: e.Time, SandboxID: e.SandboxID, SandboxName: e.SandboxName,
			SecretID: e.SecretID, Method: e.Method, Host: e.Host, Path: e.Path, Status: e.Status,
			UpstreamStatus: e.UpstreamStatus, LatencyMs: e.LatencyMs, ErrorCode: e.ErrorCode})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) secretSandboxes(w http.ResponseWriter, r *http.Request, teamID string) {
	list, err := s.secrets.Sandboxes(r.Context(), teamID, r.PathValue("name"))
	if err != nil {
		s.failSecret(w, err)
		return
	}
	type boundJSON struct {
		SandboxID   string `json:"sandbox_id"`
		SandboxName string `json:"sandbox_name"`
		EnvKey      string `json:"env_key"`
		Status      string `json:"status"`
	}
	out := make([]boundJSON, 0, len(list))
	for _, b := range list {
		out = append(out, boundJSON{SandboxID: b.SandboxID, SandboxName: b.SandboxName, EnvKey: b.EnvKey, Status: b.Status})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) listProviders(w http.ResponseWriter, r *http.Request, teamID string) {
	type providerJSON struct {
		Name       string         `json:"name"`
		Display    string         `json:"display"`
		AuthType   string         `json:"auth_type"`
		AuthConfig map[string]any `json:"auth_config"`
		Hosts      []string       `json:"hosts"`
		TokenShape string         `json:"token_shape"`
	}
	out := make([]providerJSON, 0, len(secrets.Providers))
	for _, p := range secrets.Providers {
		out = append(out, providerJSON{Name: p.Name, Display: p.Display, AuthType: p.Auth.Type(),
			AuthConfig: p.Auth.Config(), Hosts: p.Hosts, TokenShape: p.TokenShape})
	}
	writeJSON(w, http.StatusOK, out)
}

// bindingJSON is one secret binding in a sandbox response.
type bindingJSON struct {
	EnvKey     string `json:"env_key"`
	SecretName string `json:"secret_name"`
	Revoked    bool   `json:"revoked,omitempty"`
}

// bindingsOf returns a sandbox's bindings for its response (nil: none).
func (s *Server) bindingsOf(r *http.Request, id string) ([]bindingJSON, error) {
	if s.secrets == nil {
		return nil, nil
	}
	bs, err := s.secrets.Bindings(r.Context(), id)
	if err != nil || len(bs) == 0 {
		return nil, err
	}
	out := make([]bindingJSON, 0, len(bs))
	for _, b := range bs {
		out = append(out, bindingJSON{EnvKey: b.EnvKey, SecretName: b.SecretName, Revoked: b.Revoked})
	}
	return out, nil
}

// checkCreateSecrets validates a create's secrets before anything is made:
// env keys, that the secrets exist, and no overlap with env_vars.
func (s *Server) checkCreateSecrets(r *http.Request, teamID string, m map[string]string, env map[string]string) error {
	if len(m) == 0 {
		return nil
	}
	if s.secrets == nil {
		return &secrets.Error{Status: http.StatusNotImplemented, Code: "not_supported", Message: "secrets are not enabled on this server"}
	}
	for k, name := range m {
		if err := secrets.ValidateEnvKey(k); err != nil {
			return err
		}
		if _, ok := env[k]; ok {
			return &secrets.Error{Status: http.StatusBadRequest, Code: "invalid_request",
				Message: "secrets and env_vars both set " + k + "; an environment variable comes from one or the other"}
		}
		if _, err := s.secrets.Get(r.Context(), teamID, name); err != nil {
			var e *secrets.Error
			if errors.As(err, &e) && e.Status == http.StatusNotFound {
				return &secrets.Error{Status: http.StatusBadRequest, Code: "invalid_request",
					Message: "secrets: " + k + " names secret " + strconv.Quote(sandbox.Shorten(name)) + ", which does not exist"}
			}
			return err
		}
	}
	return nil
}

func (s *Server) attachSecret(w http.ResponseWriter, r *http.Request, teamID string) {
	var req struct {
		EnvKey     string `json:"env_key"`
		SecretName string `json:"secret_name"`
	}
	if err := decodeJSON(w, r, &req, false); err != nil {
		s.fail(w, err)
		return
	}
	if err := secrets.ValidateEnvKey(req.EnvKey); err != nil {
		s.failSecret(w, err)
		return
	}
	sb, err := s.svc.Get(r.Context(), teamID, r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	if _, ok := sb.Env[req.EnvKey]; ok {
		writeError(w, http.StatusConflict, "conflict", "env_vars of the sandbox already set "+req.EnvKey)
		return
	}
	if err := s.secrets.Bind(r.Context(), teamID, sb.ID, map[string]string{req.EnvKey: req.SecretName}); err != nil {
		s.failSecret(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"env_key": req.EnvKey, "secret_name": req.SecretName})
}

func (s *Server) detachSecret(w http.ResponseWriter, r *http.Request, teamID string) {
	sb, err := s.svc.Get(r.Context(), teamID, r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	if err := s.secrets.Detach(r.Context(), sb.ID, r.PathValue("env_key")); err != nil {
		s.failSecret(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
