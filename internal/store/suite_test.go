package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// The shared suite: every case runs against each engine, each on a fresh
// database.
var suite = []struct {
	name string
	run  func(t *testing.T, s Store)
}{
	{"EveryTableRoundTrip", testEveryTableRoundTrip},
	{"TokenGenerations", testTokenGenerations},
	{"DataPlaneLookupsSeeEveryChange", testDataPlaneLookupsSeeEveryChange},
	{"UsageKeepsDeletedSandboxes", testUsageKeepsDeletedSandboxes},
	{"UsageCountsKeptSnapshots", testUsageCountsKeptSnapshots},
	{"ClaimSandboxFencesStaleOwner", testClaimSandboxFencesStaleOwner},
	{"ConcurrentClaimsOneWins", testConcurrentClaimsOneWins},
	{"NodeSandboxesOnlyThatNodes", testNodeSandboxesOnlyThatNodes},
	{"SnapshotUploadFenced", testSnapshotUploadFenced},
	{"TryLeaseOneHolder", testTryLeaseOneHolder},
	{"NodesHeartbeatAndLost", testNodesHeartbeatAndLost},
	{"FailUnfinishedBuildsSparesOtherNodes", testFailUnfinishedBuildsSparesOtherNodes},
	{"ListBuildsAllOrSome", testListBuildsAllOrSome},
	{"NextTimerIsEarliestDeadline", testNextTimerIsEarliestDeadline},
}

// engines open a fresh, empty database of each kind for one test.
// PostgreSQL is a real server (testenv.StartPostgresServer), one per run
// of the suite, with a fresh database per case.
var engines = []struct {
	name  string
	start func(t *testing.T) func(t *testing.T) Store
}{
	{"sqlite", func(*testing.T) func(t *testing.T) Store {
		return func(t *testing.T) Store { s, _ := openTemp(t); return s }
	}},
	{"postgres", func(t *testing.T) func(t *testing.T) Store {
		pg := testenv.StartPostgresServer(t)
		return func(t *testing.T) Store {
			s, err := Open(context.Background(), pg.NewDatabase())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
	}},
}

func TestSuite(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			open := e.start(t)
			for _, c := range suite {
				t.Run(c.name, func(t *testing.T) { c.run(t, open(t)) })
			}
		})
	}
}

func openTemp(t *testing.T) (Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "stasis.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

// ownedSandbox stores an active sandbox owned by node.
func ownedSandbox(t *testing.T, s Store, node string) *Sandbox {
	t.Helper()
	ctx := context.Background()
	if err := s.EnsureTeam(ctx, "t1", "default"); err != nil {
		t.Fatal(err)
	}
	sb := &Sandbox{ID: NewID(), TeamID: "t1", Name: "a", Status: StatusActive, Template: "x", Node: node}
	if err := s.InsertSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	return sb
}

// testClaimSandboxFencesStaleOwner: once node B claims a sandbox from A,
// A's copy can change nothing, and B's can.
func testClaimSandboxFencesStaleOwner(t *testing.T, s Store) {
	ctx := context.Background()
	stale := ownedSandbox(t, s, "a")
	got, _ := s.GetSandbox(ctx, "", stale.ID)
	if got.Node != "a" || got.Epoch != 0 {
		t.Fatalf("new sandbox: node %q epoch %d, want a and 0", got.Node, got.Epoch)
	}
	epoch, err := s.ClaimSandbox(ctx, stale.ID, 0, "b")
	if err != nil || epoch != 1 {
		t.Fatalf("claim: epoch %d, %v; want 1", epoch, err)
	}
	stale.Status = StatusFailed
	stale.Error = "stale writer"
	if err := s.UpdateSandbox(ctx, stale); !errors.Is(err, ErrFenced) {
		t.Fatalf("update from the stale owner: %v, want ErrFenced", err)
	}
	if _, err := s.ClaimSandbox(ctx, stale.ID, 0, "a"); !errors.Is(err, ErrFenced) {
		t.Fatalf("claim with the old epoch: %v, want ErrFenced", err)
	}
	cur, err := s.GetSandbox(ctx, "", stale.ID)
	if err != nil {
		t.Fatal(err)
	}
	if cur.Node != "b" || cur.Epoch != 1 || cur.Status != StatusActive || cur.Error != "" {
		t.Fatalf("after fenced writes: %+v", cur)
	}
	cur.Status = StatusPaused
	if err := s.UpdateSandbox(ctx, cur); err != nil {
		t.Fatalf("update by the new owner: %v", err)
	}
	if got, _ := s.GetSandbox(ctx, "", stale.ID); got.Status != StatusPaused || got.Node != "b" || got.Epoch != 1 {
		t.Fatalf("after the owner's update: %+v", got)
	}
	if _, err := s.ClaimSandbox(ctx, NewID(), 0, "b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claim of an unknown sandbox: %v, want ErrNotFound", err)
	}
}

// testConcurrentClaimsOneWins: of many nodes claiming one epoch at once,
// exactly one gets the sandbox.
func testConcurrentClaimsOneWins(t *testing.T, s Store) {
	ctx := context.Background()
	sb := ownedSandbox(t, s, "a")
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.ClaimSandbox(ctx, sb.ID, 0, fmt.Sprintf("node-%d", i))
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("nodes %d and %d both claimed the sandbox", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, ErrFenced):
			t.Fatalf("claim %d: %v, want ErrFenced", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no claim succeeded")
	}
	got, _ := s.GetSandbox(ctx, "", sb.ID)
	if got.Node != fmt.Sprintf("node-%d", winner) || got.Epoch != 1 {
		t.Fatalf("owner %q epoch %d, want node-%d and 1", got.Node, got.Epoch, winner)
	}
}

// testSnapshotUploadFenced: the upload state is written for the current
// epoch only, and survives the owner's own updates.
func testSnapshotUploadFenced(t *testing.T, s Store) {
	ctx := context.Background()
	sb := ownedSandbox(t, s, "a")
	if err := s.SetSnapshotUpload(ctx, sb.ID, 0, UploadUploading, "part 2/5"); err != nil {
		t.Fatal(err)
	}
	sb.Status = StatusPaused
	if err := s.UpdateSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetSandbox(ctx, "", sb.ID)
	if got.SnapshotUpload != UploadUploading || got.SnapshotUploadDetail != "part 2/5" {
		t.Fatalf("upload state %q %q, want uploading, part 2/5", got.SnapshotUpload, got.SnapshotUploadDetail)
	}
	if err := s.SetSnapshotUpload(ctx, sb.ID, 0, "nonsense", ""); err == nil {
		t.Fatal("an unknown upload state was accepted")
	}
	if _, err := s.ClaimSandbox(ctx, sb.ID, 0, "b"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSnapshotUpload(ctx, sb.ID, 0, UploadPortable, ""); !errors.Is(err, ErrFenced) {
		t.Fatalf("upload state for the old epoch: %v, want ErrFenced", err)
	}
	if err := s.SetSnapshotUpload(ctx, sb.ID, 1, UploadPortable, ""); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetSandbox(ctx, "", sb.ID); got.SnapshotUpload != UploadPortable {
		t.Fatalf("upload state %q, want portable", got.SnapshotUpload)
	}
	if err := s.SetSnapshotUpload(ctx, NewID(), 0, UploadPending, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("upload state of an unknown sandbox: %v, want ErrNotFound", err)
	}
}

// testTryLeaseOneHolder: of concurrent takers one holds the lease; it can
// renew it, others cannot take it until it expires or is released.
func testTryLeaseOneHolder(t *testing.T, s Store) {
	ctx := context.Background()
	const n = 8
	var wg sync.WaitGroup
	got := make([]bool, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := s.TryLease(ctx, "timers", fmt.Sprintf("node-%d", i), time.Minute)
			if err != nil {
				t.Error(err)
			}
			got[i] = ok
		}()
	}
	wg.Wait()
	holder := ""
	for i, ok := range got {
		if ok && holder != "" {
			t.Fatalf("%s and node-%d both hold the lease", holder, i)
		}
		if ok {
			holder = fmt.Sprintf("node-%d", i)
		}
	}
	if holder == "" {
		t.Fatal("nobody got the lease")
	}
	if ok, err := s.TryLease(ctx, "timers", holder, time.Minute); !ok || err != nil {
		t.Fatalf("holder's renewal: %v %v", ok, err)
	}
	if ok, _ := s.TryLease(ctx, "timers", "other", time.Minute); ok {
		t.Fatal("another node took a held lease")
	}
	if ok, _ := s.TryLease(ctx, "builds", "other", time.Minute); !ok {
		t.Fatal("a lease of another name was refused")
	}
	if err := s.ReleaseLease(ctx, "timers", holder); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.TryLease(ctx, "timers", "other", time.Millisecond); !ok {
		t.Fatal("a released lease was refused")
	}
	time.Sleep(20 * time.Millisecond) // let "other"'s 1 ms lease expire
	if ok, _ := s.TryLease(ctx, "timers", holder, time.Minute); !ok {
		t.Fatal("an expired lease was refused")
	}
}

// testNodesHeartbeatAndLost: nodes register, heartbeat and are declared
// lost once their heartbeat is older than the lease, once.
func testNodesHeartbeatAndLost(t *testing.T, s Store) {
	ctx := context.Background()
	for _, name := range []string{"b", "a"} {
		if err := s.UpsertNode(ctx, Node{Name: name, URL: "http://127.0.0.1:1/" + name, E2BURL: "http://127.0.0.1:3/" + name,
			CPUFeatures: "sse4_2", Version: "v1"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.HeartbeatNode(ctx, "a", 2048, 3); err != nil {
		t.Fatal(err)
	}
	if err := s.HeartbeatNode(ctx, "zz", 1, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("heartbeat of an unknown node: %v, want ErrNotFound", err)
	}
	nodes, err := s.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || nodes[0].Name != "a" || nodes[0].State != NodeActive || nodes[0].MemFreeMiB != 2048 ||
		nodes[0].Running != 3 || nodes[0].URL != "http://127.0.0.1:1/a" || nodes[0].E2BURL != "http://127.0.0.1:3/a" ||
		nodes[0].CPUFeatures != "sse4_2" ||
		time.Since(nodes[0].HeartbeatAt) > time.Minute || nodes[0].StartedAt.IsZero() {
		t.Fatalf("nodes: %+v", nodes)
	}
	// b last heartbeat 10 minutes ago.
	if _, err := s.(*sqlStore).db.ExecContext(ctx, `UPDATE nodes SET heartbeat_ms = ? WHERE name = 'b'`,
		time.Now().Add(-10*time.Minute).UnixMilli()); err != nil {
		t.Fatal(err)
	}
	lost, err := s.MarkLostNodes(ctx, time.Minute)
	if err != nil || len(lost) != 1 || lost[0] != "b" {
		t.Fatalf("lost: %v %v, want [b]", lost, err)
	}
	if lost, _ := s.MarkLostNodes(ctx, time.Minute); len(lost) != 0 {
		t.Fatalf("lost again: %v, want none (b is lost already)", lost)
	}
	if err := s.SetNodeState(ctx, "a", NodeDraining); err != nil {
		t.Fatal(err)
	}
	if err := s.SetNodeState(ctx, "a", "bogus"); err == nil {
		t.Fatal("an unknown node state was accepted")
	}
	nodes, _ = s.ListNodes(ctx)
	if nodes[0].State != NodeDraining || nodes[1].State != NodeLost {
		t.Fatalf("states: %s %s, want draining lost", nodes[0].State, nodes[1].State)
	}
	// b registers again after a restart, now without an E2B listener: active.
	if err := s.UpsertNode(ctx, Node{Name: "b", URL: "http://127.0.0.1:2/b"}); err != nil {
		t.Fatal(err)
	}
	nodes, _ = s.ListNodes(ctx)
	if nodes[1].State != NodeActive || nodes[1].URL != "http://127.0.0.1:2/b" || nodes[1].E2BURL != "" {
		t.Fatalf("re-registered b: %+v", nodes[1])
	}
}

// testFailUnfinishedBuildsSparesOtherNodes: a restarting node fails the
// builds it was running, not those another node runs (holds the lease of).
func testFailUnfinishedBuildsSparesOtherNodes(t *testing.T, s Store) {
	ctx := context.Background()
	if err := s.EnsureTeam(ctx, "t1", "default"); err != nil {
		t.Fatal(err)
	}
	builds := map[string]*Build{}
	for _, name := range []string{"mine", "theirs", "expired"} {
		tpl := &Template{ID: NewID(), TeamID: "t1", Name: name, Spec: "{}", SpecHash: "h", Status: BuildBuilding}
		b := &Build{ID: NewID(), TemplateID: tpl.ID, Status: BuildBuilding, SpecHash: "h"}
		if err := s.InsertTemplate(ctx, tpl); err != nil {
			t.Fatal(err)
		}
		if err := s.InsertBuild(ctx, b); err != nil {
			t.Fatal(err)
		}
		builds[name] = b
	}
	lease := func(name, holder string, ttl time.Duration) {
		if ok, err := s.TryLease(ctx, "build:"+builds[name].TemplateID, holder, ttl); !ok || err != nil {
			t.Fatalf("lease of %s: %v %v", name, ok, err)
		}
	}
	lease("mine", "a", time.Minute)
	lease("theirs", "b", time.Minute)
	lease("expired", "b", time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	if err := s.FailUnfinishedBuilds(ctx, "a", "interrupted"); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"mine": BuildFailed, "theirs": BuildBuilding, "expired": BuildFailed} {
		b, err := s.GetBuild(ctx, builds[name].TemplateID, builds[name].ID)
		if err != nil {
			t.Fatal(err)
		}
		tpl, _ := s.GetTemplate(ctx, "t1", name)
		if b.Status != want || tpl.Status != want {
			t.Errorf("%s: build %s, template %s; want %s", name, b.Status, tpl.Status, want)
		}
	}
	// a's own lease is gone: b can build "mine" now.
	lease("mine", "b", time.Minute)
}

// Limit 0 lists every build (SQLite's LIMIT -1 was refused by PostgreSQL).
func testListBuildsAllOrSome(t *testing.T, s Store) {
	ctx := context.Background()
	if err := s.EnsureTeam(ctx, "t1", "default"); err != nil {
		t.Fatal(err)
	}
	tpl := &Template{ID: NewID(), TeamID: "t1", Name: "lb", Spec: "{}", SpecHash: "h", Status: BuildBuilding}
	if err := s.InsertTemplate(ctx, tpl); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := s.InsertBuild(ctx, &Build{ID: NewID(), TemplateID: tpl.ID, Status: BuildBuilding, SpecHash: "h"}); err != nil {
			t.Fatal(err)
		}
	}
	for limit, want := range map[int]int{0: 3, 2: 2} {
		bs, err := s.ListBuilds(ctx, tpl.ID, limit)
		if err != nil || len(bs) != want {
			t.Errorf("ListBuilds(limit %d) = %d builds, %v; want %d", limit, len(bs), err, want)
		}
	}
}

// testNodeSandboxesOnlyThatNodes: a node's periodic work sees exactly the
// sandboxes it owns in the statuses it asks for, and stops seeing one as
// soon as another node claims it.
func testNodeSandboxesOnlyThatNodes(t *testing.T, s Store) {
	ctx := context.Background()
	a1 := ownedSandbox(t, s, "a")
	a2 := ownedSandbox(t, s, "a")
	aPaused := ownedSandbox(t, s, "a")
	aPaused.Status = StatusPaused
	if err := s.UpdateSandbox(ctx, aPaused); err != nil {
		t.Fatal(err)
	}
	b1 := ownedSandbox(t, s, "b")
	unowned := ownedSandbox(t, s, "")
	ids := func(nodes []string, statuses ...string) []string {
		t.Helper()
		list, err := s.NodeSandboxes(ctx, nodes, statuses...)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, sb := range list {
			out = append(out, sb.ID)
		}
		return out
	}
	want := func(got []string, want ...*Sandbox) {
		t.Helper()
		var w []string
		for _, sb := range want {
			w = append(w, sb.ID)
		}
		sort.Strings(got)
		sort.Strings(w)
		if fmt.Sprint(got) != fmt.Sprint(w) {
			t.Fatalf("got %v, want %v", got, w)
		}
	}
	want(ids([]string{"a"}, StatusActive), a1, a2)
	want(ids([]string{"a"}), a1, a2, aPaused)
	want(ids([]string{"a"}, StatusActive, StatusPaused), a1, a2, aPaused)
	want(ids([]string{"a", ""}, StatusActive), a1, a2, unowned)
	want(ids([]string{"b"}, StatusPaused))
	want(ids([]string{"b"}, StatusActive), b1)
	want(ids(nil, StatusActive))
	want(ids([]string{"c"}))
	if _, err := s.ClaimSandbox(ctx, a2.ID, 0, "b"); err != nil {
		t.Fatal(err)
	}
	want(ids([]string{"a"}, StatusActive), a1)
	want(ids([]string{"b"}, StatusActive), a2, b1)
}
