package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// secretProbe runs in sandboxes (python3):
//
//	get URL CA NAME=VALUE...   an HTTPS request; "$VAR" in a value is the
//	                           sandbox's env var, "basic:USER:PASS" becomes
//	                           Basic credentials; prints "<status> <body>"
//	sse HOST ID CA             reads the first event of /sse?id=ID, then
//	                           asks /release?id=ID, then reads the rest
//
// CA "-" means the sandbox's own trust store, else a CA file.
const secretProbe = `
import base64, http.client, os, ssl, sys, urllib.request, urllib.error
def ctx(ca):
    return ssl.create_default_context() if ca == "-" else ssl.create_default_context(cafile=ca)
try:
    op = sys.argv[1]
    if op == "get":
        h = {}
        for a in sys.argv[4:]:
            k, v = a.split("=", 1)
            v = os.path.expandvars(v)
            if v.startswith("basic:"):
                u, p = v[6:].split(":", 1)
                v = "Basic " + base64.b64encode((u + ":" + p).encode()).decode()
            h[k] = v
        try:
            r = urllib.request.urlopen(urllib.request.Request(sys.argv[2], headers=h), context=ctx(sys.argv[3]), timeout=30)
            print(r.status, r.read().decode()[:300])
        except urllib.error.HTTPError as e:
            print(e.code, e.read().decode()[:300])
    elif op == "sse":
        host, id, ca = sys.argv[2], sys.argv[3], sys.argv[4]
        c = http.client.HTTPSConnection(host, 443, context=ctx(ca), timeout=30)
        c.request("GET", "/sse?id=" + id, headers={"Authorization": "Bearer " + os.environ.get("BEARER", "")})
        r = c.getresponse()
        first = r.readline().decode().strip()
        rel = urllib.request.urlopen("https://%s/release?id=%s" % (host, id), context=ctx(ca), timeout=30).read().decode()
        print("first:", first, "|", rel, "|", r.read().decode().replace("\n", " ").strip())
except Exception as e:
    print("ERR", type(e).__name__, e)
`

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// notLiteral is a grep pattern matching v that does not contain v itself,
// so that searching for a value does not put it into the sandbox.
func notLiteral(v string) string { return v[:5] + "[" + v[5:6] + "]" + v[6:] }

// scanDir returns the files under root that contain one of needles.
func scanDir(t *testing.T, root string, needles ...string) []string {
	t.Helper()
	var hits []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		buf := make([]byte, 1<<20)
		var carry []byte
		for {
			n, err := f.Read(buf)
			chunk := append(carry, buf[:n]...)
			for _, nd := range needles {
				if bytes.Contains(chunk, []byte(nd)) {
					hits = append(hits, p+" has "+nd[:8]+"…")
					return nil
				}
			}
			if len(chunk) > 256 {
				carry = append([]byte(nil), chunk[len(chunk)-256:]...)
			} else {
				carry = chunk
			}
			if err != nil {
				return nil
			}
		}
	})
	return hits
}

func apiStatus(t *testing.T, srv *testenv.Server, method, path string, body any, out any) (int, string) {
	t.Helper()
	err := srv.Do(method, path, body, out)
	if err == nil {
		return 200, ""
	}
	var he *testenv.HTTPError
	if ok := asHTTPError(err, &he); !ok {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return he.Status, he.Body
}

func asHTTPError(err error, he **testenv.HTTPError) bool {
	e, ok := err.(*testenv.HTTPError)
	*he = e
	return ok
}

type auditEvent struct {
	ID             int64   `json:"id"`
	TS             string  `json:"ts"`
	SandboxID      string  `json:"sandbox_id"`
	SandboxName    *string `json:"sandbox_name"`
	SecretID       string  `json:"secret_id"`
	Method         string  `json:"method"`
	Host           string  `json:"host"`
	Path           string  `json:"path"`
	Status         int     `json:"status"`
	UpstreamStatus *int    `json:"upstream_status"`
	LatencyMs      *int64  `json:"latency_ms"`
	ErrorCode      *string `json:"error_code"`
}

// waitAudit polls a secret's audit until ok accepts it (rows are written
// just after the response).
func waitAudit(t *testing.T, srv *testenv.Server, name, query string, ok func([]auditEvent) bool) []auditEvent {
	t.Helper()
	var evs []auditEvent
	for range 100 {
		evs = nil
		if err := srv.Do("GET", "/secrets/"+name+"/audit"+query, nil, &evs); err != nil {
			t.Fatalf("audit of %s: %v", name, err)
		}
		if ok(evs) {
			return evs
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("audit of %s%s never matched: %s", name, query, dump(evs))
	return nil
}

// TestSecretsAPI: secrets are created, listed, read, rotated and deleted
// without their value ever coming back; bad input is a 400 that stores
// nothing; providers are listed; a create naming an unknown secret, or
// setting one env var from both secrets and env_vars, creates nothing.
func TestSecretsAPI(t *testing.T) {
	srv := testenv.StartServer(t)
	value := "REAL-api-" + randHex(12)
	var created map[string]any
	if st, body := apiStatus(t, srv, "POST", "/secrets", map[string]any{"name": "anthropic-prod", "value": value, "provider": "anthropic"}, &created); st != 200 {
		t.Fatalf("create: %d %s", st, body)
	}
	if created["auth_type"] != "api-key" || dump(created["auth_config"]) != `{"header":"x-api-key"}` ||
		created["provider_shortcut"] != "anthropic" || dump(created["hosts"]) != `["api.anthropic.com"]` ||
		!strings.HasPrefix(created["id"].(string), "sec_") || created["created_at"] == nil {
		t.Fatalf("created secret: %s", dump(created))
	}
	gh := map[string]any{"name": "gh", "value": value + "-gh", "hosts": []string{"api.github.com", "github.com"},
		"auth": map[string]any{"per_host": []any{
			map[string]any{"hosts": []string{"api.github.com"}, "type": "bearer"},
			map[string]any{"hosts": []string{"github.com"}, "type": "basic", "username": "x-access-token"}}}}
	var ghOut map[string]any
	if st, body := apiStatus(t, srv, "POST", "/secrets", gh, &ghOut); st != 200 || ghOut["auth_type"] != "per_host" {
		t.Fatalf("create per_host: %d %s %s", st, body, dump(ghOut))
	}
	for _, bad := range []map[string]any{
		{"name": "x y", "value": "v", "provider": "openai"},
		{"name": "ok", "provider": "openai"},
		{"name": "ok", "value": "v", "provider": "nope"},
		{"name": "ok", "value": "v", "provider": "openai", "hosts": []string{"a.com"}},
		{"name": "ok", "value": "v", "auth": map[string]any{"type": "bearer"}},
		{"name": "ok", "value": "v", "auth": map[string]any{"type": "api-key"}, "hosts": []string{"a.com"}},
		{"name": "ok", "value": "v", "auth": map[string]any{"type": "bearer"}, "hosts": []string{"*.com"}},
		{"name": "ok", "value": strings.Repeat("v", 8193), "provider": "openai"},
		{"name": "anthropic-prod", "value": "v", "provider": "openai"}, // taken: 409
	} {
		st, body := apiStatus(t, srv, "POST", "/secrets", bad, nil)
		if (st != 400 && st != 409) || !strings.Contains(body, `"code"`) {
			t.Fatalf("create %s: %d %s, want a 400/409 error", dump(bad), st, body)
		}
	}
	var list []map[string]any
	srv.Do("GET", "/secrets", nil, &list)
	if len(list) != 2 {
		t.Fatalf("list after refused creates: %s", dump(list))
	}
	var got map[string]any
	if st, body := apiStatus(t, srv, "PATCH", "/secrets/anthropic-prod", map[string]any{"value": value + "-2"}, &got); st != 200 || got["name"] != "anthropic-prod" {
		t.Fatalf("rotate: %d %s", st, body)
	}
	if st, _ := apiStatus(t, srv, "GET", "/secrets/nope", nil, nil); st != 404 {
		t.Fatalf("get unknown: %d", st)
	}
	var providers []map[string]any
	srv.Do("GET", "/providers", nil, &providers)
	names := []string{}
	for _, p := range providers {
		names = append(names, p["name"].(string))
		if p["name"] == "github" && (p["auth_type"] != "per_host" || dump(p["hosts"]) != `["api.github.com","github.com"]` || p["token_shape"] != "ghp_...") {
			t.Fatalf("github provider: %s", dump(p))
		}
	}
	if strings.Join(names[:3], ",") != "anthropic,openai,github" {
		t.Fatalf("providers: %v", names)
	}

	// Creates that cannot be honoured create nothing.
	for _, body := range []map[string]any{
		{"name": "a", "from_template": "stasis/minimal", "secrets": map[string]string{"KEY": "missing"}},
		{"name": "a", "from_template": "stasis/minimal", "secrets": map[string]string{"KEY": "gh"}, "env_vars": map[string]string{"KEY": "x"}},
		{"name": "a", "from_template": "stasis/minimal", "secrets": map[string]string{"1BAD": "gh"}},
	} {
		if st, b := apiStatus(t, srv, "POST", "/sandboxes", body, nil); st != 400 {
			t.Fatalf("create %s: %d %s, want 400", dump(body), st, b)
		}
	}
	var sbs []sandboxInfo
	srv.Do("GET", "/sandboxes", nil, &sbs)
	if len(sbs) != 0 {
		t.Fatalf("refused creates left sandboxes: %s", dump(sbs))
	}

	// Attach and detach on a sandbox.
	c, sb := createMinimal(t, srv, "bind")
	if st, b := apiStatus(t, srv, "POST", "/sandboxes/"+sb.ID+"/secrets", map[string]any{"env_key": "GITHUB_TOKEN", "secret_name": "gh"}, nil); st != 200 {
		t.Fatalf("attach: %d %s", st, b)
	}
	if st, _ := apiStatus(t, srv, "POST", "/sandboxes/"+sb.ID+"/secrets", map[string]any{"env_key": "GITHUB_TOKEN", "secret_name": "gh"}, nil); st != 409 {
		t.Fatalf("second attach of one env key: %d, want 409", st)
	}
	if st, _ := apiStatus(t, srv, "POST", "/sandboxes/"+sb.ID+"/secrets", map[string]any{"env_key": "X", "secret_name": "missing"}, nil); st != 404 {
		t.Fatalf("attach of a missing secret: %d, want 404", st)
	}
	if tok := c.sh("echo $GITHUB_TOKEN"); !strings.HasPrefix(tok, "sst_proxy_") || strings.Contains(tok, value) {
		t.Fatalf("GITHUB_TOKEN in the sandbox: %q", tok)
	}
	info := getInfo(t, srv, sb.ID)
	if len(info.Secrets) != 1 || info.Secrets[0].EnvKey != "GITHUB_TOKEN" || info.Secrets[0].SecretName != "gh" || info.Secrets[0].Revoked != nil {
		t.Fatalf("bindings: %s", dump(info.Secrets))
	}
	var bound []map[string]any
	srv.Do("GET", "/secrets/gh/sandboxes", nil, &bound)
	if len(bound) != 1 || bound[0]["sandbox_id"] != sb.ID || bound[0]["env_key"] != "GITHUB_TOKEN" || bound[0]["status"] != "active" {
		t.Fatalf("sandboxes of gh: %s", dump(bound))
	}
	if st, _ := apiStatus(t, srv, "DELETE", "/sandboxes/"+sb.ID+"/secrets/GITHUB_TOKEN", nil, nil); st != 200 {
		t.Fatalf("detach: %d", st)
	}
	if st, _ := apiStatus(t, srv, "DELETE", "/sandboxes/"+sb.ID+"/secrets/GITHUB_TOKEN", nil, nil); st != 404 {
		t.Fatalf("second detach: %d, want 404", st)
	}
	if got := c.sh("echo ${GITHUB_TOKEN:-unset}"); got != "unset" {
		t.Fatalf("GITHUB_TOKEN after detach: %q", got)
	}
	if len(getInfo(t, srv, sb.ID).Secrets) != 0 {
		t.Fatal("binding still listed after detach")
	}
	if st, _ := apiStatus(t, srv, "DELETE", "/secrets/gh", nil, nil); st != 200 {
		t.Fatalf("delete: %d", st)
	}
	if st, _ := apiStatus(t, srv, "DELETE", "/secrets/gh", nil, nil); st != 404 {
		t.Fatalf("second delete: %d", st)
	}
	// No response, and nothing on disk in clear, holds a value.
	for _, path := range []string{"/secrets", "/secrets/anthropic-prod", "/providers", "/sandboxes/" + sb.ID} {
		var raw json.RawMessage
		srv.Do("GET", path, nil, &raw)
		if strings.Contains(string(raw), value) {
			t.Fatalf("GET %s returns a value", path)
		}
	}
	if hits := scanDir(t, srv.DataDir(), value); len(hits) > 0 {
		t.Fatalf("a value is in clear in the data dir: %v", hits)
	}
	fi, err := os.Stat(filepath.Join(srv.DataDir(), "secrets.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secrets.key: %v %v", fi, err)
	}
}

// TestSecretsInjectedAtEgress drives the whole path with real sandboxes
// and the test internet: each auth type, tokens that must not resolve,
// no value inside the sandbox (env, files, checkpoint), fork, rotation,
// detach, revocation, audit and log rows, streaming, and a restart.
func TestSecretsInjectedAtEgress(t *testing.T) {
	in := testenv.StartInternet(t)
	site := in.AddSite("bearer.test", "basic.test", "apikey.test", "custom.test", "ph1.test", "ph2.test")
	other := in.AddSite("other.test")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, in.CAPEM, 0o644)
	srv := testenv.StartServer(t, testenv.WithArgs("--egress", "allow", "--dns-upstream", in.DNS, "--egress-ca-file", caFile))

	vals := map[string]string{}
	mk := func(name string, auth any, hosts ...string) {
		vals[name] = "REAL" + name + randHex(10)
		if st, b := apiStatus(t, srv, "POST", "/secrets", map[string]any{"name": name, "value": vals[name], "auth": auth, "hosts": hosts}, nil); st != 200 {
			t.Fatalf("create %s: %d %s", name, st, b)
		}
	}
	mk("sbearer", map[string]any{"type": "bearer"}, "bearer.test")
	mk("sbasic", map[string]any{"type": "basic", "username": "x-access-token"}, "basic.test")
	mk("sapikey", map[string]any{"type": "api-key", "header": "X-Api-Key", "prefix": "Key "}, "apikey.test")
	mk("scustom", map[string]any{"type": "custom", "headers": map[string]string{"X-Token": "Token {{ value }}", "X-Plain": "{{value}}"}}, "custom.test")
	mk("sph", map[string]any{"per_host": []any{
		map[string]any{"hosts": []string{"ph1.test"}, "type": "bearer"},
		map[string]any{"hosts": []string{"ph2.test"}, "type": "api-key", "header": "X-Key"}}}, "ph1.test", "ph2.test")
	allValues := func() []string {
		out := []string{}
		for _, v := range vals {
			out = append(out, v)
		}
		return out
	}

	c, sb := create(t, srv, map[string]any{"name": "agent", "from_template": "stasis/base", "secrets": map[string]string{
		"BEARER": "sbearer", "BASIC": "sbasic", "APIKEY": "sapikey", "CUSTOM": "scustom", "PH": "sph"}})
	if len(sb.Secrets) != 5 {
		t.Fatalf("create response bindings: %s", dump(sb.Secrets))
	}
	c.writeFile("/tmp/sp.py", []byte(secretProbe))
	c.writeFile("/tmp/ca.pem", in.CAPEM)
	n := 0
	get := func(c *client, url, ca string, headers ...string) (string, string) {
		t.Helper()
		n++
		id := "r" + string(rune('a'+n%26)) + randHex(4)
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		cmd := "python3 /tmp/sp.py get '" + url + sep + "id=" + id + "&quiet=1' " + ca
		for _, h := range headers {
			cmd += " '" + h + "'"
		}
		return c.sh(cmd), id
	}
	basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }

	// Each auth type puts the real value where its rule says.
	for _, tc := range []struct {
		url, header, want string
		send              []string
	}{
		{"https://bearer.test/headers", "Authorization", "Bearer " + vals["sbearer"], []string{"Authorization=Bearer $BEARER"}},
		{"https://basic.test/headers", "Authorization", basic("x-access-token", vals["sbasic"]), []string{"Authorization=basic:me:$BASIC"}},
		{"https://apikey.test/headers", "X-Api-Key", "Key " + vals["sapikey"], []string{"X-Api-Key=$APIKEY"}},
		{"https://custom.test/headers", "X-Token", "Token " + vals["scustom"], []string{"X-Token=$CUSTOM"}},
		{"https://custom.test/headers", "X-Plain", vals["scustom"], []string{"X-Token=$CUSTOM"}}, // {{value}} without spaces
		{"https://ph1.test/headers", "Authorization", "Bearer " + vals["sph"], []string{"Authorization=Bearer $PH"}},
		{"https://ph2.test/headers", "X-Key", vals["sph"], []string{"X-Key=$PH"}},
	} {
		out, id := get(c, tc.url, "-", tc.send...)
		h := site.Headers(id)
		if out != "200 recorded" || h.Get(tc.header) != tc.want {
			t.Fatalf("%s: sandbox got %q; upstream %s = %q, want the real value", tc.url, out, tc.header, h.Get(tc.header))
		}
	}
	tokBearer := c.sh("echo $BEARER")
	tokAPI := c.sh("echo $APIKEY")
	tokCustom := c.sh("echo $CUSTOM")

	// A stand-in sent to a host no secret names goes unchanged (its TLS is
	// not intercepted: the test CA alone verifies it).
	out, id := get(c, "https://other.test/headers", "/tmp/ca.pem", "Authorization=Bearer $BEARER")
	if out != "200 recorded" || other.Headers(id).Get("Authorization") != "Bearer "+tokBearer {
		t.Fatalf("stand-in to other.test: %q, upstream got %q", out, other.Headers(id).Get("Authorization"))
	}
	// A secret's stand-in sent to another secret's host: unchanged too.
	out, id = get(c, "https://apikey.test/headers", "-", "X-Api-Key=$BEARER")
	if out != "200 recorded" || site.Headers(id).Get("X-Api-Key") != tokBearer {
		t.Fatalf("bearer token to apikey.test: %q, upstream got %q", out, site.Headers(id).Get("X-Api-Key"))
	}

	// A token copied to another sandbox does not resolve there, even one
	// bound to the same secret (its own token differs).
	c2, _ := create(t, srv, map[string]any{"name": "thief", "from_template": "stasis/base", "secrets": map[string]string{"MINE": "sbearer"}})
	c2.writeFile("/tmp/sp.py", []byte(secretProbe))
	if mine := c2.sh("echo $MINE"); mine == tokBearer {
		t.Fatal("two sandboxes got the same stand-in")
	}
	out, id = get(c2, "https://bearer.test/headers", "-", "Authorization=Bearer "+tokBearer)
	if out != "200 recorded" || site.Headers(id).Get("Authorization") != "Bearer "+tokBearer {
		t.Fatalf("copied token: %q, upstream got %q", out, site.Headers(id).Get("Authorization"))
	}

	// Streaming: the first event reaches the sandbox while upstream still
	// waits (it sends the rest only after the sandbox asked /release).
	if got := c.sh("python3 /tmp/sp.py sse bearer.test s1 -"); got != "first: data: 1 | released | data: 2" {
		t.Fatalf("SSE through the proxy: %q", got)
	}

	// The values are nowhere in the sandbox: environment, processes, files.
	// A process keeps the stand-ins in its environment across the pause.
	c.sh(`sh -c 'sleep 100000' >/dev/null 2>&1 & echo ok`)
	marker := "MARKER" + randHex(8)
	c.writeFile("/tmp/marker.txt", []byte(marker))
	for name, v := range vals {
		pat := notLiteral(v)
		if got := c.exec("env | grep -c '" + pat + "'; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c '" + pat + "'").Stdout; strings.Join(strings.Fields(got), " ") != "0 0" {
			t.Fatalf("%s's value is in the sandbox's environment: %q", name, got)
		}
		if got := c.exec("grep -rls '" + pat + "' / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null | head -3").Stdout; strings.TrimSpace(got) != "" {
			t.Fatalf("%s's value is in sandbox files: %q", name, got)
		}
	}
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if info := getInfo(t, srv, sb.ID); info.Pause != nil && info.Pause.Durable {
			break
		}
		if i > 100 {
			t.Fatal("pause never became durable")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if hits := scanDir(t, srv.DataDir(), allValues()...); len(hits) > 0 {
		t.Fatalf("a real value is in the data dir (checkpoint, store or logs): %v", hits)
	}
	// The search sees the checkpoint's contents: a file written in the
	// sandbox, and the stand-in in a sleeping process's environment.
	if hits := scanDir(t, srv.DataDir(), marker); len(hits) == 0 {
		t.Fatal("the checkpoint files are not searchable in clear: the search above proves nothing")
	}
	if hits := scanDir(t, srv.DataDir(), tokBearer); len(hits) == 0 {
		t.Fatal("the stand-in held by a sandbox process is not in the checkpoint: the search above proves nothing")
	}

	// A fork inherits the bindings and tokens; its requests are injected.
	var forked struct {
		Sandboxes []sandboxInfo `json:"sandboxes"`
	}
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/fork", map[string]any{"count": 1}, &forked); err != nil || len(forked.Sandboxes) != 1 {
		t.Fatalf("fork: %v %s", err, dump(forked))
	}
	fc := &client{t: t, srv: srv, id: forked.Sandboxes[0].ID, token: forked.Sandboxes[0].AccessToken}
	if len(forked.Sandboxes[0].Secrets) != 5 || fc.sh("echo $BEARER") != tokBearer {
		t.Fatalf("fork's bindings: %s", dump(forked.Sandboxes[0].Secrets))
	}
	out, id = get(fc, "https://bearer.test/headers", "-", "Authorization=Bearer $BEARER")
	if out != "200 recorded" || site.Headers(id).Get("Authorization") != "Bearer "+vals["sbearer"] {
		t.Fatalf("fork's request: %q, upstream %q", out, site.Headers(id).Get("Authorization"))
	}

	// Resumed, the original still injects.
	out, id = get(c, "https://bearer.test/headers", "-", "Authorization=Bearer $BEARER")
	if out != "200 recorded" || site.Headers(id).Get("Authorization") != "Bearer "+vals["sbearer"] {
		t.Fatalf("after resume: %q, upstream %q", out, site.Headers(id).Get("Authorization"))
	}

	// HTTP/2 from inside the sandbox (curl negotiates it with the proxy by
	// ALPN) is injected too.
	if got := c.sh(`curl -sS --http2 -o /dev/null -w '%{http_version} %{http_code}' -H "Authorization: Bearer $BEARER" 'https://bearer.test/headers?id=h2req&quiet=1'`); got != "2 200" ||
		site.Headers("h2req").Get("Authorization") != "Bearer "+vals["sbearer"] {
		t.Fatalf("HTTP/2 from the sandbox: curl printed %q, upstream got %q", got, site.Headers("h2req").Get("Authorization"))
	}

	// A sandbox created from a saved snapshot of a bound one keeps the
	// bindings and tokens, and its requests are injected.
	var snap struct{ ID string }
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/snapshots", map[string]any{"name": "with-secrets"}, &snap); err != nil {
		t.Fatal(err)
	}
	sc, ssb := create(t, srv, map[string]any{"name": "from-snap", "from_snapshot": snap.ID})
	if len(ssb.Secrets) != 5 || sc.sh("echo $BEARER") != tokBearer {
		t.Fatalf("bindings of a sandbox from a saved snapshot: %s", dump(ssb.Secrets))
	}
	out, id = get(sc, "https://bearer.test/headers", "-", "Authorization=Bearer $BEARER")
	if out != "200 recorded" || site.Headers(id).Get("Authorization") != "Bearer "+vals["sbearer"] {
		t.Fatalf("request from a sandbox from a saved snapshot: %q, upstream %q", out, site.Headers(id).Get("Authorization"))
	}

	// Rotation applies to the next request.
	newVal := "REALrotated" + randHex(10)
	vals["rotated"] = newVal
	if st, b := apiStatus(t, srv, "PATCH", "/secrets/sbearer", map[string]any{"value": newVal}, nil); st != 200 {
		t.Fatalf("rotate: %d %s", st, b)
	}
	out, id = get(c, "https://bearer.test/headers", "-", "Authorization=Bearer $BEARER")
	if out != "200 recorded" || site.Headers(id).Get("Authorization") != "Bearer "+newVal {
		t.Fatalf("after rotation: %q, upstream %q", out, site.Headers(id).Get("Authorization"))
	}

	// Detach stops injection at once: the old token gets a clear 403.
	if st, _ := apiStatus(t, srv, "DELETE", "/sandboxes/"+sb.ID+"/secrets/CUSTOM", nil, nil); st != 200 {
		t.Fatal("detach failed")
	}
	out, id = get(c, "https://custom.test/headers", "-", "X-Token="+tokCustom)
	if !strings.HasPrefix(out, "403 ") || !strings.Contains(out, "secret_detached") || site.Headers(id) != nil {
		t.Fatalf("detached token: %q (upstream saw %v)", out, site.Headers(id))
	}

	// Deleting a secret revokes it everywhere it is bound.
	if st, _ := apiStatus(t, srv, "DELETE", "/secrets/sapikey", nil, nil); st != 200 {
		t.Fatal("delete failed")
	}
	out, id = get(c, "https://apikey.test/headers", "-", "X-Api-Key="+tokAPI)
	if !strings.HasPrefix(out, "403 ") || !strings.Contains(out, "secret_revoked") || site.Headers(id) != nil {
		t.Fatalf("revoked token: %q", out)
	}
	info := getInfo(t, srv, sb.ID)
	revoked := map[string]bool{}
	for _, b := range info.Secrets {
		revoked[b.EnvKey] = b.Revoked != nil && *b.Revoked
	}
	if len(info.Secrets) != 4 || !revoked["APIKEY"] || revoked["BEARER"] {
		t.Fatalf("bindings after detach and delete: %s", dump(info.Secrets))
	}

	// Audit: every request with a token is there, newest first, filtered
	// and paged; the network log has request rows.
	evs := waitAudit(t, srv, "sbearer", "", func(e []auditEvent) bool { return len(e) >= 5 })
	e := evs[0]
	if e.Method != "GET" || e.Host != "bearer.test" || e.Path != "/headers" || e.Status != 200 ||
		e.UpstreamStatus == nil || *e.UpstreamStatus != 200 || e.LatencyMs == nil || e.SandboxID != sb.ID ||
		e.SandboxName == nil || *e.SandboxName != "agent" || e.ErrorCode != nil || !strings.HasPrefix(e.SecretID, "sec_") {
		t.Fatalf("newest audit event: %s", dump(e))
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].ID >= evs[i-1].ID {
			t.Fatalf("audit not newest first: %s", dump(evs))
		}
	}
	var page []auditEvent
	srv.Do("GET", "/secrets/sbearer/audit?limit=2", nil, &page)
	var next []auditEvent
	srv.Do("GET", "/secrets/sbearer/audit?limit=2&before="+strconv.FormatInt(page[1].ID, 10), nil, &next)
	if len(page) != 2 || len(next) == 0 || next[0].ID >= page[1].ID {
		t.Fatalf("paging: %s then %s", dump(page), dump(next))
	}
	refused := waitAudit(t, srv, "scustom", "?status=4xx", func(e []auditEvent) bool { return len(e) == 1 })
	if refused[0].Status != 403 || refused[0].ErrorCode == nil || *refused[0].ErrorCode != "secret_detached" || refused[0].UpstreamStatus != nil {
		t.Fatalf("refused request's audit: %s", dump(refused))
	}
	// Two requests of the custom secret got through: one per header checked.
	if ok := waitAudit(t, srv, "scustom", "?status=2xx", func(e []auditEvent) bool { return len(e) == 2 }); ok[0].Status != 200 || ok[1].Status != 200 {
		t.Fatalf("2xx filter: %s", dump(ok))
	}
	var reqRows struct {
		Data []map[string]any `json:"data"`
	}
	srv.Do("GET", "/sandboxes/"+sb.ID+"/network?limit=200", nil, &reqRows)
	found := false
	for _, r := range reqRows.Data {
		if r["kind"] == "request" && r["host"] == "bearer.test" && r["method"] == "GET" && r["path"] == "/headers" &&
			r["status"] == float64(200) && r["secret_id"] == e.SecretID {
			found = true
		}
	}
	if !found {
		t.Fatalf("no request row in the network log: %s", dump(reqRows))
	}

	// Bindings survive a restart of stasisd.
	srv.Restart()
	if info := getInfo(t, srv, sb.ID); len(info.Secrets) != 4 {
		t.Fatalf("bindings after restart: %s", dump(info.Secrets))
	}
	out, id = get(c, "https://bearer.test/headers", "-", "Authorization=Bearer $BEARER")
	if out != "200 recorded" || site.Headers(id).Get("Authorization") != "Bearer "+newVal {
		t.Fatalf("after restart: %q, upstream %q", out, site.Headers(id).Get("Authorization"))
	}
	if hits := scanDir(t, srv.DataDir(), allValues()...); len(hits) > 0 {
		t.Fatalf("a real value is in the data dir: %v", hits)
	}
}
