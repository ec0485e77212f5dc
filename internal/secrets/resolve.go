package secrets

import (
	"context"
	"net/http"
	"time"

	"github.com/stasis-sandbox/stasis/internal/store"
)

// Names reports whether some secret bound to the sandbox (revoked or
// detached ones included, so their tokens get a clear refusal) names
// host: only then is its TLS to host intercepted.
func (s *Service) Names(ctx context.Context, sandboxID, host string) (bool, error) {
	if host == "" {
		return false, nil
	}
	bs, err := s.st.SecretBindings(ctx, sandboxID, true)
	if err != nil {
		return false, err
	}
	for _, b := range bs {
		sc, err := s.st.GetSecretByID(ctx, b.SecretID)
		if err != nil {
			return false, err
		}
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
	bs, err := s.st.SecretBindings(ctx, sandboxID, true)
	if err != nil {
		return Outcome{}, err
	}
	byHash := make(map[string]*store.SecretBinding, len(bs))
	for _, b := range bs {
		// A live binding wins over a detached one with the same token.
		if old, ok := byHash[b.TokenHash]; !ok || old.Detached {
			byHash[b.TokenHash] = b
		}
	}
	var found *store.SecretBinding
	tok, ok := FindToken(h, func(w string) bool {
		b, ok := byHash[hashToken(w)]
		if ok {
			found = b
		}
		return ok
	})
	if !ok {
		return Outcome{}, nil
	}
	out := Outcome{SecretID: found.SecretID}
	sc, err := s.st.GetSecretByID(ctx, found.SecretID)
	if err != nil {
		return Outcome{}, err
	}
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
