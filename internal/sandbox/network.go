package sandbox

import (
	"context"
	"errors"
	"sync"

	"github.com/stasis-sandbox/stasis/internal/egress"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// applyNetwork sets a new sandbox's egress rules and preview access from
// the create request, where it gives them.
func (p *CreateParams) applyNetwork(sb *store.Sandbox) {
	if p.Network != nil {
		sb.Network = p.Network.Clone()
	}
	if p.PreviewPrivate != nil {
		sb.PreviewPrivate = *p.PreviewPrivate
	}
}

// applyNetworkUpdate applies a PATCH of the egress rules (which replaces
// both lists) and of preview access to sb. Rules change only while the
// sandbox runs, as in Superserve.
func (p *UpdateParams) applyNetworkUpdate(sb *store.Sandbox) error {
	if p.Network.Set {
		if sb.Status != store.StatusActive {
			return newErr(ErrConflict, "invalid_state",
				"sandbox %s is %s; network rules can be changed only while it is active (resume it first)", sb.ID, sb.Status)
		}
		sb.Network = nil
		if p.Network.Value != nil {
			sb.Network = p.Network.Value.Clone()
		}
	}
	if p.PreviewPrivate.Set {
		sb.PreviewPrivate = p.PreviewPrivate.Value != nil && *p.PreviewPrivate.Value
	}
	return nil
}

// policyCache holds each sandbox's network settings as the proxy and the
// preview router need them on every connection and request: compiled
// egress rules, and whether previews are private. Entries are dropped when
// the settings change (Update) or the sandbox goes.
type policyCache struct {
	mu sync.Mutex
	m  map[string]netSettings
}

type netSettings struct {
	policy         *egress.Policy
	previewPrivate bool
}

func (c *policyCache) invalidate(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

// netSettings returns sandbox id's network settings, read from the store
// on a miss.
func (s *Service) netSettings(ctx context.Context, id string) (netSettings, error) {
	c := &s.policies
	c.mu.Lock()
	defer c.mu.Unlock() // held across the read, so an invalidation cannot be overtaken
	if n, ok := c.m[id]; ok {
		return n, nil
	}
	sb, err := s.cfg.Store.GetSandbox(ctx, "", id)
	if errors.Is(err, store.ErrNotFound) {
		return netSettings{}, notFound(id)
	}
	if err != nil {
		return netSettings{}, err
	}
	n := netSettings{previewPrivate: sb.PreviewPrivate}
	if sb.Network != nil {
		if n.policy, err = egress.Compile(sb.Network.AllowOut, sb.Network.DenyOut); err != nil {
			return netSettings{}, err
		}
	}
	if c.m == nil {
		c.m = map[string]netSettings{}
	}
	c.m[id] = n
	return n, nil
}

// NetworkPolicy returns sandbox id's current egress rules, compiled.
func (s *Service) NetworkPolicy(ctx context.Context, id string) (*egress.Policy, error) {
	n, err := s.netSettings(ctx, id)
	return n.policy, err
}

// Preview wakes sandbox id for a preview request: it returns once the
// sandbox runs (resuming it if paused), with whether its preview URLs are
// private (need its access token).
func (s *Service) Preview(ctx context.Context, id string) (private bool, err error) {
	// A running sandbox this server knows is served from memory: no store
	// read on the request path. Otherwise one store read, under the box's
	// lock (in wakeLocked); a sandbox this server has no box for yet is
	// looked up first, so that requests for made-up IDs do not grow the
	// box map.
	b, ok := s.knownBox(id)
	if !ok {
		if _, err := s.Get(ctx, "", id); err != nil {
			return false, err
		}
		b = s.box(id)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.agent != nil {
		if n, err := s.netSettings(ctx, id); err == nil {
			return n.previewPrivate, nil
		}
	}
	sb, err := s.wakeLocked(ctx, b, id)
	if err != nil {
		return false, err
	}
	return sb.PreviewPrivate, nil
}

// knownBox returns sandbox id's box if there is one (box creates it).
func (s *Service) knownBox(id string) (*box, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.boxes[id]
	return b, ok
}

// CheckAccessToken reports whether token is a valid data-plane token of
// sandbox id.
func (s *Service) CheckAccessToken(ctx context.Context, id, token string) (bool, error) {
	return s.cfg.Store.CheckAccessToken(ctx, id, token)
}
