//go:build stasis_sim

package sim

import (
	"context"
	"errors"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
	"github.com/stasis-sandbox/stasis/internal/runtime"
)

func spec(id, token string) runtime.Spec {
	return runtime.Spec{ID: id, Env: []string{agentproto.EnvTokenSHA256 + "=" + agentproto.TokenHashHex(token)}}
}

// TestLifecycleThroughFakeAgent: what the service asks of a sandbox's agent
// along create, pause (quiesce, freeze, checkpoint), restore and token
// rotation is answered per instance, and only with that instance's token.
func TestLifecycleThroughFakeAgent(t *testing.T) {
	ctx := context.Background()
	d, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	inst, err := d.Create(ctx, spec("sb1", "tok1"))
	if err != nil {
		t.Fatal(err)
	}
	a := agentclient.New(inst.AgentAddr(), "tok1")
	if err := a.WaitReady(ctx); err != nil {
		t.Fatalf("agent of a created instance: %v", err)
	}
	if err := agentclient.New(inst.AgentAddr(), "tok2").Health(ctx); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Fatalf("health with another sandbox's token: %v, want unauthorized", err)
	}
	if err := a.Quiesce(ctx); err != nil {
		t.Fatalf("quiesce: %v", err)
	}
	if err := d.Freeze(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}
	if a.Health(ctx) == nil {
		t.Fatal("a frozen instance's agent answered")
	}
	dir := t.TempDir()
	if err := d.Checkpoint(ctx, "sb1", dir); err != nil {
		t.Fatal(err)
	}
	d.Destroy(ctx, "sb1")
	if l, _ := d.List(ctx); len(l) != 0 {
		t.Fatalf("after destroy, list = %v", l)
	}
	if _, err := d.Restore(ctx, spec("sb2", "tok2"), dir); err == nil {
		t.Fatal("restored another sandbox's checkpoint")
	}
	if _, err := d.Restore(ctx, spec("sb1", "tok1"), dir); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if err := a.Health(ctx); err != nil {
		t.Fatalf("agent after restore: %v", err)
	}
	if err := a.RotateToken(ctx, "tok3"); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	if err := a.Health(ctx); err != nil {
		t.Fatalf("agent with the rotated token: %v", err)
	}
	if err := agentclient.New(inst.AgentAddr(), "tok1").Health(ctx); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Fatalf("old token after rotation: %v, want unauthorized", err)
	}
	if err := d.Checkpoint(ctx, "nope", t.TempDir()); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("checkpoint of an unknown instance: %v", err)
	}
}
