package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stasis-sandbox/stasis/internal/store"
)

// Registry is the part of the store membership uses.
type Registry interface {
	UpsertNode(ctx context.Context, n store.Node) error
	HeartbeatNode(ctx context.Context, name string, memFreeMiB int64, running int) error
	ListNodes(ctx context.Context) ([]store.Node, error)
	SetNodeState(ctx context.Context, name, state string) error
	MarkLostNodes(ctx context.Context, lease time.Duration) ([]string, error)
}

// Hooks are what the node does when membership changes.
type Hooks interface {
	// Load reports this node's free memory and running sandboxes.
	Load(ctx context.Context) (memFreeMiB int64, running int)
	// NodeLost is called on the one node that declared name lost.
	NodeLost(ctx context.Context, name string)
	// Reconcile runs after each heartbeat with this node's row as others
	// see it: stop what moved away, pause everything while draining.
	Reconcile(ctx context.Context, self store.Node)
}

// MembershipConfig configures a Membership.
type MembershipConfig struct {
	Registry Registry
	Hooks    Hooks
	Self     store.Node    // Name, URL, CPUFeatures, Version
	Lease    time.Duration // a node silent this long is lost
	Logger   *slog.Logger
}

// Membership registers this node, heartbeats, and declares silent nodes lost.
type Membership struct {
	cfg MembershipConfig
	// The load last measured, sent with each heartbeat.
	memFree, running atomic.Int64
	// healthySince is when this node's heartbeats last started to succeed
	// (zero while they fail). Only beat and Join, before Run, touch it.
	healthySince time.Time
	// takeovers tracks the NodeLost hooks in flight.
	takeovers sync.WaitGroup
}

// NewMembership returns the membership of cfg.Self; Join it before Run.
func NewMembership(cfg MembershipConfig) *Membership { return &Membership{cfg: cfg} }

// Interval is how often the node heartbeats: three beats per lease, so one
// late beat (a slow database, a busy host) does not lose the node.
func (m *Membership) Interval() time.Duration { return m.cfg.Lease / 3 }

// Join registers the node. It refuses a name another live node uses at a
// different URL (two nodes would own each other's sandboxes), and a CPU
// feature pin that differs from the live nodes' (snapshots would not move).
func (m *Membership) Join(ctx context.Context) error {
	self := m.cfg.Self
	nodes, err := m.cfg.Registry.ListNodes(ctx)
	if err != nil {
		return fmt.Errorf("join cluster: %w", err)
	}
	now := time.Now()
	state := store.NodeActive
	for _, n := range nodes {
		live := n.State != store.NodeLost && now.Sub(n.HeartbeatAt) <= m.cfg.Lease
		if n.Name == self.Name {
			if live && n.URL != self.URL {
				return fmt.Errorf("join cluster: node name %q is in use by a live node at %s (heartbeat %s ago); give this node another --node-name",
					self.Name, n.URL, now.Sub(n.HeartbeatAt).Round(time.Millisecond))
			}
			if n.State == store.NodeDraining {
				state = store.NodeDraining // a restart does not undo a drain
			}
			continue
		}
		if live && n.CPUFeatures != self.CPUFeatures {
			return fmt.Errorf("join cluster: --cpu-features %q differs from live node %s's %q; every node must pin the same features",
				self.CPUFeatures, n.Name, n.CPUFeatures)
		}
	}
	self.State = state
	self.StartedAt = now
	self.MemFreeMiB, self.Running = m.cfg.Hooks.Load(ctx)
	m.memFree.Store(self.MemFreeMiB)
	m.running.Store(int64(self.Running))
	if err := m.cfg.Registry.UpsertNode(ctx, self); err != nil {
		return fmt.Errorf("join cluster: %w", err)
	}
	m.healthySince = now
	m.cfg.Logger.Info("joined the cluster", "node", self.Name, "url", self.URL, "state", state, "lease", m.cfg.Lease)
	// Nodes lost while no node was up to see it: their running sandboxes
	// are failed now (a no-op for those already failed).
	for _, n := range nodes {
		if n.State == store.NodeLost && n.Name != self.Name {
			m.cfg.Hooks.NodeLost(ctx, n.Name)
		}
	}
	return nil
}

// Run heartbeats until ctx ends. The heartbeat itself is one small write
// on its own ticker: measuring the load (runsc list) and reconciling run in
// another loop, so a slow runtime on a busy host cannot make the node miss
// its lease and be declared lost while it works.
func (m *Membership) Run(ctx context.Context) {
	go m.reconcileLoop(ctx)
	t := time.NewTicker(m.Interval())
	defer t.Stop()
	for {
		m.beat(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// beat heartbeats once with the last measured load, then declares silent
// nodes lost.
func (m *Membership) beat(ctx context.Context) {
	log, reg, name := m.cfg.Logger, m.cfg.Registry, m.cfg.Self.Name
	mem, running := m.memFree.Load(), int(m.running.Load())
	err := reg.HeartbeatNode(ctx, name, mem, running)
	if errors.Is(err, store.ErrNotFound) {
		// Someone removed our row: register again.
		self := m.cfg.Self
		self.MemFreeMiB, self.Running = mem, running
		err = reg.UpsertNode(ctx, self)
	}
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("heartbeat failed", "node", name, "err", err)
		}
		m.healthySince = time.Time{}
		return // the database is away; nothing below can be trusted either
	}
	if m.healthySince.IsZero() {
		m.healthySince = time.Now()
	}
	if time.Since(m.healthySince) < m.cfg.Lease {
		// The database (or this node's link to it) was away: every node
		// missed its heartbeats, not only the others. Give them a lease to
		// heartbeat again before declaring anyone lost, or an outage longer
		// than the lease would fail every other node's sandboxes.
		return
	}
	lost, err := reg.MarkLostNodes(ctx, m.cfg.Lease)
	if err != nil {
		log.Warn("marking lost nodes", "err", err)
	}
	var others []string
	for _, n := range lost {
		if n == name {
			continue // we just heartbeat; reconcile sees the state and rejoins
		}
		log.Warn("node lost: no heartbeat within the lease", "node", n, "lease", m.cfg.Lease)
		others = append(others, n)
	}
	if len(others) == 0 {
		return
	}
	// Taking over a lost node's sandboxes is one fenced write each: on a
	// loaded store that can outlast this node's own lease, and it must not
	// hold up the next heartbeat, or this node is declared lost in turn
	// (seen in the 50-node simulation: one loss cascaded to seven nodes).
	m.takeovers.Add(1)
	go func() {
		defer m.takeovers.Done()
		for _, n := range others {
			m.cfg.Hooks.NodeLost(ctx, n)
		}
	}()
}

func (m *Membership) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(m.Interval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.reconcile(ctx)
	}
}

// reconcile measures the load for the next heartbeats and lets the node
// act on its own row: stop what moved away, drain, or rejoin after having
// been declared lost.
func (m *Membership) reconcile(ctx context.Context) {
	log, reg, name := m.cfg.Logger, m.cfg.Registry, m.cfg.Self.Name
	mem, running := m.cfg.Hooks.Load(ctx)
	m.memFree.Store(mem)
	m.running.Store(int64(running))
	nodes, err := reg.ListNodes(ctx)
	if err != nil {
		log.Warn("listing nodes", "err", err)
		return
	}
	for _, n := range nodes {
		if n.Name != name {
			continue
		}
		m.cfg.Hooks.Reconcile(ctx, n)
		if n.State == store.NodeLost {
			// Others declared us lost while we were away (a pause, a
			// partition): what we ran has failed or moved on, and
			// Reconcile stopped it. Now we take sandboxes again.
			log.Warn("this node had been declared lost; it stopped what moved away and rejoins", "node", name)
			if err := reg.SetNodeState(ctx, name, store.NodeActive); err != nil {
				log.Warn("rejoining", "err", err)
			}
		}
	}
}
