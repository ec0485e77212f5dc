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

// policyCache holds compiled egress rules; the proxy asks for them on
// every new connection. Entries are dropped when the rules change.
type policyCache struct {
	mu sync.Mutex
	m  map[string]*egress.Policy
}

func (c *policyCache) invalidate(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

// NetworkPolicy returns sandbox id's current egress rules, compiled.
func (s *Service) NetworkPolicy(ctx context.Context, id string) (*egress.Policy, error) {
	c := &s.policies
	c.mu.Lock()
	defer c.mu.Unlock() // held across the read, so an invalidation cannot be overtaken
	if p, ok := c.m[id]; ok {
		return p, nil
	}
	sb, err := s.cfg.Store.GetSandbox(ctx, "", id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, err
	}
	var p *egress.Policy
	if sb.Network != nil {
		if p, err = egress.Compile(sb.Network.AllowOut, sb.Network.DenyOut); err != nil {
			return nil, err
		}
	}
	if c.m == nil {
		c.m = map[string]*egress.Policy{}
	}
	c.m[id] = p
	return p, nil
}

// Preview wakes sandbox id for a preview request: it returns once the
// sandbox runs (resuming it if paused), with whether its preview URLs are
// private (need its access token).
func (s *Service) Preview(ctx context.Context, id string) (private bool, err error) {
	// One store read per request, under the box's lock (in wakeLocked). A
	// sandbox this server has no box for yet is looked up first, so that
	// requests for made-up IDs do not grow the box map.
	b, ok := s.knownBox(id)
	if !ok {
		if _, err := s.Get(ctx, "", id); err != nil {
			return false, err
		}
		b = s.box(id)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, err := s.wakeLocked(ctx, b, id, false)
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
