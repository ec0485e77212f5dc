package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestSecretsStoredOnlyHashed(t *testing.T) {
	ctx := context.Background()
	s, path := openTemp(t)
	if err := s.EnsureTeam(ctx, "t1", "default"); err != nil {
		t.Fatal(err)
	}
	key := NewSecret("ss_live_")
	if err := s.AddAPIKey(ctx, "t1", "test", key); err != nil {
		t.Fatal(err)
	}
	sb := &Sandbox{ID: NewID(), TeamID: "t1", Name: "a", Status: StatusActive, Template: "stasis/minimal"}
	if err := s.InsertSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	tok := NewSecret("sst_")
	if err := s.AddAccessToken(ctx, sb.ID, 0, tok); err != nil {
		t.Fatal(err)
	}
	team, err := s.TeamForAPIKey(ctx, key)
	if err != nil || team.ID != "t1" {
		t.Fatalf("TeamForAPIKey = %v, %v", team, err)
	}
	if _, err := s.TeamForAPIKey(ctx, key+"x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("wrong key: got %v, want ErrNotFound", err)
	}
	s.Close()
	// Neither secret may appear anywhere in the database files.
	files, _ := filepath.Glob(path + "*")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range []string{key, tok} {
			if bytes.Contains(b, []byte(secret)) {
				t.Fatalf("%s contains a plaintext secret", f)
			}
		}
	}
}

func testTokenGenerations(t *testing.T, s Store) {
	ctx := context.Background()
	s.EnsureTeam(ctx, "t1", "default")
	sb := &Sandbox{ID: NewID(), TeamID: "t1", Name: "a", Status: StatusActive, Template: "x"}
	if err := s.InsertSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	old1, old2 := NewSecret("sst_"), NewSecret("sst_")
	s.AddAccessToken(ctx, sb.ID, 0, old1)
	s.AddAccessToken(ctx, sb.ID, 0, old2)
	for _, tok := range []string{old1, old2} {
		if ok, err := s.CheckAccessToken(ctx, sb.ID, tok); !ok || err != nil {
			t.Fatalf("token of current generation rejected: %v", err)
		}
	}
	// A resume bumps the generation: both old tokens die, the new one lives.
	sb.TokenGeneration++
	sb.Status = StatusActive
	if err := s.UpdateSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	fresh := NewSecret("sst_")
	s.AddAccessToken(ctx, sb.ID, sb.TokenGeneration, fresh)
	for _, tok := range []string{old1, old2} {
		if ok, _ := s.CheckAccessToken(ctx, sb.ID, tok); ok {
			t.Fatal("token of an old generation still accepted")
		}
	}
	if ok, _ := s.CheckAccessToken(ctx, sb.ID, fresh); !ok {
		t.Fatal("new token rejected")
	}
	// A token is bound to its sandbox.
	other := &Sandbox{ID: NewID(), TeamID: "t1", Name: "b", Status: StatusActive, Template: "x"}
	s.InsertSandbox(ctx, other)
	if ok, _ := s.CheckAccessToken(ctx, other.ID, fresh); ok {
		t.Fatal("token accepted for another sandbox")
	}
}

func TestSandboxRoundTripAndReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "stasis.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	s.EnsureTeam(ctx, "t1", "default")
	s.EnsureTeam(ctx, "t2", "other")
	timeout := 300
	sb := &Sandbox{ID: NewID(), TeamID: "t1", Name: "job", Status: StatusStarting, Template: "stasis/base",
		VCPU: 1, MemoryMiB: 512, Metadata: map[string]string{"env": "dev", "owner": "ann"},
		Env: map[string]string{"A": "1"}, TimeoutSeconds: &timeout}
	if err := s.InsertSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	sb.Status = StatusPaused
	sb.SnapshotDir = "/x/snap"
	sb.TimeoutSeconds = nil
	if err := s.UpdateSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// Reopening runs migrations again without harm and sees the same data.
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.GetSandbox(ctx, "t1", sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusPaused || got.SnapshotDir != "/x/snap" || got.TimeoutSeconds != nil ||
		got.Metadata["owner"] != "ann" || got.Env["A"] != "1" || got.MemoryMiB != 512 {
		t.Fatalf("round trip mismatch: %+v", got)
	}
	if _, err := s.GetSandbox(ctx, "t2", sb.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("other team sees sandbox: %v", err)
	}
	list, _ := s.ListSandboxes(ctx, "t1", map[string]string{"env": "dev"})
	if len(list) != 1 {
		t.Fatalf("filter env=dev: got %d", len(list))
	}
	list, _ = s.ListSandboxes(ctx, "t1", map[string]string{"env": "prod"})
	if len(list) != 0 {
		t.Fatalf("filter env=prod: got %d", len(list))
	}
	if err := s.DeleteSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSandbox(ctx, sb.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

// backdate makes the sandbox's current status seem to have started d ago.
func backdate(t *testing.T, s Store, id string, d time.Duration) {
	t.Helper()
	at := time.Now().UTC().Add(-d).Format(timeFormat)
	if _, err := s.(*sqlStore).db.ExecContext(context.Background(), `UPDATE sandboxes SET status_changed_at = ? WHERE id = ?`, at, id); err != nil {
		t.Fatal(err)
	}
}

// TestUsageKeepsDeletedSandboxes: a sandbox active 4 s, then paused 6 s,
// then deleted leaves both stretches in its team's usage; the same holds for
// one deleted while active.
func testUsageKeepsDeletedSandboxes(t *testing.T, s Store) {
	ctx := context.Background()
	s.EnsureTeam(ctx, "t1", "default")
	sb := &Sandbox{ID: NewID(), TeamID: "t1", Name: "a", Status: StatusActive, Template: "x"}
	if err := s.InsertSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	backdate(t, s, sb.ID, 4*time.Second)
	sb.Status = StatusPaused
	if err := s.UpdateSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	backdate(t, s, sb.ID, 6*time.Second)
	if err := s.DeleteSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	u, err := s.TeamUsage(ctx, "t1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if u.Active < 4*time.Second || u.Active > 5*time.Second || u.Paused < 6*time.Second || u.Paused > 7*time.Second {
		t.Fatalf("usage after delete = active %v paused %v, want about 4s and 6s", u.Active, u.Paused)
	}

	live := &Sandbox{ID: NewID(), TeamID: "t1", Name: "b", Status: StatusActive, Template: "x"}
	s.InsertSandbox(ctx, live)
	backdate(t, s, live.ID, 3*time.Second)
	if err := s.DeleteSandbox(ctx, live.ID); err != nil {
		t.Fatal(err)
	}
	u, _ = s.TeamUsage(ctx, "t1", time.Now())
	if u.Active < 7*time.Second || u.Paused < 6*time.Second {
		t.Fatalf("usage after deleting an active sandbox = active %v paused %v, want about 7s and 6s", u.Active, u.Paused)
	}
}

// TestUsageCountsKeptSnapshots: snapshot_bytes is every snapshot the team
// keeps: paused sandboxes', saved ones and its templates'; another team's
// do not count.
func testUsageCountsKeptSnapshots(t *testing.T, s Store) {
	ctx := context.Background()
	s.EnsureTeam(ctx, "t1", "default")
	s.EnsureTeam(ctx, "t2", "other")
	paused := &Sandbox{ID: NewID(), TeamID: "t1", Name: "p", Status: StatusPaused, Template: "x", SnapshotDir: "/s/p", SnapshotBytes: 1000}
	if err := s.InsertSandbox(ctx, paused); err != nil {
		t.Fatal(err)
	}
	for _, snap := range []*SavedSnapshot{
		{ID: NewID(), TeamID: "t1", SandboxID: paused.ID, Name: "kept", Dir: "/s/1", SizeBytes: 200},
		{ID: NewID(), TeamID: "t2", SandboxID: "other", Name: "theirs", Dir: "/s/2", SizeBytes: 7},
	} {
		if err := s.InsertSavedSnapshot(ctx, snap); err != nil {
			t.Fatal(err)
		}
	}
	tpl := &Template{ID: NewID(), TeamID: "t1", Name: "web", Spec: "{}", SpecHash: "h", Status: BuildReady}
	if err := s.InsertTemplate(ctx, tpl); err != nil {
		t.Fatal(err)
	}
	tpl.SnapshotDir, tpl.SnapshotBytes = "/s/t", 30
	if err := s.UpdateTemplate(ctx, tpl); err != nil {
		t.Fatal(err)
	}
	u, err := s.TeamUsage(ctx, "t1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if u.SnapshotBytes != 1230 {
		t.Fatalf("snapshot_bytes = %d, want 1000 + 200 + 30", u.SnapshotBytes)
	}
}

// testDataPlaneLookupsSeeEveryChange: the lookups of every data-plane
// request (prepared once, run each time) see each change on the very next
// call: a binding added or detached, a rotated token generation, a deleted
// sandbox.
func testDataPlaneLookupsSeeEveryChange(t *testing.T, s Store) {
	ctx := context.Background()
	sb := ownedSandbox(t, s, "n1")
	tok := NewSecret("sst_")
	s.AddAccessToken(ctx, sb.ID, 0, tok)
	lookup := func(wantToken bool, wantBindings int) {
		t.Helper()
		if ok, err := s.CheckAccessToken(ctx, sb.ID, tok); ok != wantToken || err != nil {
			t.Fatalf("token check: %v (%v), want %v", ok, err, wantToken)
		}
		bs, err := s.SecretBindings(ctx, sb.ID, false)
		if err != nil || len(bs) != wantBindings {
			t.Fatalf("bindings: %d (%v), want %d", len(bs), err, wantBindings)
		}
	}
	lookup(true, 0)
	sc := &Secret{ID: NewID(), TeamID: "t1", Name: "gh", Auth: json.RawMessage(`{}`), Value: []byte{1}}
	if err := s.InsertSecret(ctx, sc); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSecretBindings(ctx, []*SecretBinding{{SandboxID: sb.ID, EnvKey: "GH", SecretID: sc.ID, TokenSeed: "s", TokenHash: "h"}}); err != nil {
		t.Fatal(err)
	}
	lookup(true, 1)
	if err := s.DetachSecretBinding(ctx, sb.ID, "GH"); err != nil {
		t.Fatal(err)
	}
	lookup(true, 0)
	sb.TokenGeneration++
	if err := s.UpdateSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	lookup(false, 0)
	if got, err := s.GetSandbox(ctx, "", sb.ID); err != nil || got.TokenGeneration != sb.TokenGeneration {
		t.Fatalf("get after rotation: %+v, %v", got, err)
	}
	tok = NewSecret("sst_")
	s.AddAccessToken(ctx, sb.ID, sb.TokenGeneration, tok)
	lookup(true, 0)
	if err := s.DeleteSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	lookup(false, 0)
	if _, err := s.GetSandbox(ctx, "", sb.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after delete: %v, want ErrNotFound", err)
	}
}
