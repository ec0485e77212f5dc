package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/egress"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// A new sandbox trusts stasisd's egress CA: the CA alone at its own path,
// and appended to the system bundle, which keeps the image's own
// certificates (stasis/base has Debian's; stasis/minimal has none).
func TestCreateInstallsEgressCA(t *testing.T) {
	srv := testenv.StartServer(t)
	ca, err := os.ReadFile(filepath.Join(srv.DataDir(), "egress-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caText := strings.TrimSpace(string(ca))
	for _, tc := range []struct {
		template string
		minCerts int // certificates in the bundle, the CA included
	}{{"stasis/minimal", 1}, {"stasis/base", 50}} {
		c, _ := create(t, srv, map[string]any{"name": "trust", "from_template": tc.template})
		if got := strings.TrimSpace(string(c.readFile("/etc/ssl/certs/stasis-egress-ca.pem"))); got != caText {
			t.Errorf("%s: stasis-egress-ca.pem is not stasisd's CA:\n%s", tc.template, got)
		}
		bundle := string(c.readFile("/etc/ssl/certs/ca-certificates.crt"))
		if !strings.HasSuffix(strings.TrimSpace(bundle), caText) {
			t.Errorf("%s: the bundle does not end with the CA", tc.template)
		}
		if n := strings.Count(bundle, "BEGIN CERTIFICATE"); n < tc.minCerts || strings.Count(bundle, caText) != 1 {
			t.Errorf("%s: bundle has %d certificates and the CA %d times; want at least %d, and the CA once",
				tc.template, n, strings.Count(bundle, caText), tc.minCerts)
		}
	}
}

// The agent prepares the sandbox (resolver, trust store) while it starts
// listening, and answers only once that is done: the very first command of
// a new sandbox already finds both in place.
func TestFirstCommandFindsResolverAndCA(t *testing.T) {
	srv := testenv.StartServer(t)
	ca, err := os.ReadFile(filepath.Join(srv.DataDir(), "egress-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for _, template := range []string{"stasis/minimal", "stasis/base"} {
		c, _ := create(t, srv, map[string]any{"name": "first", "from_template": template})
		out := c.sh("cat /etc/resolv.conf; cat /etc/ssl/certs/stasis-egress-ca.pem")
		if want := "nameserver " + egress.ResolverAddr.String() + "\n"; !strings.HasPrefix(out, want) {
			t.Errorf("%s: first command's /etc/resolv.conf + CA:\n%s\nwant it to start with %q", template, out, want)
		}
		if !strings.Contains(out, strings.TrimSpace(string(ca))) {
			t.Errorf("%s: the first command does not find the egress CA installed:\n%s", template, out)
		}
	}
}

// serverCA is the egress CA (PEM, trimmed) of srv.
func serverCA(t *testing.T, srv *testenv.Server) string {
	t.Helper()
	ca, err := os.ReadFile(filepath.Join(srv.DataDir(), "egress-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ca))
}

// update-ca-certificates (a template step adding the user's own CA, run as
// root) rebuilds Debian's bundle from its sources: the egress CA is one of
// them, so sandboxes made from the template still trust it.
func TestUpdateCACertificatesKeepsEgressCA(t *testing.T) {
	srv := testenv.StartServer(t)
	caText := serverCA(t, srv)
	spec := map[string]any{"name": "own-ca", "build_spec": map[string]any{"from": "stasis/base", "steps": []any{
		map[string]any{"user": map[string]any{"name": "root"}},
		map[string]any{"run": "update-ca-certificates"},
	}}}
	var created struct {
		ID      string
		BuildID string `json:"build_id"`
	}
	if err := srv.Do("POST", "/templates", spec, &created); err != nil {
		t.Fatalf("create template: %v", err)
	}
	if b := waitBuild(t, srv, created.ID, created.BuildID); b.Status != "ready" {
		t.Fatalf("build %s: %s", b.Status, b.ErrorMessage)
	}
	c, _ := create(t, srv, map[string]any{"name": "own-ca", "from_template": "own-ca"})
	bundle := string(c.readFile("/etc/ssl/certs/ca-certificates.crt"))
	if n := strings.Count(bundle, caText); n != 1 || strings.Count(bundle, "BEGIN CERTIFICATE") < 50 {
		t.Errorf("after update-ca-certificates the bundle has the egress CA %d times and %d certificates; want once, and Debian's",
			n, strings.Count(bundle, "BEGIN CERTIFICATE"))
	}
	if got := strings.TrimSpace(string(c.readFile("/etc/ssl/certs/stasis-egress-ca.pem"))); got != caText {
		t.Errorf("stasis-egress-ca.pem after update-ca-certificates:\n%s", got)
	}
}

// stasisd gives a new sandbox an image root with the CA already in its trust
// store, so the system bundle (217 KB in stasis/base) is not copied into the
// sandbox's writable layer, whose pages are in every snapshot; the
// sandbox still trusts the CA by the bundle (Python reads only that file),
// after a resume too, and the default user still owns the bundle and can
// change it.
func TestTrustBundleStaysInImageLayer(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := create(t, srv, map[string]any{"name": "lean-trust", "from_template": "stasis/base"})
	const trusts = `python3 -c "import ssl; print(sum('stasis egress CA' in str(c['subject']) for c in ssl.create_default_context().get_ca_certs()))"`
	check := func(when string) {
		t.Helper()
		used, err := strconv.Atoi(c.sh("df -B1 --output=used / | tail -1"))
		if err != nil {
			t.Fatal(err)
		}
		if used >= 64<<10 {
			t.Errorf("%s: the writable layer holds %d bytes; want the bundle left in the image (< 64 KiB)", when, used)
		}
		if got := c.sh(trusts); got != "1" {
			t.Errorf("%s: Python's default context has the egress CA %s times, want once", when, got)
		}
		if owner, user := c.sh("stat -c %U /etc/ssl/certs/ca-certificates.crt"), c.sh("id -un"); owner != user {
			t.Errorf("%s: the bundle is %s's, want the default user's (%s)", when, owner, user)
		}
	}
	check("after create")
	pause(t, srv, sb.ID)
	resume(t, srv, c)
	check("after resume")
	c.sh(`printf '\n' >> /etc/ssl/certs/ca-certificates.crt`)
	if got := c.sh(trusts); got != "1" {
		t.Errorf("after an append: the egress CA is trusted %s times, want once", got)
	}
}
