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
	ok, err := eligible(nodes, now, lease, memMiB)
	if err != nil {
		return Candidate{}, err
	}
	return ok[pick(ok, rnd)], nil
}

// eligible returns the nodes that may take a new sandbox of memMiB, or
// ErrNoNode.
func eligible(nodes []Candidate, now time.Time, lease time.Duration, memMiB int64) ([]Candidate, error) {
	var ok []Candidate
	for _, n := range nodes {
		if n.Eligible(now, lease, memMiB) {
			ok = append(ok, n)
		}
	}
	if len(ok) == 0 {
		return nil, fmt.Errorf("%w (%d known, none active with %d MiB free)", ErrNoNode, len(nodes), memMiB)
	}
	return ok, nil
}

// pick returns the index of the less loaded of two distinct nodes of ok
// (not empty) drawn at random.
func pick(ok []Candidate, rnd *rand.Rand) int {
	if len(ok) == 1 {
		return 0
	}
	i := rnd.IntN(len(ok))
	j := rnd.IntN(len(ok) - 1)
	if j >= i {
		j++
	}
	if better(ok[j], ok[i]) {
		return j
	}
	return i
}

// PlaceEach places count new sandboxes of memMiB each by the power of two
// choices among the nodes eligible for one, counting each sandbox placed
// against its node (one more running, its memory taken) before placing
// the next: the children of a fork spread over the nodes as that many
// creates would, instead of all landing on the node that looked least
// loaded at the start. It fails, placing none, if no node is eligible.
func PlaceEach(nodes []Candidate, now time.Time, lease time.Duration, memMiB int64, count int, rnd *rand.Rand) ([]Candidate, error) {
	load, err := eligible(nodes, now, lease, memMiB) // a copy: the caller's list stays as read
	if err != nil {
		return nil, err
	}
	out := make([]Candidate, 0, count)
	for range count {
		i := pick(load, rnd)
		out = append(out, load[i])
		load[i].Running++
		load[i].MemFreeMiB -= memMiB
	}
	return out, nil
}
