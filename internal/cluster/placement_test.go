package cluster

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

func TestPlaceSkipsDrainingLostStaleAndFullNodes(t *testing.T) {
	now := time.Now()
	nodes := []Candidate{
		{Name: "draining", State: StateDraining, MemFreeMiB: 1 << 20, HeartbeatAt: now},
		{Name: "lost", State: StateLost, MemFreeMiB: 1 << 20, HeartbeatAt: now},
		{Name: "stale", State: StateActive, MemFreeMiB: 1 << 20, HeartbeatAt: now.Add(-time.Minute)},
		{Name: "full", State: StateActive, MemFreeMiB: 100, HeartbeatAt: now},
		{Name: "ok", State: StateActive, MemFreeMiB: 4096, Running: 50, HeartbeatAt: now},
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 100 {
		got, err := Place(nodes, now, 15*time.Second, 1024, rnd)
		if err != nil || got.Name != "ok" {
			t.Fatalf("Place = %q, %v; want the only eligible node \"ok\"", got.Name, err)
		}
	}
}

func TestPlaceWithNoEligibleNodeFails(t *testing.T) {
	now := time.Now()
	nodes := []Candidate{{Name: "a", State: StateDraining, MemFreeMiB: 8192, HeartbeatAt: now}}
	if _, err := Place(nodes, now, time.Minute, 0, rand.New(rand.NewPCG(1, 2))); !errors.Is(err, ErrNoNode) {
		t.Fatalf("Place over a draining node: err = %v, want ErrNoNode", err)
	}
	if _, err := Place(nil, now, time.Minute, 0, rand.New(rand.NewPCG(1, 2))); !errors.Is(err, ErrNoNode) {
		t.Fatalf("Place over no nodes: err = %v, want ErrNoNode", err)
	}
}

// With two choices the most loaded node never wins a pair, and the least
// loaded never loses one, so it is chosen whenever drawn.
func TestPlacePrefersLessLoadedNodes(t *testing.T) {
	now := time.Now()
	nodes := []Candidate{
		{Name: "idle", State: StateActive, MemFreeMiB: 16384, Running: 0, HeartbeatAt: now},
		{Name: "half", State: StateActive, MemFreeMiB: 8192, Running: 10, HeartbeatAt: now},
		{Name: "busy", State: StateActive, MemFreeMiB: 2048, Running: 40, HeartbeatAt: now},
	}
	rnd := rand.New(rand.NewPCG(7, 9))
	counts := map[string]int{}
	const n = 3000
	for range n {
		got, err := Place(nodes, now, time.Minute, 512, rnd)
		if err != nil {
			t.Fatal(err)
		}
		counts[got.Name]++
	}
	if counts["busy"] != 0 {
		t.Errorf("the most loaded node was chosen %d times; it loses every pair", counts["busy"])
	}
	// idle is in 2 of the 3 possible pairs and wins both: about 2/3.
	if counts["idle"] < n/2 || counts["half"] == 0 {
		t.Errorf("choices %v: want idle about 2/3 and half about 1/3", counts)
	}
}

func TestBetterWeighsMemoryPerRunningSandbox(t *testing.T) {
	a := Candidate{Name: "a", MemFreeMiB: 8000, Running: 3} // 2000 per slot
	b := Candidate{Name: "b", MemFreeMiB: 3000, Running: 0} // 3000 per slot
	if !better(b, a) || better(a, b) {
		t.Errorf("b (3000 MiB/slot) should beat a (2000 MiB/slot)")
	}
	c := Candidate{Name: "c", MemFreeMiB: 4000, Running: 1}
	d := Candidate{Name: "d", MemFreeMiB: 2000, Running: 0}
	if !better(d, c) {
		t.Errorf("equal memory per slot: fewer running should win")
	}
}

// Many children of one fork spread like that many creates: each placed
// child counts against its node before the next is placed.
func TestPlaceEachSpreadsManyChildren(t *testing.T) {
	now := time.Now()
	nodes := []Candidate{
		{Name: "a", State: StateActive, MemFreeMiB: 8192, HeartbeatAt: now},
		{Name: "b", State: StateActive, MemFreeMiB: 8192, HeartbeatAt: now},
		{Name: "c", State: StateActive, MemFreeMiB: 8192, HeartbeatAt: now},
	}
	got, err := PlaceEach(nodes, now, time.Minute, 256, 30, rand.New(rand.NewPCG(3, 4)))
	if err != nil || len(got) != 30 {
		t.Fatalf("PlaceEach = %d nodes, %v; want 30", len(got), err)
	}
	counts := map[string]int{}
	for _, n := range got {
		counts[n.Name]++
	}
	// Equal nodes, each child counted: no node gets far more than its share
	// (two choices keep the gap to a few), and every node gets some.
	for _, n := range nodes {
		if counts[n.Name] < 7 || counts[n.Name] > 13 {
			t.Errorf("node %s got %d of 30 children: %v", n.Name, counts[n.Name], counts)
		}
	}
	if nodes[0].Running != 0 || nodes[0].MemFreeMiB != 8192 {
		t.Errorf("PlaceEach changed the caller's list: %+v", nodes[0])
	}
}

// A draining node (the fork's source's, say) gets none of the children,
// and a single eligible node gets them all.
func TestPlaceEachSkipsIneligibleNodes(t *testing.T) {
	now := time.Now()
	nodes := []Candidate{
		{Name: "src", State: StateDraining, MemFreeMiB: 1 << 20, HeartbeatAt: now},
		{Name: "b", State: StateActive, MemFreeMiB: 4096, Running: 3, HeartbeatAt: now},
		{Name: "c", State: StateActive, MemFreeMiB: 4096, Running: 3, HeartbeatAt: now},
		{Name: "lost", State: StateLost, MemFreeMiB: 1 << 20, HeartbeatAt: now},
	}
	got, err := PlaceEach(nodes, now, time.Minute, 512, 4, rand.New(rand.NewPCG(5, 6)))
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, n := range got {
		counts[n.Name]++
	}
	if counts["b"] != 2 || counts["c"] != 2 {
		t.Errorf("4 children over two equal nodes = %v; want 2 each (each placed one counts)", counts)
	}
	got, err = PlaceEach(nodes[:2], now, time.Minute, 512, 3, rand.New(rand.NewPCG(5, 6)))
	if err != nil || len(got) != 3 || got[0].Name != "b" || got[2].Name != "b" {
		t.Errorf("PlaceEach over one eligible node = %v, %v; want b three times", got, err)
	}
	if _, err := PlaceEach(nodes[:1], now, time.Minute, 512, 2, rand.New(rand.NewPCG(5, 6))); !errors.Is(err, ErrNoNode) {
		t.Errorf("PlaceEach over a draining node only: %v, want ErrNoNode", err)
	}
}
