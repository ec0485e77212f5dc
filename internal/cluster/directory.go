package cluster

import (
	"context"
	"errors"

	"github.com/stasis-sandbox/stasis/internal/store"
)

// StoreDirectory is the router's Directory over the shared store.
type StoreDirectory struct{ Store store.Store }

// Owner returns the node that owns sandbox id.
func (d StoreDirectory) Owner(ctx context.Context, id string) (string, error) {
	sb, err := d.Store.GetSandbox(ctx, "", id)
	if errors.Is(err, store.ErrNotFound) {
		return "", ErrUnknownSandbox
	}
	if err != nil {
		return "", err
	}
	return sb.Node, nil
}

// Nodes returns every registered node as a placement candidate.
func (d StoreDirectory) Nodes(ctx context.Context) ([]Candidate, error) {
	nodes, err := d.Store.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Candidate, len(nodes))
	for i, n := range nodes {
		out[i] = Candidate{Name: n.Name, URL: n.URL, E2BURL: n.E2BURL, State: n.State, MemFreeMiB: n.MemFreeMiB,
			Running: n.Running, HeartbeatAt: n.HeartbeatAt}
	}
	return out, nil
}
