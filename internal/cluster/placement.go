package cluster

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/stasis-sandbox/stasis/internal/store"
)

// Node states, as the store keeps them.
const (
	StateActive   = store.NodeActive
	StateDraining = store.NodeDraining
	StateLost     = store.NodeLost
)

// ErrNoNode means no live, non-draining node can take a sandbox.
var ErrNoNode = errors.New("cluster: no node can take a new sandbox")

// Candidate is what placement knows of a node.
type Candidate struct {
	Name, URL   string
	E2BURL      string // where the node serves E2B's protocol ("" none)
	State       string
	MemFreeMiB  int64
	Running     int
	HeartbeatAt time.Time
}

// Eligible reports whether c may take a new sandbox needing memMiB at now:
// active (not draining or lost), heard from within lease, and with the memory free.
func (c Candidate) Eligible(now time.Time, lease time.Duration, memMiB int64) bool {
	return c.State == StateActive && now.Sub(c.HeartbeatAt) <= lease && c.MemFreeMiB >= memMiB
}

// better reports whether a is less loaded than b: more free memory per
// running sandbox (counting the one being placed), then fewer running,
// then the name so the choice is deterministic.
func better(a, b Candidate) bool {
	// Cross-multiplied to stay in integers: a.mem/(a.run+1) > b.mem/(b.run+1).
	la := a.MemFreeMiB * int64(b.Running+1)
	lb := b.MemFreeMiB * int64(a.Running+1)
	if la != lb {
		return la > lb
	}
	if a.Running != b.Running {
		return a.Running < b.Running
	}
	return a.Name < b.Name
}

// Place picks a node for a new sandbox by the power of two choices: two
// eligible nodes at random, the less loaded of them wins. Random pairs
// spread concurrent placements made from stale heartbeats, where always
// taking the least loaded node would send them all to the same one.
func Place(nodes []Candidate, now time.Time, lease time.Duration, memMiB int64, rnd *rand.Rand) (Candidate, error) {
	var ok []Candidate
	for _, n := range nodes {
		if n.Eligible(now, lease, memMiB) {
			ok = append(ok, n)
		}
	}
	switch len(ok) {
	case 0:
		return Candidate{}, fmt.Errorf("%w (%d known, none active with %d MiB free)", ErrNoNode, len(nodes), memMiB)
	case 1:
		return ok[0], nil
	}
	i := rnd.IntN(len(ok))
	j := rnd.IntN(len(ok) - 1)
	if j >= i {
		j++
	}
	if better(ok[j], ok[i]) {
		return ok[j], nil
	}
	return ok[i], nil
}
