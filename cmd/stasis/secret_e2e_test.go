package main

import (
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestCLISecrets: secret create (value from stdin), ls, rotate, audit, rm,
// and create --secret: the sandbox sees a stand-in, never the value.
func TestCLISecrets(t *testing.T) {
	srv := testenv.StartServer(t)
	c := newCLI(t, srv)
	const value = "sk-cli-real-value-123456"
	if r := c.runIn(strings.NewReader(value+"\n"), "secret", "create", "oai", "--provider", "openai"); r.code != 0 || strings.TrimSpace(r.stdout) != "oai" {
		t.Fatalf("secret create: %+v", r)
	}
	if r := c.runIn(strings.NewReader(value), "secret", "create", "tok", "--auth", "api-key", "--header", "X-Token", "--host", "api.example.test"); r.code != 0 {
		t.Fatalf("custom secret create: %+v", r)
	}
	if r := c.runIn(strings.NewReader(""), "secret", "create", "empty", "--provider", "openai"); r.code == 0 || !strings.Contains(r.stderr, "stdin") {
		t.Fatalf("create without a value: %+v", r)
	}
	if r := c.runIn(strings.NewReader("v"), "secret", "create", "bad", "--auth", "api-key", "--host", "a.test"); r.code == 0 || !strings.Contains(r.stderr, "header") {
		t.Fatalf("api-key without --header: %+v", r)
	}
	ls := c.ok("secret", "ls")
	if !strings.Contains(ls, "oai") || !strings.Contains(ls, "api.openai.com") || !strings.Contains(ls, "tok") || strings.Contains(ls, value) {
		t.Fatalf("secret ls:\n%s", ls)
	}
	if r := c.runIn(strings.NewReader(value+"-2\n"), "secret", "rotate", "oai"); r.code != 0 {
		t.Fatalf("rotate: %+v", r)
	}
	id := c.create("sec", "--secret", "OPENAI_API_KEY=oai")
	tok := strings.TrimSpace(c.ok("exec", id, "echo $OPENAI_API_KEY"))
	if !strings.HasPrefix(tok, "sk-proj-") || strings.Contains(tok, value) {
		t.Fatalf("OPENAI_API_KEY in the sandbox: %q", tok)
	}
	if out := c.ok("secret", "audit", "oai"); !strings.HasPrefix(out, "ID") {
		t.Fatalf("audit: %q", out)
	}
	if r := c.run("secret", "audit", "--status", "6xx", "oai"); r.code == 0 {
		t.Fatalf("audit with a bad status: %+v", r)
	}
	c.ok("secret", "rm", "oai", "tok")
	if ls := c.ok("secret", "ls"); strings.Contains(ls, "oai") {
		t.Fatalf("after rm:\n%s", ls)
	}
	if r := c.run("create", "--secret", "X=missing"); r.code == 0 || !strings.Contains(r.stderr, "missing") {
		t.Fatalf("create with a missing secret: %+v", r)
	}
}
