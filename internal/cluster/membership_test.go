package cluster

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/store"
)

// The membership rules run against the real store (SQLite here; the store
// suite checks PostgreSQL behaves the same).
func openStore(t *testing.T) store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), t.TempDir()+"/stasis.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

type recordingHooks struct{ lost []string }

func (h *recordingHooks) Load(context.Context) (int64, int)       { return 4096, 2 }
func (h *recordingHooks) NodeLost(_ context.Context, name string) { h.lost = append(h.lost, name) }
func (h *recordingHooks) Reconcile(context.Context, store.Node)   {}

// beatAndTakeOver is one heartbeat of m, waiting for the lost-node hooks it
// starts (they run beside the heartbeats).
func beatAndTakeOver(m *Membership, ctx context.Context) {
	m.beat(ctx)
	m.takeovers.Wait()
}

func member(st store.Store, h Hooks, name, url, cpu string) *Membership {
	return NewMembership(MembershipConfig{Registry: st, Hooks: h, Lease: time.Minute,
		Self:   store.Node{Name: name, URL: url, CPUFeatures: cpu},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

func TestJoinRefusesADuplicateNameAndAnotherCPUPin(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	h := &recordingHooks{}
	if err := member(st, h, "a", "http://198.51.100.1:8080", "avx2").Join(ctx); err != nil {
		t.Fatal(err)
	}
	err := member(st, h, "a", "http://198.51.100.2:8080", "avx2").Join(ctx)
	if err == nil || !strings.Contains(err.Error(), `node name "a" is in use`) {
		t.Errorf("a second live node named a: err = %v", err)
	}
	// The same node restarting (same URL) rejoins.
	if err := member(st, h, "a", "http://198.51.100.1:8080", "avx2").Join(ctx); err != nil {
		t.Errorf("restart of node a: %v", err)
	}
	err = member(st, h, "b", "http://198.51.100.2:8080", "avx2,avx512f").Join(ctx)
	if err == nil || !strings.Contains(err.Error(), "differs from live node a") {
		t.Errorf("node b with another CPU pin: err = %v", err)
	}
	nodes, _ := st.ListNodes(ctx)
	if len(nodes) != 1 || nodes[0].MemFreeMiB != 4096 || nodes[0].Running != 2 || nodes[0].State != store.NodeActive {
		t.Errorf("nodes after the joins: %+v; want only a, active, with its load", nodes)
	}
}

func TestASilentNodeIsDeclaredLostOnce(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	ha, hb := &recordingHooks{}, &recordingHooks{}
	a := member(st, ha, "a", "http://a", "")
	b := member(st, hb, "b", "http://b", "")
	a.cfg.Lease, b.cfg.Lease = 200*time.Millisecond, 200*time.Millisecond
	for _, m := range []*Membership{a, b} {
		if err := m.Join(ctx); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond) // b stays silent past the lease
	beatAndTakeOver(a, ctx)
	beatAndTakeOver(a, ctx)
	if strings.Join(ha.lost, ",") != "b" {
		t.Errorf("a declared lost: %v; want b exactly once", ha.lost)
	}
	nodes, _ := st.ListNodes(ctx)
	for _, n := range nodes {
		if want := map[string]string{"a": store.NodeActive, "b": store.NodeLost}[n.Name]; n.State != want {
			t.Errorf("node %s is %s, want %s", n.Name, n.State, want)
		}
	}
	// b comes back: it heartbeats, sees itself lost, and rejoins.
	beatAndTakeOver(b, ctx)
	b.reconcile(ctx)
	nodes, _ = st.ListNodes(ctx)
	for _, n := range nodes {
		if n.State != store.NodeActive {
			t.Errorf("after b's return node %s is %s, want active", n.Name, n.State)
		}
	}
}

// flakyRegistry fails heartbeats while down, as an unreachable database does.
type flakyRegistry struct {
	store.Store
	down bool
}

func (r *flakyRegistry) HeartbeatNode(ctx context.Context, name string, mem int64, running int) error {
	if r.down {
		return errors.New("connection refused")
	}
	return r.Store.HeartbeatNode(ctx, name, mem, running)
}

// A database outage longer than the lease silences every node: the first
// node back must not declare the others lost (and fail their sandboxes)
// before they had a lease to heartbeat again.
func TestAnOutageOfTheStoreLosesNoNode(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	ha, hb := &recordingHooks{}, &recordingHooks{}
	ra := &flakyRegistry{Store: st}
	a := member(st, ha, "a", "http://a", "")
	a.cfg.Registry = ra
	b := member(st, hb, "b", "http://b", "")
	const lease = 500 * time.Millisecond
	a.cfg.Lease, b.cfg.Lease = lease, lease
	for _, m := range []*Membership{a, b} {
		if err := m.Join(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ra.down = true
	beatAndTakeOver(a, ctx)
	time.Sleep(lease + 100*time.Millisecond) // the outage outlasts the lease
	ra.down = false
	beatAndTakeOver(a, ctx) // a is back first: b has not heartbeat for longer than the lease
	if len(ha.lost) != 0 {
		t.Fatalf("a declared %v lost right after the outage; want none", ha.lost)
	}
	time.Sleep(lease + 100*time.Millisecond) // a has been healthy for a lease now
	beatAndTakeOver(b, ctx)
	beatAndTakeOver(a, ctx)
	if len(ha.lost) != 0 {
		t.Fatalf("a declared %v lost although b heartbeats again", ha.lost)
	}
	// A node silent for a lease once a is healthy again is lost.
	time.Sleep(lease + 100*time.Millisecond)
	beatAndTakeOver(a, ctx)
	if strings.Join(ha.lost, ",") != "b" {
		t.Errorf("a declared lost: %v; want b, silent since", ha.lost)
	}
}
