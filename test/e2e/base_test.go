package e2e

import (
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestDefaultTemplateIsBase: a create without from_template gets Debian
// (stasis/base) with the user account, its home as working dir, and the
// promised tools.
func TestDefaultTemplateIsBase(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := create(t, srv, map[string]any{"name": "base", "env_vars": map[string]string{"GREETING": "hi"}})
	if sb.Template != "stasis/base" {
		t.Fatalf("template = %q, want stasis/base", sb.Template)
	}
	if got := c.sh("whoami; pwd; echo $HOME; echo $GREETING"); got != "user\n/home/user\n/home/user\nhi" {
		t.Fatalf("identity = %q", got)
	}
	if got := c.sh(`python3 -c 'print(6*7)'`); got != "42" {
		t.Fatalf("python3: %q", got)
	}
	for _, tool := range []string{"bash", "curl", "ps", "ls"} {
		if got := c.sh("command -v " + tool); !strings.HasPrefix(got, "/") {
			t.Fatalf("%s missing: %q", tool, got)
		}
	}
	if got := c.sh("test -s /etc/ssl/certs/ca-certificates.crt && echo ok"); got != "ok" {
		t.Fatal("ca-certificates missing")
	}
	// Files written through the API belong to the user.
	c.writeFile("/home/user/hello.txt", []byte("hi\n"))
	if got := c.sh("stat -c %U /home/user/hello.txt"); got != "user" {
		t.Fatalf("owner of uploaded file = %q", got)
	}
}
