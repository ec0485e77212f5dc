package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// testEveryTableRoundTrip writes and reads back a row of every kind, on each
// engine: what one engine stores the other must store the same way.
func testEveryTableRoundTrip(t *testing.T, s Store) {
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.EnsureTeam(ctx, "t1", "default"))
	must(s.EnsureTeam(ctx, "t1", "default")) // idempotent
	key := NewSecret("ss_live_")
	must(s.AddAPIKey(ctx, "t1", "k", key))
	if team, err := s.TeamForAPIKey(ctx, key); err != nil || team.ID != "t1" {
		t.Fatalf("team for key: %v %v", team, err)
	}
	if _, err := s.TeamForAPIKey(ctx, "wrong"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown key: %v", err)
	}

	// Sandboxes: flags, nullable ints and times, timers, counts.
	timeout := 60
	past := time.Now().Add(-time.Second)
	sb := &Sandbox{ID: NewID(), TeamID: "t1", Name: "a", Status: StatusActive, Template: "x", VCPU: 2,
		MemoryMiB: 256, TimeoutSeconds: &timeout, PauseAt: &past, PreviewPrivate: true, DeleteOnTimeout: true,
		Metadata: map[string]string{"k": "v"}, Defaults: ExecDefaults{Workdir: "/w"}, Node: "n1"}
	must(s.InsertSandbox(ctx, sb))
	got, err := s.GetSandbox(ctx, "t1", sb.ID)
	must(err)
	if !got.PreviewPrivate || !got.DeleteOnTimeout || *got.TimeoutSeconds != 60 || got.PauseAt == nil ||
		got.Defaults.Workdir != "/w" || got.Metadata["k"] != "v" || got.Node != "n1" || got.VCPU != 2 {
		t.Fatalf("sandbox round trip: %+v", got)
	}
	due, err := s.DueTimers(ctx, time.Now())
	must(err)
	if len(due) != 1 || due[0].ID != sb.ID {
		t.Fatalf("due timers: %d, want the one sandbox", len(due))
	}
	if n, err := s.CountLive(ctx, "t1"); err != nil || n != 1 {
		t.Fatalf("count live: %d %v", n, err)
	}
	if m, err := s.CountByStatus(ctx); err != nil || m[StatusActive] != 1 {
		t.Fatalf("count by status: %v %v", m, err)
	}

	// Network log: inserted rows get ids; rows of a gone sandbox are skipped.
	ev := &NetworkEvent{SandboxID: sb.ID, Time: time.Now(), Kind: "connection", Host: "example.com", Verdict: "allow"}
	gone := &NetworkEvent{SandboxID: "gone", Time: time.Now(), Kind: "connection"}
	must(s.WriteNetworkLog(ctx, []NetworkLogWrite{{Event: ev}, {Event: gone}}))
	if ev.ID <= 0 || gone.ID != -1 {
		t.Fatalf("network log ids: %d %d", ev.ID, gone.ID)
	}
	must(s.WriteNetworkLog(ctx, []NetworkLogWrite{{Event: ev, Done: true, BytesSent: 10, BytesRecv: 20}}))
	evs, more, err := s.ListNetworkLog(ctx, NetworkLogQuery{SandboxID: sb.ID, Verdict: "allow", Limit: 10})
	must(err)
	if len(evs) != 1 || more || evs[0].BytesRecv != 20 || evs[0].Host != "example.com" {
		t.Fatalf("network log: %+v more=%v", evs, more)
	}
	must(s.TrimNetworkLog(ctx, sb.ID, 0))

	// Secrets, bindings (a duplicate env key is a conflict) and audit.
	sc := &Secret{ID: NewID(), TeamID: "t1", Name: "gh", Auth: json.RawMessage(`{"type":"bearer"}`),
		Hosts: []string{"api.github.com"}, Value: []byte{0, 1, 2, 255}}
	must(s.InsertSecret(ctx, sc))
	if err := s.InsertSecret(ctx, &Secret{ID: NewID(), TeamID: "t1", Name: "gh", Auth: json.RawMessage(`{}`), Value: []byte{1}}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate secret name: %v, want ErrConflict", err)
	}
	gs, err := s.GetSecret(ctx, "t1", "gh")
	must(err)
	if !bytes.Equal(gs.Value, sc.Value) || gs.Hosts[0] != "api.github.com" {
		t.Fatalf("secret round trip: %+v", gs)
	}
	b := &SecretBinding{SandboxID: sb.ID, EnvKey: "GH", SecretID: sc.ID, TokenSeed: "seed", TokenHash: "h"}
	must(s.AddSecretBindings(ctx, []*SecretBinding{b}))
	if b.ID <= 0 {
		t.Fatalf("binding id %d", b.ID)
	}
	if err := s.AddSecretBindings(ctx, []*SecretBinding{{SandboxID: sb.ID, EnvKey: "GH", SecretID: sc.ID}}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate binding: %v, want ErrConflict", err)
	}
	must(s.DetachSecretBinding(ctx, sb.ID, "GH"))
	if bs, _ := s.SecretBindings(ctx, sb.ID, false); len(bs) != 0 {
		t.Fatalf("bindings without detached: %d", len(bs))
	}
	if bs, _ := s.SecretBindings(ctx, sb.ID, true); len(bs) != 1 || !bs[0].Detached || bs[0].SecretName != "gh" {
		t.Fatalf("bindings with detached: %+v", bs)
	}
	code := "upstream_error"
	audit := &SecretAuditEvent{SecretID: sc.ID, SandboxID: sb.ID, Time: time.Now(), Method: "GET",
		Host: "api.github.com", Path: "/", Status: 502, ErrorCode: &code}
	must(s.AddSecretAudit(ctx, audit))
	if audit.ID <= 0 {
		t.Fatalf("audit id %d", audit.ID)
	}
	if as, err := s.ListSecretAudit(ctx, AuditQuery{SecretID: sc.ID, Errors: true, Limit: 5}); err != nil ||
		len(as) != 1 || *as[0].SandboxName != "a" {
		t.Fatalf("audit: %+v %v", as, err)
	}
	must(s.DeleteSecret(ctx, sc.ID))
	if _, err := s.GetSecret(ctx, "t1", "gh"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted secret: %v", err)
	}

	// Templates and builds.
	tpl := &Template{ID: NewID(), TeamID: "t1", Name: "web-app", Spec: "{}", SpecHash: "h", Status: BuildPending}
	must(s.InsertTemplate(ctx, tpl))
	if err := s.InsertTemplate(ctx, &Template{ID: NewID(), TeamID: "t1", Name: "web-app", Spec: "{}"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate template: %v, want ErrConflict", err)
	}
	if ts, err := s.ListTemplates(ctx, "t1", "web-"); err != nil || len(ts) != 1 {
		t.Fatalf("templates by prefix: %d %v", len(ts), err)
	}
	build := &Build{ID: NewID(), TemplateID: tpl.ID, Status: BuildBuilding, SpecHash: "h"}
	must(s.InsertBuild(ctx, build))
	must(s.FailUnfinishedBuilds(ctx, "n1", "restarted"))
	if gb, err := s.GetBuild(ctx, tpl.ID, build.ID); err != nil || gb.Status != BuildFailed || gb.Error != "restarted" {
		t.Fatalf("unfinished build: %+v %v", gb, err)
	}

	// Deleting the sandbox takes its log and bindings with it.
	must(s.DeleteSandbox(ctx, sb.ID))
	if evs, _, _ := s.ListNetworkLog(ctx, NetworkLogQuery{SandboxID: sb.ID, Limit: 10}); len(evs) != 0 {
		t.Fatalf("network log outlived its sandbox: %d rows", len(evs))
	}
	must(s.Check(ctx))
}
