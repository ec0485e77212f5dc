// Package secrets keeps credentials that never enter a sandbox: values
// sealed at rest (crypto.go), how each is attached to a request (auth.go),
// the provider catalogue, and the policy of bindings, stand-in tokens and
// the audit trail (this file). The egress interceptor asks Resolve which
// credential a request's stand-in token stands for.
package secrets

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/store"
)

// Store is what the service keeps its state in (package store's SQLite).
type Store interface {
	InsertSecret(ctx context.Context, sc *store.Secret) error
	GetSecret(ctx context.Context, teamID, name string) (*store.Secret, error)
	GetSecretByID(ctx context.Context, id string) (*store.Secret, error)
	ListSecrets(ctx context.Context, teamID string) ([]*store.Secret, error)
	SetSecretValue(ctx context.Context, id string, sealed []byte) (time.Time, error)
	DeleteSecret(ctx context.Context, id string) error
	AddSecretBindings(ctx context.Context, bs []*store.SecretBinding) error
	SecretBindings(ctx context.Context, sandboxID string, withDetached bool) ([]*store.SecretBinding, error)
	DetachSecretBinding(ctx context.Context, sandboxID, envKey string) error
	CopySecretBindings(ctx context.Context, from, to string) error
	SecretSandboxes(ctx context.Context, secretID string) ([]store.SecretSandbox, error)
	AddSecretAudit(ctx context.Context, ev *store.SecretAuditEvent) error
	ListSecretAudit(ctx context.Context, q store.AuditQuery) ([]*store.SecretAuditEvent, error)
}

// Error is a refusal the API passes on: Status is the HTTP status.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

func invalid(format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Code: "invalid_request", Message: fmt.Sprintf(format, args...)}
}

func notFound(name string) *Error {
	return &Error{Status: http.StatusNotFound, Code: "not_found", Message: fmt.Sprintf("secret %s not found", quote(name))}
}

// quote quotes a client's string for an error message, cut at 64 bytes.
func quote(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%q…", s[:64])
	}
	return fmt.Sprintf("%q", s)
}

// Service is the secrets policy. It is safe for concurrent use.
type Service struct {
	st       Store
	seal     *Sealer
	tokenKey []byte // stand-in tokens are derived from it and a per-binding seed
	cache    viewCache
}

// New returns the service; key is the data dir's secrets key.
func New(st Store, key []byte) (*Service, error) {
	s, err := NewSealer(key)
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("stasis-standin-token"))
	return &Service{st: st, seal: s, tokenKey: m.Sum(nil)}, nil
}

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)
	envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// CreateParams is a POST /secrets body.
type CreateParams struct {
	Name     string
	Value    *string
	Provider string
	Auth     json.RawMessage // nil: absent
	Hosts    []string        // nil: absent
}

// Create validates and stores a new secret.
func (s *Service) Create(ctx context.Context, teamID string, p CreateParams) (*store.Secret, error) {
	if err := ValidateName(p.Name); err != nil {
		return nil, err
	}
	switch {
	case p.Value == nil || *p.Value == "":
		return nil, invalid("value is required")
	case len(*p.Value) > MaxValueLen:
		return nil, invalid("value is %d bytes; the limit is %d", len(*p.Value), MaxValueLen)
	case !validHeaderValue(*p.Value):
		return nil, invalid("value must not contain control characters (it is sent in an HTTP header)")
	}
	sc := &store.Secret{ID: "sec_" + randomHex(12), TeamID: teamID, Name: p.Name}
	var auth Auth
	if p.Provider != "" {
		if p.Auth != nil || p.Hosts != nil {
			return nil, invalid("give provider, or auth and hosts, not both")
		}
		pr, ok := LookupProvider(p.Provider)
		if !ok {
			return nil, invalid("provider %s is unknown (GET /providers lists them)", quote(p.Provider))
		}
		auth, sc.Hosts, sc.Provider, sc.TokenShape = pr.Auth, pr.Hosts, pr.Name, pr.TokenShape
	} else {
		if p.Auth == nil || p.Hosts == nil {
			return nil, invalid("give provider, or both auth and hosts")
		}
		var err error
		if auth, err = ParseAuth(p.Auth); err != nil {
			return nil, err
		}
		if len(p.Hosts) == 0 || len(p.Hosts) > MaxHosts {
			return nil, invalid("hosts must list 1 to %d hosts", MaxHosts)
		}
		seen := map[string]bool{}
		for _, h := range p.Hosts {
			if err := validateHost(h); err != nil {
				return nil, err
			}
			h = strings.ToLower(h)
			if !seen[h] {
				seen[h] = true
				sc.Hosts = append(sc.Hosts, h)
			}
		}
		if err := auth.validate(sc.Hosts); err != nil {
			return nil, err
		}
	}
	sc.Auth, _ = json.Marshal(auth)
	sc.Value = s.seal.Seal([]byte(*p.Value), sc.ID)
	if err := s.st.InsertSecret(ctx, sc); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil, &Error{Status: http.StatusConflict, Code: "conflict", Message: fmt.Sprintf("a secret called %s exists", quote(p.Name))}
		}
		return nil, err
	}
	return sc, nil
}

// ValidateName checks a secret's name.
func ValidateName(name string) error {
	if len(name) > MaxNameLen || !nameRE.MatchString(name) {
		return invalid("name %s is not valid: 1 to %d letters, digits, _ or -, not starting with a digit or -", quote(name), MaxNameLen)
	}
	return nil
}

// AuthOf decodes a stored secret's auth.
func AuthOf(sc *store.Secret) (Auth, error) {
	return ParseAuth(sc.Auth)
}

// Get returns the team's secret called name.
func (s *Service) Get(ctx context.Context, teamID, name string) (*store.Secret, error) {
	sc, err := s.st.GetSecret(ctx, teamID, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound(name)
	}
	return sc, err
}

// List returns the team's secrets.
func (s *Service) List(ctx context.Context, teamID string) ([]*store.Secret, error) {
	return s.st.ListSecrets(ctx, teamID)
}

// Rotate replaces a secret's value; the next request injects the new one.
func (s *Service) Rotate(ctx context.Context, teamID, name string, value *string) (*store.Secret, error) {
	switch {
	case value == nil || *value == "":
		return nil, invalid("value is required")
	case len(*value) > MaxValueLen:
		return nil, invalid("value is %d bytes; the limit is %d", len(*value), MaxValueLen)
	case !validHeaderValue(*value):
		return nil, invalid("value must not contain control characters (it is sent in an HTTP header)")
	}
	sc, err := s.Get(ctx, teamID, name)
	if err != nil {
		return nil, err
	}
	sealed := s.seal.Seal([]byte(*value), sc.ID)
	t, err := s.st.SetSecretValue(ctx, sc.ID, sealed)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound(name)
	}
	if err != nil {
		return nil, err
	}
	s.cache.invalidate()
	sc.Value, sc.UpdatedAt = sealed, t
	return sc, nil
}

// Delete soft-deletes a secret: every binding of it is revoked at once.
func (s *Service) Delete(ctx context.Context, teamID, name string) error {
	sc, err := s.Get(ctx, teamID, name)
	if err != nil {
		return err
	}
	err = s.st.DeleteSecret(ctx, sc.ID)
	s.cache.invalidate()
	if errors.Is(err, store.ErrNotFound) {
		return notFound(name)
	}
	return err
}

// Sandboxes lists the sandboxes a secret is bound to.
func (s *Service) Sandboxes(ctx context.Context, teamID, name string) ([]store.SecretSandbox, error) {
	sc, err := s.Get(ctx, teamID, name)
	if err != nil {
		return nil, err
	}
	return s.st.SecretSandboxes(ctx, sc.ID)
}

// Audit limits.
const (
	DefaultAuditLimit = 50
	MaxAuditLimit     = 200
)

// Audit returns a secret's audit events, newest first. status is "",
// "2xx".."5xx" or "errors" (a proxy-level failure, or any 4xx/5xx).
func (s *Service) Audit(ctx context.Context, teamID, name string, limit int, before int64, status string) ([]*store.SecretAuditEvent, error) {
	if limit < 1 || limit > MaxAuditLimit {
		return nil, invalid("limit must be between 1 and %d", MaxAuditLimit)
	}
	if before < 0 {
		return nil, invalid("before must be an event id")
	}
	q := store.AuditQuery{BeforeID: before, Limit: limit}
	switch status {
	case "":
	case "2xx", "3xx", "4xx", "5xx":
		q.StatusMin = int(status[0]-'0') * 100
		q.StatusMax = q.StatusMin + 99
	case "errors":
		q.Errors = true
	default:
		return nil, invalid("status must be 2xx, 3xx, 4xx, 5xx or errors")
	}
	sc, err := s.Get(ctx, teamID, name)
	if err != nil {
		return nil, err
	}
	q.SecretID = sc.ID
	return s.st.ListSecretAudit(ctx, q)
}

// Bind binds the team's secrets to a sandbox's env keys (env key → secret
// name). Unknown secrets are a 400 here (the create refers to them) and
// nothing is bound.
func (s *Service) Bind(ctx context.Context, teamID, sandboxID string, m map[string]string) error {
	var bs []*store.SecretBinding
	for k, name := range m {
		if err := ValidateEnvKey(k); err != nil {
			return err
		}
		sc, err := s.st.GetSecret(ctx, teamID, name)
		if errors.Is(err, store.ErrNotFound) {
			return &Error{Status: http.StatusNotFound, Code: "not_found", Message: fmt.Sprintf("secrets: %s names secret %s, which does not exist", k, quote(name))}
		}
		if err != nil {
			return err
		}
		seed := randomHex(16)
		bs = append(bs, &store.SecretBinding{SandboxID: sandboxID, EnvKey: k, SecretID: sc.ID, TokenSeed: seed,
			TokenHash: hashToken(s.token(seed, sc.TokenShape))})
	}
	err := s.st.AddSecretBindings(ctx, bs)
	s.cache.invalidate()
	if err != nil {
		if errors.Is(err, store.ErrConflict) {
			return &Error{Status: http.StatusConflict, Code: "conflict", Message: "the sandbox already has a secret bound to that env key; detach it first"}
		}
		return err
	}
	return nil
}

// ValidateEnvKey checks the env var a secret is bound to.
func ValidateEnvKey(k string) error {
	if !envKeyRE.MatchString(k) || len(k) > 256 {
		return invalid("secrets: env key %s is not valid (letters, digits and _; not starting with a digit)", quote(k))
	}
	if strings.HasPrefix(k, "STASIS_") {
		return invalid("secrets: env keys starting with STASIS_ are reserved")
	}
	return nil
}

// Detach removes a binding; its token stops resolving at once.
func (s *Service) Detach(ctx context.Context, sandboxID, envKey string) error {
	err := s.st.DetachSecretBinding(ctx, sandboxID, envKey)
	s.cache.invalidate()
	if errors.Is(err, store.ErrNotFound) {
		return &Error{Status: http.StatusNotFound, Code: "not_found", Message: fmt.Sprintf("no secret is bound to %s", quote(envKey))}
	}
	return err
}

// Inherit gives a fork its source's bindings and tokens.
func (s *Service) Inherit(ctx context.Context, from, to string) error {
	defer s.cache.invalidate()
	return s.st.CopySecretBindings(ctx, from, to)
}

// Bindings returns a sandbox's current bindings.
func (s *Service) Bindings(ctx context.Context, sandboxID string) ([]*store.SecretBinding, error) {
	return s.st.SecretBindings(ctx, sandboxID, false)
}

// Env returns the stand-in tokens a sandbox's commands get, by env key.
func (s *Service) Env(ctx context.Context, sandboxID string) (map[string]string, error) {
	bs, err := s.st.SecretBindings(ctx, sandboxID, false)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(bs))
	for _, b := range bs {
		out[b.EnvKey] = s.token(b.TokenSeed, b.TokenShape)
	}
	return out, nil
}

// token derives a binding's stand-in token: the provider's prefix and 43
// characters that only this server can link to the seed.
func (s *Service) token(seed, shape string) string {
	prefix := strings.TrimSuffix(shape, "...")
	if prefix == "" {
		prefix = "sst_proxy_"
	}
	m := hmac.New(sha256.New, s.tokenKey)
	m.Write([]byte(seed))
	return prefix + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func hashToken(t string) string {
	sum := sha256.Sum256([]byte(t))
	return hex.EncodeToString(sum[:])
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
