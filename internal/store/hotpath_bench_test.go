package store

import (
	"context"
	"path/filepath"
	"testing"
)

// The store's work for one data-plane request (an exec): the access token's
// check, the sandbox's record and its secret bindings.
func BenchmarkDataPlaneLookups(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(b.TempDir(), "stasis.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	s.EnsureTeam(ctx, "t1", "default")
	sb := &Sandbox{ID: NewID(), TeamID: "t1", Name: "a", Status: StatusActive, Template: "x"}
	if err := s.InsertSandbox(ctx, sb); err != nil {
		b.Fatal(err)
	}
	tok := NewSecret("sst_")
	s.AddAccessToken(ctx, sb.ID, 0, tok)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if ok, err := s.CheckAccessToken(ctx, sb.ID, tok); !ok || err != nil {
			b.Fatal("token refused", err)
		}
		if _, err := s.GetSandbox(ctx, "", sb.ID); err != nil {
			b.Fatal(err)
		}
		if _, err := s.SecretBindings(ctx, sb.ID, false); err != nil {
			b.Fatal(err)
		}
	}
}
