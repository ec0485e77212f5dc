package secrets

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/stasis-sandbox/stasis/internal/store"
)

// view is what the proxy needs to know of one sandbox's bindings, cached
// between changes so that a request does not wait on the database.
type view struct {
	gen     uint64
	at      time.Time
	byHash  map[string]*store.SecretBinding // live bindings win over detached ones
	secrets map[string]*store.Secret        // by id
}

// viewCache holds views; every change to secrets or bindings (all made
// through the Service) bumps gen, which drops them.
type viewCache struct {
	mu    sync.Mutex
	gen   uint64
	views map[string]*view
}

// viewTTL bounds how long a view is used even without a change.
const viewTTL = 30 * time.Second

func (c *viewCache) invalidate() {
	c.mu.Lock()
	c.gen++
	c.views = nil
	c.mu.Unlock()
}

// view returns the sandbox's current view.
func (s *Service) view(ctx context.Context, sandboxID string) (*view, error) {
	c := &s.cache
	c.mu.Lock()
	gen := c.gen
	if v, ok := c.views[sandboxID]; ok && v.gen == gen && time.Since(v.at) < viewTTL {
		c.mu.Unlock()
		return v, nil
	}
	c.mu.Unlock()
	bs, err := s.st.SecretBindings(ctx, sandboxID, true)
	if err != nil {
		return nil, err
	}
	v := &view{gen: gen, at: time.Now(), byHash: map[string]*store.SecretBinding{}, secrets: map[string]*store.Secret{}}
	for _, b := range bs {
		if old, ok := v.byHash[b.TokenHash]; !ok || old.Detached {
			v.byHash[b.TokenHash] = b
		}
		if _, ok := v.secrets[b.SecretID]; !ok {
			sc, err := s.st.GetSecretByID(ctx, b.SecretID)
			if err != nil {
				return nil, err
			}
			v.secrets[b.SecretID] = sc
		}
	}
	c.mu.Lock()
	if c.gen == gen { // nothing changed while reading
		if c.views == nil {
			c.views = map[string]*view{}
		}
		c.views[sandboxID] = v
	}
	c.mu.Unlock()
	return v, nil
}

// Names reports whether some secret bound to the sandbox (revoked or
// detached ones included, so their tokens get a clear refusal) names
// host: only then is its TLS to host intercepted.
func (s *Service) Names(ctx context.Context, sandboxID, host string) (bool, error) {
	if host == "" {
		return false, nil
	}
	v, err := s.view(ctx, sandboxID)
	if err != nil {
		return false, err
	}
	for _, sc := range v.secrets {
		if MatchHosts(sc.Hosts, host) {
			return true, nil
		}
	}
	return false, nil
}

// Outcome is what to do with one request toward a host a bound secret names.
type Outcome struct {
	SecretID string // "" when the request carries no stand-in token of the sandbox
	// Refuse, when set, is the error code the proxy answers with instead of
	// forwarding (403): the secret was deleted or the binding detached.
	Refuse  string
	Message string
	// Mismatch: the token belongs to a secret that does not name this host;
	// the request goes on unchanged.
	Mismatch bool
}

// Refusal codes.
const (
	CodeRevoked  = "secret_revoked"
	CodeDetached = "secret_detached"
	CodeHost     = "host_not_allowed"
	CodeUpstream = "upstream_unreachable"
)

// Resolve finds the sandbox's stand-in token in h and, if it may be used
// toward host, replaces it in h with the real credential.
func (s *Service) Resolve(ctx context.Context, sandboxID, host string, h http.Header) (Outcome, error) {
	v, err := s.view(ctx, sandboxID)
	if err != nil {
		return Outcome{}, err
	}
	var found *store.SecretBinding
	tok, ok := FindToken(h, func(w string) bool {
		b, ok := v.byHash[hashToken(w)]
		if ok {
			found = b
		}
		return ok
	})
	if !ok {
		return Outcome{}, nil
	}
	out := Outcome{SecretID: found.SecretID}
	sc := v.secrets[found.SecretID]
	switch {
	case sc.Deleted:
		out.Refuse, out.Message = CodeRevoked, "the secret behind this token ("+found.EnvKey+") was deleted"
		return out, nil
	case found.Detached:
		out.Refuse, out.Message = CodeDetached, "the secret bound to "+found.EnvKey+" was detached from this sandbox"
		return out, nil
	case !MatchHosts(sc.Hosts, host):
		out.Mismatch = true
		return out, nil
	}
	auth, err := AuthOf(sc)
	if err != nil {
		return Outcome{}, err
	}
	rule, ok := auth.RuleFor(host)
	if !ok {
		out.Mismatch = true
		return out, nil
	}
	value, err := s.seal.Open(sc.Value, sc.ID)
	if err != nil {
		return Outcome{}, err
	}
	rule.Apply(h, tok, string(value))
	return out, nil
}

// Record stores the audit event of a request and its network log row.
func (s *Service) Record(ctx context.Context, ev *store.SecretAuditEvent) error {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	return s.st.AddSecretAudit(ctx, ev)
}
