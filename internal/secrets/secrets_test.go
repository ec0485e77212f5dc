package secrets

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/store"
)

func newService(t *testing.T) (*Service, store.Store, []byte) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.EnsureTeam(ctx, "team", "team"); err != nil {
		t.Fatal(err)
	}
	key, err := LoadOrCreateKey(filepath.Join(dir, "secrets.key"))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := New(st, key)
	if err != nil {
		t.Fatal(err)
	}
	return svc, st, key
}

func strp(s string) *string { return &s }

func TestKeyFileCreatedOnceWith0600(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k", "secrets.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != KeySize {
		t.Fatalf("key file: %v %v", fi, err)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("second load gave another key (%v)", err)
	}
	os.WriteFile(path, []byte("short"), 0o600)
	if _, err := LoadOrCreateKey(path); err == nil {
		t.Fatal("a truncated key file was accepted")
	}
}

func TestValueIsEncryptedAtRestAndBoundToItsRow(t *testing.T) {
	svc, st, key := newService(t)
	ctx := context.Background()
	const value = "sk-real-value-0123456789"
	sc, err := svc.Create(ctx, "team", CreateParams{Name: "a", Value: strp(value), Provider: "openai"})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := st.GetSecretByID(ctx, sc.ID)
	if bytes.Contains(got.Value, []byte(value)) || bytes.Contains(got.Auth, []byte(value)) {
		t.Fatal("the value is stored in clear")
	}
	seal, _ := NewSealer(key)
	if plain, err := seal.Open(got.Value, sc.ID); err != nil || string(plain) != value {
		t.Fatalf("open: %q %v", plain, err)
	}
	if _, err := seal.Open(got.Value, "sec_other"); !errors.Is(err, ErrUndecryptable) {
		t.Fatal("a value opened under another row's id")
	}
	other, _ := NewSealer(bytes.Repeat([]byte{1}, KeySize))
	if _, err := other.Open(got.Value, sc.ID); !errors.Is(err, ErrUndecryptable) {
		t.Fatal("a value opened under another key")
	}
}

func TestCreateValidation(t *testing.T) {
	svc, st, _ := newService(t)
	ctx := context.Background()
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }
	for _, tc := range []struct {
		name string
		p    CreateParams
		want string
	}{
		{"bad name", CreateParams{Name: "1abc", Value: strp("v"), Provider: "openai"}, "name"},
		{"long name", CreateParams{Name: strings.Repeat("a", 129), Value: strp("v"), Provider: "openai"}, "name"},
		{"no value", CreateParams{Name: "a", Provider: "openai"}, "value"},
		{"value too long", CreateParams{Name: "a", Value: strp(strings.Repeat("v", 8193)), Provider: "openai"}, "8192"},
		{"value with newline", CreateParams{Name: "a", Value: strp("v\r\nX-Evil: 1"), Provider: "openai"}, "control"},
		{"unknown provider", CreateParams{Name: "a", Value: strp("v"), Provider: "nope"}, "provider"},
		{"provider and auth", CreateParams{Name: "a", Value: strp("v"), Provider: "openai", Auth: raw(`{"type":"bearer"}`), Hosts: []string{"x.com"}}, "not both"},
		{"auth without hosts", CreateParams{Name: "a", Value: strp("v"), Auth: raw(`{"type":"bearer"}`)}, "hosts"},
		{"neither", CreateParams{Name: "a", Value: strp("v")}, "provider"},
		{"bad type", CreateParams{Name: "a", Value: strp("v"), Auth: raw(`{"type":"magic"}`), Hosts: []string{"x.com"}}, "magic"},
		{"api-key without header", CreateParams{Name: "a", Value: strp("v"), Auth: raw(`{"type":"api-key"}`), Hosts: []string{"x.com"}}, "header"},
		{"custom without value", CreateParams{Name: "a", Value: strp("v"), Auth: raw(`{"type":"custom","headers":{"X":"static"}}`), Hosts: []string{"x.com"}}, "{{ value }}"},
		{"unknown auth key", CreateParams{Name: "a", Value: strp("v"), Auth: raw(`{"type":"bearer","extra":1}`), Hosts: []string{"x.com"}}, "extra"},
		{"bad host", CreateParams{Name: "a", Value: strp("v"), Auth: raw(`{"type":"bearer"}`), Hosts: []string{"http://x.com"}}, "hosts"},
		{"tld wildcard", CreateParams{Name: "a", Value: strp("v"), Auth: raw(`{"type":"bearer"}`), Hosts: []string{"*.com"}}, "public suffix"},
		{"psl wildcard", CreateParams{Name: "a", Value: strp("v"), Auth: raw(`{"type":"bearer"}`), Hosts: []string{"*.co.uk"}}, "public suffix"},
		{"too many hosts", CreateParams{Name: "a", Value: strp("v"), Auth: raw(`{"type":"bearer"}`), Hosts: strings.Split("a.io b.io c.io d.io e.io f.io g.io h.io i.io j.io k.io l.io m.io n.io o.io p.io q.io", " ")}, "hosts"},
		{"per_host host not listed", CreateParams{Name: "a", Value: strp("v"), Auth: raw(`{"per_host":[{"hosts":["y.com"],"type":"bearer"}]}`), Hosts: []string{"x.com"}}, "not in the secret's hosts"},
		{"per_host overlap", CreateParams{Name: "a", Value: strp("v"), Auth: raw(`{"per_host":[{"hosts":["x.com"],"type":"bearer"},{"hosts":["x.com"],"type":"basic"}]}`), Hosts: []string{"x.com"}}, "another rule"},
		{"per_host empty", CreateParams{Name: "a", Value: strp("v"), Auth: raw(`{"per_host":[]}`), Hosts: []string{"x.com"}}, "at least one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := svc.Create(ctx, "team", tc.p)
			var e *Error
			if !errors.As(err, &e) || e.Status != 400 || !strings.Contains(e.Message, tc.want) {
				t.Fatalf("got %v, want a 400 about %q", err, tc.want)
			}
			if tc.p.Value != nil && len(*tc.p.Value) > 3 && strings.Contains(e.Message, *tc.p.Value) {
				t.Fatal("the error echoes the value")
			}
		})
	}
	if list, _ := st.ListSecrets(ctx, "team"); len(list) != 0 {
		t.Fatalf("refused creates stored %d secrets", len(list))
	}
	if _, err := svc.Create(ctx, "team", CreateParams{Name: "dup", Value: strp("v"), Provider: "openai"}); err != nil {
		t.Fatal(err)
	}
	_, err := svc.Create(ctx, "team", CreateParams{Name: "dup", Value: strp("v"), Provider: "openai"})
	var e *Error
	if !errors.As(err, &e) || e.Status != 409 {
		t.Fatalf("duplicate name: %v", err)
	}
}

func TestApplyEachAuthType(t *testing.T) {
	const tok, val = "sst_proxy_TOKEN", "REAL"
	basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }
	for _, tc := range []struct {
		name   string
		rule   Rule
		in     http.Header
		header string
		want   string
	}{
		{"bearer", Rule{Type: Bearer}, http.Header{"Authorization": {"Bearer " + tok}}, "Authorization", "Bearer REAL"},
		{"basic username set", Rule{Type: Basic, Username: "x-access-token"}, http.Header{"Authorization": {basic("me", tok)}}, "Authorization", basic("x-access-token", val)},
		{"basic inbound username", Rule{Type: Basic}, http.Header{"Authorization": {basic("me", tok)}}, "Authorization", basic("me", val)},
		{"basic default username", Rule{Type: Basic}, http.Header{"X-Token": {tok}}, "Authorization", basic("x", val)},
		{"api-key", Rule{Type: APIKey, Header: "X-Api-Key"}, http.Header{"X-Api-Key": {tok}}, "X-Api-Key", "REAL"},
		{"api-key prefix", Rule{Type: APIKey, Header: "Authorization", Prefix: "Token "}, http.Header{"Authorization": {"Token " + tok}}, "Authorization", "Token REAL"},
		{"custom", Rule{Type: Custom, Headers: map[string]string{"X-Token": "Token {{ value }}", "X-Other": "v={{value}}"}}, http.Header{"X-Token": {tok}}, "X-Other", "v=REAL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.in.Clone()
			h.Set("Accept", "application/json")
			tc.rule.Apply(h, tok, val)
			if got := h.Get(tc.header); got != tc.want {
				t.Fatalf("%s = %q, want %q", tc.header, got, tc.want)
			}
			for k, vs := range h {
				for _, v := range vs {
					if strings.Contains(v, tok) {
						t.Fatalf("the stand-in is still in %s", k)
					}
				}
			}
			if h.Get("Accept") != "application/json" {
				t.Fatal("an unrelated header was dropped")
			}
		})
	}
}

func TestHostMatching(t *testing.T) {
	for _, tc := range []struct {
		p, h string
		want bool
	}{
		{"api.example.com", "API.example.com", true},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "a.b.example.com", false},
		{"*.example.com", "evilexample.com", false},
		{"example.com", "example.com.evil.io", false},
	} {
		if got := MatchHost(tc.p, tc.h); got != tc.want {
			t.Errorf("MatchHost(%q, %q) = %v", tc.p, tc.h, got)
		}
	}
}

// TestTokensResolveOnlyInTheirSandbox drives bindings, stand-ins and
// Resolve through the real store.
func TestTokensResolveOnlyInTheirSandbox(t *testing.T) {
	svc, st, _ := newService(t)
	ctx := context.Background()
	for _, id := range []string{"sb-1", "sb-2", "sb-fork"} {
		if err := st.InsertSandbox(ctx, &store.Sandbox{ID: id, TeamID: "team", Name: id, Status: "active"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := svc.Create(ctx, "team", CreateParams{Name: "ant", Value: strp("sk-ant-REAL"), Provider: "anthropic"}); err != nil {
		t.Fatal(err)
	}
	if err := svc.Bind(ctx, "team", "sb-1", map[string]string{"ANTHROPIC_API_KEY": "ant"}); err != nil {
		t.Fatal(err)
	}
	env, _ := svc.Env(ctx, "sb-1")
	tok := env["ANTHROPIC_API_KEY"]
	if !strings.HasPrefix(tok, "sk-ant-api03-") || strings.Contains(tok, "REAL") {
		t.Fatalf("stand-in %q", tok)
	}
	req := func() http.Header { return http.Header{"X-Api-Key": {tok}} }
	h := req()
	out, err := svc.Resolve(ctx, "sb-1", "api.anthropic.com", h)
	if err != nil || out.SecretID == "" || out.Refuse != "" || h.Get("X-Api-Key") != "sk-ant-REAL" {
		t.Fatalf("own sandbox: %+v %v %v", out, err, h)
	}
	h = req()
	if out, _ := svc.Resolve(ctx, "sb-2", "api.anthropic.com", h); out.SecretID != "" || h.Get("X-Api-Key") != tok {
		t.Fatalf("token resolved in another sandbox: %+v", out)
	}
	h = req()
	if out, _ := svc.Resolve(ctx, "sb-1", "evil.example.com", h); !out.Mismatch || h.Get("X-Api-Key") != tok {
		t.Fatalf("token resolved toward another host: %+v %v", out, h)
	}
	if err := svc.Inherit(ctx, "sb-1", "sb-fork"); err != nil {
		t.Fatal(err)
	}
	h = req()
	if out, _ := svc.Resolve(ctx, "sb-fork", "api.anthropic.com", h); out.SecretID == "" || h.Get("X-Api-Key") != "sk-ant-REAL" {
		t.Fatal("a fork's inherited token did not resolve")
	}
	if _, err := svc.Rotate(ctx, "team", "ant", strp("sk-ant-NEW")); err != nil {
		t.Fatal(err)
	}
	h = req()
	if svc.Resolve(ctx, "sb-1", "api.anthropic.com", h); h.Get("X-Api-Key") != "sk-ant-NEW" {
		t.Fatal("rotation did not apply")
	}
	if err := svc.Detach(ctx, "sb-fork", "ANTHROPIC_API_KEY"); err != nil {
		t.Fatal(err)
	}
	if out, _ := svc.Resolve(ctx, "sb-fork", "api.anthropic.com", req()); out.Refuse != CodeDetached {
		t.Fatalf("detached: %+v", out)
	}
	if err := svc.Delete(ctx, "team", "ant"); err != nil {
		t.Fatal(err)
	}
	if out, _ := svc.Resolve(ctx, "sb-1", "api.anthropic.com", req()); out.Refuse != CodeRevoked {
		t.Fatalf("revoked: %+v", out)
	}
	bs, _ := svc.Bindings(ctx, "sb-1")
	if len(bs) != 1 || !bs[0].Revoked {
		t.Fatalf("bindings after delete: %+v", bs)
	}
}
