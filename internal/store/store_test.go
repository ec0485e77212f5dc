package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "stasis.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

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

func TestTokenGenerations(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
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
