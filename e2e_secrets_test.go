package stasis_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	stasis "github.com/stasis-sandbox/stasis"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestE2ESecrets: secrets through the SDK: create (provider and custom),
// list, get, rotate, providers, a sandbox created with a secret and one
// attached later, the sandboxes of a secret, detach, delete (revoked), an
// empty audit. Injection itself is tested in test/e2e/secrets_test.go.
func TestE2ESecrets(t *testing.T) {
	srv := testenv.StartServer(t)
	c := newClient(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
	defer cancel()
	sec := c.Secrets()

	const value = "sk-real-value-for-the-go-sdk"
	ant, err := sec.Create(ctx, stasis.SecretCreateOptions{Name: "ant", Value: value, Provider: "anthropic"})
	if err != nil {
		t.Fatal(err)
	}
	if ant.AuthType != stasis.AuthAPIKey || ant.ProviderShortcut != "anthropic" || strings.Join(ant.Hosts, ",") != "api.anthropic.com" {
		t.Fatalf("created: %+v", ant)
	}
	custom, err := sec.Create(ctx, stasis.SecretCreateOptions{Name: "gh", Value: value + "-gh", Hosts: []string{"api.github.com", "github.com"},
		Auth: &stasis.SecretAuth{PerHost: []stasis.SecretAuthRule{
			{Type: stasis.AuthBearer, Hosts: []string{"api.github.com"}},
			{Type: stasis.AuthBasic, Username: "x-access-token", Hosts: []string{"github.com"}}}}})
	if err != nil || custom.AuthType != stasis.AuthPerHost {
		t.Fatalf("per_host: %+v %v", custom, err)
	}
	if _, err := sec.Create(ctx, stasis.SecretCreateOptions{Name: "bad", Value: "v", Auth: &stasis.SecretAuth{Rule: stasis.SecretAuthRule{Type: "magic"}}, Hosts: []string{"a.test"}}); !errors.Is(err, stasis.ErrValidation) {
		t.Fatalf("bad auth type: %v", err)
	}
	if list, err := sec.List(ctx); err != nil || len(list) != 2 {
		t.Fatalf("list: %+v %v", list, err)
	}
	rot, err := sec.Rotate(ctx, "ant", value+"-2")
	if err != nil || rot.ID != ant.ID {
		t.Fatalf("rotate: %+v %v", rot, err)
	}
	provs, err := c.Providers(ctx)
	if err != nil || len(provs) < 3 || provs[0].Name != "anthropic" || provs[0].TokenShape != "sk-ant-api03-..." {
		t.Fatalf("providers: %+v %v", provs, err)
	}

	sb, err := c.Create(ctx, stasis.CreateOptions{Name: "sec", Template: template, Secrets: map[string]string{"ANTHROPIC_API_KEY": "ant"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Kill(context.Background()) })
	if b := sb.Snapshot().Secrets; len(b) != 1 || b[0].EnvKey != "ANTHROPIC_API_KEY" || b[0].SecretName != "ant" || b[0].Revoked {
		t.Fatalf("bindings after create: %+v", b)
	}
	res, err := sb.Commands.Run(ctx, "echo $ANTHROPIC_API_KEY", nil)
	if err != nil || !strings.HasPrefix(res.Stdout, "sk-ant-api03-") || strings.Contains(res.Stdout, value) {
		t.Fatalf("stand-in: %+v %v", res, err)
	}
	if err := sb.AttachSecret(ctx, "GITHUB_TOKEN", "gh"); err != nil {
		t.Fatal(err)
	}
	if bound, err := sec.Sandboxes(ctx, "gh"); err != nil || len(bound) != 1 || bound[0].SandboxID != sb.ID || bound[0].EnvKey != "GITHUB_TOKEN" {
		t.Fatalf("sandboxes of gh: %+v %v", bound, err)
	}
	if err := sb.DetachSecret(ctx, "GITHUB_TOKEN"); err != nil {
		t.Fatal(err)
	}
	if err := sb.DetachSecret(ctx, "GITHUB_TOKEN"); !errors.Is(err, stasis.ErrNotFound) {
		t.Fatalf("second detach: %v", err)
	}
	if err := sec.Delete(ctx, "ant"); err != nil {
		t.Fatal(err)
	}
	info, err := c.Get(ctx, sb.ID)
	if err != nil || len(info.Secrets) != 1 || !info.Secrets[0].Revoked {
		t.Fatalf("bindings after delete: %+v %v", info, err)
	}
	if _, err := sec.Get(ctx, "ant"); !errors.Is(err, stasis.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if evs, err := sec.Audit(ctx, "gh", stasis.AuditOptions{Limit: 10, Status: "errors"}); err != nil || len(evs) != 0 {
		t.Fatalf("audit: %+v %v", evs, err)
	}
}
