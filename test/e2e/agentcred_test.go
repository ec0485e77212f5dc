package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// agentSecret is the agent secret stasisd holds for sandbox id (derived from
// the server's node.key).
func agentSecret(t *testing.T, srv *testenv.Server, id string) string {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(srv.DataDir(), "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	return sandbox.AgentToken(key, id)
}

// hostAgent is a client for c's agent, dialled from the host as stasisd
// does, with secret.
func hostAgent(t *testing.T, c *client, secret string) *agentclient.Client {
	t.Helper()
	addr := c.sh(`ip -4 addr show eth0 | awk '/inet /{print $2}' | cut -d/ -f1`)
	if ip := net.ParseIP(addr); ip == nil || !ip.IsLinkLocalUnicast() {
		t.Fatalf("sandbox address %q is not link-local", addr)
	}
	a := agentclient.New(net.JoinHostPort(addr, fmt.Sprint(runtime.AgentPort)), secret)
	t.Cleanup(a.CloseIdleConnections)
	return a
}

// attackScript tries, from inside a sandbox, every way to the agent's API
// with every secret in /tmp/agent-secrets: a token rotation sent with nc to
// loopback and to the sandbox's own addresses (IPv4 and IPv6), and wget.
// As a control, the same nc requests go to a web server in the sandbox on
// the same addresses. It prints one line per attempt.
const attackScript = `
A4=$(ip -4 addr show eth0 | awk '/inet /{print $2}' | cut -d/ -f1)
A6=$(ip -6 addr show eth0 | awk '/inet6 /{print $2}' | cut -d/ -f1)%eth0
pgrep -f 'httpd -p 8000' >/dev/null || { mkdir -p /tmp/www && echo www > /tmp/www/index.html && httpd -p 8000 -h /tmp/www; }
body='{"token":"from-inside"}'
for addr in 127.0.0.1 "$A4" ::1 "$A6"; do
  for tok in $(cat /tmp/agent-secrets); do
    printf 'POST /v1/token HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' "$tok" ${#body} "$body" |
      timeout 10 nc "$addr" 49983 >/tmp/answer 2>&1
    echo "agent $addr: $(head -c 200 /tmp/answer | tr -d '\r\n')"
  done
  printf 'GET / HTTP/1.0\r\n\r\n' | timeout 10 nc "$addr" 8000 >/tmp/answer 2>&1
  echo "control $addr: $(head -c 200 /tmp/answer | tr -d '\r\n')"
done
for tok in $(cat /tmp/agent-secrets); do
  timeout 10 wget -q -O - --header "Authorization: Bearer $tok" --post-data "$body" http://127.0.0.1:49983/v1/token >/dev/null 2>&1
  echo "wget exit=$?"
done
`

// environScript prints the environment of every process it can read, of
// itself (env and /proc/self/environ), and whether the agent's /proc files
// and memory can be read. A background process with a marker variable runs
// meanwhile, so the listing provably shows other processes' environments.
const environScript = `
MARKER=environ-visible sleep 30 >/dev/null 2>&1 &
sleep 0.2
for f in /proc/[0-9]*/environ; do echo "== $f"; tr '\0' '\n' < "$f"; done 2>&1
echo "== env"; env
echo "== self"; tr '\0' '\n' < /proc/self/environ
head -c 1 /proc/1/environ >/dev/null 2>&1; echo "agent environ: $?"
head -c 1 /proc/1/maps >/dev/null 2>&1; echo "agent maps: $?"
head -c 1 /proc/1/mem >/dev/null 2>&1; echo "agent mem: $?"
`

// checkAgentOutOfReach: from inside c's sandbox, no process environment
// holds any of secrets (the secrets stasisd uses or used for the sandbox),
// the agent's /proc files and memory are unreadable, and even with the
// secrets in hand nothing in the sandbox gets an answer from the agent, so
// its credential is unchanged: the host still gets in with current, and
// commands run.
func checkAgentOutOfReach(t *testing.T, c *client, current string, secrets ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := hostAgent(t, c, current)
	if err := agent.Health(ctx); err != nil {
		t.Fatalf("the host cannot reach the agent with stasisd's secret: %v", err)
	}

	env := c.sh(environScript)
	if !strings.Contains(env, "MARKER=environ-visible") || !strings.Contains(env, "== env\n") {
		t.Fatalf("the environ listing does not show other processes' environments:\n%s", env)
	}
	for _, s := range secrets {
		if strings.Contains(env, s) {
			t.Fatalf("an agent secret is readable in the sandbox:\n%s", env)
		}
	}
	for _, f := range []string{"environ", "maps", "mem"} {
		if !strings.Contains(env, "agent "+f+": 1") {
			t.Errorf("the agent's /proc/1/%s is readable in the sandbox:\n%s", f, env)
		}
	}

	// The strongest attacker: the secrets themselves are in the sandbox.
	c.writeFile("/tmp/agent-secrets", []byte(strings.Join(secrets, "\n")+"\n"))
	out := c.sh(attackScript)
	var agentLines, controlLines, wgetLines int
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "agent "):
			agentLines++
			if strings.Contains(line, "HTTP/") {
				t.Errorf("the agent answered a request from inside the sandbox: %s", line)
			}
		case strings.HasPrefix(line, "control "):
			controlLines++
			if !strings.Contains(line, "HTTP/1.") {
				t.Errorf("control request to the sandbox's own web server failed (the attack proves nothing): %s", line)
			}
		case strings.HasPrefix(line, "wget "):
			wgetLines++
			if line == "wget exit=0" {
				t.Errorf("wget from inside the sandbox reached the agent")
			}
		}
	}
	if agentLines != 4*len(secrets) || controlLines != 4 || wgetLines != len(secrets) {
		t.Fatalf("attack script ran %d/%d/%d attempts, want %d/4/%d:\n%s", agentLines, controlLines, wgetLines, 4*len(secrets), len(secrets), out)
	}

	// Nothing changed: stasisd's secret still works, the one sent from
	// inside does not, and commands run.
	if err := agent.Health(ctx); err != nil {
		t.Fatalf("after the attack the agent refuses stasisd's secret: %v", err)
	}
	if err := hostAgent(t, c, "from-inside").Health(ctx); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Fatalf("the agent accepts the token sent from inside the sandbox: %v", err)
	}
	if got := c.sh("echo still-works"); got != "still-works" {
		t.Fatalf("exec after the attack: %q", got)
	}
}

// TestAgentCredentialOutOfReach: code in a sandbox can neither read the
// agent's credential nor reach the agent to change it, even knowing it;
// after a pause and resume, and in a fork (which starts from the parent's
// memory), the same holds, and the fork's agent no longer takes the
// parent's secret.
func TestAgentCredentialOutOfReach(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := createMinimal(t, srv, "target")
	secret := agentSecret(t, srv, sb.ID)
	checkAgentOutOfReach(t, c, secret, secret)

	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	var resumed sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/resume", nil, &resumed); err != nil {
		t.Fatal(err)
	}
	c.token = resumed.AccessToken
	checkAgentOutOfReach(t, c, secret, secret)

	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	var out struct {
		Sandboxes []sandboxInfo `json:"sandboxes"`
	}
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/fork", map[string]any{"count": 1}, &out); err != nil || len(out.Sandboxes) != 1 {
		t.Fatalf("fork: %v %+v", err, out)
	}
	f := &client{t: t, srv: srv, id: out.Sandboxes[0].ID, token: out.Sandboxes[0].AccessToken}
	forkSecret := agentSecret(t, srv, f.id)
	checkAgentOutOfReach(t, f, forkSecret, secret, forkSecret)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := hostAgent(t, f, secret).Health(ctx); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Fatalf("the fork's agent still accepts its parent's secret: %v", err)
	}
}

// TestLostAgentIsReported: when a sandbox's agent no longer accepts stasisd's
// credential (as after a replaced node.key), data-plane calls answer 502
// agent_unavailable, also after a pause and resume, and the documented
// recovery works: a new sandbox from a snapshot saved before, and deleting
// the lost one.
func TestLostAgentIsReported(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := createMinimal(t, srv, "lost")
	c.writeFile("/home/user/keep.txt", []byte("saved before"))
	var snap struct{ ID string }
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/snapshots", map[string]any{"name": "before"}, &snap); err != nil {
		t.Fatal(err)
	}

	// Only the host can do this now: make the agent take another secret.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := hostAgent(t, c, agentSecret(t, srv, sb.ID)).RotateToken(ctx, "not-stasisd-s-secret"); err != nil {
		t.Fatal(err)
	}

	wantLost := func(method, path string, body []byte) {
		t.Helper()
		status, data := c.raw(method, path, bytes.NewReader(body))
		var e struct {
			Error struct{ Code, Message string }
		}
		json.Unmarshal(data, &e)
		if status != 502 || e.Error.Code != "agent_unavailable" || !strings.Contains(e.Error.Message, "node.key") {
			t.Fatalf("%s %s with a lost agent: HTTP %d %s; want 502 agent_unavailable saying what to do", method, path, status, data)
		}
	}
	wantLost("POST", "/exec", []byte(`{"command":"true"}`))
	wantLost("GET", "/files?path=/home/user/keep.txt", nil)

	// Pausing and resuming restores the agent as it was: still lost.
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	var resumed sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/resume", nil, &resumed); err != nil {
		t.Fatal(err)
	}
	c.token = resumed.AccessToken
	wantLost("POST", "/exec", []byte(`{"command":"true"}`))

	// Recovery: a sandbox from the snapshot saved before, then delete.
	n, _ := create(t, srv, map[string]any{"name": "recovered", "from_snapshot": snap.ID})
	if got := string(n.readFile("/home/user/keep.txt")); got != "saved before" {
		t.Fatalf("sandbox from the earlier snapshot sees %q", got)
	}
	if err := srv.Do("DELETE", "/sandboxes/"+sb.ID, nil, nil); err != nil {
		t.Fatalf("delete the lost sandbox: %v", err)
	}
}

// TestTemplateSandboxTakesItsOwnSecret: a sandbox created from a template
// starts from the memory of the template's build sandbox, whose agent held
// that sandbox's secret. stasisd answers the create before it hands the new
// agent its own secret; a request sent right after the 201 waits for the
// hand-over and works, and from then on the agent refuses the build
// sandbox's secret and takes only the new one. Two sandboxes created back to
// back get different secrets.
func TestTemplateSandboxTakesItsOwnSecret(t *testing.T) {
	srv := testenv.StartServer(t)
	var tpl struct{ ID, Status, Error string }
	if err := srv.Do("POST", "/templates", map[string]any{"name": "cred", "build_spec": map[string]string{"from": "stasis/minimal"}}, &tpl); err != nil {
		t.Fatalf("create template: %v", err)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for tpl.Status != "ready" {
		if tpl.Status == "failed" || time.Now().After(deadline) {
			t.Fatalf("template build: %s %s", tpl.Status, tpl.Error)
		}
		time.Sleep(100 * time.Millisecond)
		if err := srv.Do("GET", "/templates/"+tpl.ID, nil, &tpl); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := store.Open(ctx, filepath.Join(srv.DataDir(), "stasis.db"))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := st.GetTemplate(ctx, "", tpl.ID)
	st.Close()
	if err != nil || rec.OriginID == "" {
		t.Fatalf("template record: %+v %v", rec, err)
	}
	originSecret := agentSecret(t, srv, rec.OriginID)

	a, _ := create(t, srv, map[string]any{"name": "cred-a", "from_template": "cred"})
	b, _ := create(t, srv, map[string]any{"name": "cred-b", "from_template": "cred"})
	// The first requests, right after the 201s.
	if got := a.sh("echo first-a"); got != "first-a" {
		t.Fatalf("first exec in a: %q", got)
	}
	if got := b.sh("echo first-b"); got != "first-b" {
		t.Fatalf("first exec in b: %q", got)
	}
	for _, c := range []*client{a, b} {
		if err := hostAgent(t, c, originSecret).Health(ctx); !errors.Is(err, agentclient.ErrUnauthorized) {
			t.Fatalf("sandbox %s's agent accepts the template build sandbox's secret: %v", c.id, err)
		}
		if err := hostAgent(t, c, agentSecret(t, srv, c.id)).Health(ctx); err != nil {
			t.Fatalf("sandbox %s's agent refuses its own secret: %v", c.id, err)
		}
	}
	if err := hostAgent(t, a, agentSecret(t, srv, b.id)).Health(ctx); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Fatalf("sandbox a's agent accepts b's secret: %v", err)
	}
}
