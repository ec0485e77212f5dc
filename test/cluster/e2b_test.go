package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/stasis-sandbox/stasis/internal/e2b/envdpb/process"
	"github.com/stasis-sandbox/stasis/internal/e2b/envdpb/process/processconnect"
)

// e2bSandbox is the part of E2B's create answer these tests use.
type e2bSandbox struct {
	SandboxID       string `json:"sandboxID"`
	EnvdAccessToken string `json:"envdAccessToken"`
}

// e2bDo sends an E2B control-plane request to node n's E2B listener.
func e2bDo(t *testing.T, n *node, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, n.srv.E2BURL()+path, rd)
	req.Header.Set("X-API-Key", n.srv.APIKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("E2B %s %s via %s: %v", method, path, n.name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// envdVia is an HTTP client for envd of sandbox sb through node n's E2B
// listener, adding E2B's routing and auth headers as the SDK does.
type envdVia struct {
	n  *node
	sb e2bSandbox
}

func (e envdVia) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("E2b-Sandbox-Id", e.sb.SandboxID)
	r.Header.Set("X-Access-Token", e.sb.EnvdAccessToken)
	return http.DefaultTransport.RoundTrip(r)
}

func (e envdVia) process() processconnect.ProcessClient {
	return processconnect.NewProcessClient(&http.Client{Transport: e}, e.n.srv.E2BURL())
}

// sh runs a command through envd's Process/Start, checks that the node
// named owner served it, and returns its stdout.
func (e envdVia) sh(t *testing.T, owner, cmd string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stdinOff := false
	stream, err := e.process().Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", cmd}},
		Stdin:   &stdinOff,
	}))
	if err != nil {
		t.Fatalf("Process/Start %q via %s: %v", cmd, e.n.name, err)
	}
	defer stream.Close()
	var out strings.Builder
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		out.Write(ev.GetData().GetStdout())
		if end := ev.GetEnd(); end != nil {
			if served := stream.ResponseHeader().Get("X-Stasis-Node"); served != owner {
				t.Errorf("Process/Start via %s served by node %q, want the owner %s", e.n.name, served, owner)
			}
			if end.GetExitCode() != 0 {
				t.Fatalf("%q via %s: exit %d", cmd, e.n.name, end.GetExitCode())
			}
			return strings.TrimSpace(out.String())
		}
	}
	t.Fatalf("%q via %s: stream ended without an end event: %v", cmd, e.n.name, stream.Err())
	return ""
}

// files sends an envd /files request through node n's E2B listener, routed
// by header or, when host is set, by E2B's host {port}-{id}.{domain}.
func (e envdVia) files(t *testing.T, method, query, host string, body []byte) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, e.n.srv.E2BURL()+"/files?"+query, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/octet-stream")
	client := &http.Client{Transport: e}
	if host != "" {
		req.Host = host
		req.Header.Set("X-Access-Token", e.sb.EnvdAccessToken)
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("/files via %s (host %q): %v", e.n.name, host, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// e2bCreateOn creates sandboxes through via's E2B API until one lands on
// node want (placement picks among the least loaded), killing the others.
func (tc *testCluster) e2bCreateOn(t *testing.T, want string, via *node) e2bSandbox {
	t.Helper()
	for range 20 {
		status, data := e2bDo(t, via, "POST", "/v2/sandboxes", map[string]any{"templateID": "stasis/minimal", "timeout": 600})
		if status != http.StatusCreated {
			t.Fatalf("E2B create via %s: %d %s", via.name, status, data)
		}
		var sb e2bSandbox
		if err := json.Unmarshal(data, &sb); err != nil || sb.SandboxID == "" || sb.EnvdAccessToken == "" {
			t.Fatalf("E2B create via %s: %s (%v)", via.name, data, err)
		}
		if get(t, via, sb.SandboxID).Node == want {
			return sb
		}
		e2bDo(t, via, "DELETE", "/sandboxes/"+sb.SandboxID, nil)
	}
	t.Fatalf("no E2B create via %s landed on node %s in 20 tries", via.name, want)
	return e2bSandbox{}
}

// testE2BAcrossNodes: E2B's control plane and envd work through any
// node's E2B listener for a sandbox another node runs.
func testE2BAcrossNodes(t *testing.T, tc *testCluster) {
	a, b, c := tc.node("a"), tc.node("b"), tc.node("c")
	sb := tc.e2bCreateOn(t, "a", a)
	defer e2bDo(t, a, "DELETE", "/sandboxes/"+sb.SandboxID, nil)
	viaB, viaC := envdVia{n: b, sb: sb}, envdVia{n: c, sb: sb}

	if got := viaB.sh(t, "a", "echo hello; echo written-via-b > /tmp/b.txt"); got != "hello" {
		t.Errorf("command via b: %q, want hello", got)
	}
	// Upload through c, download through b, by host through c, and by a
	// signed URL (no token) through b.
	if status, data := viaC.files(t, "POST", "path=/tmp/up.txt", "", []byte("uploaded-via-c")); status != http.StatusOK {
		t.Fatalf("upload via c: %d %s", status, data)
	}
	if status, data := viaB.files(t, "GET", "path=/tmp/up.txt", "", nil); status != http.StatusOK || string(data) != "uploaded-via-c" {
		t.Errorf("download via b: %d %q, want the file uploaded via c", status, data)
	}
	host := "49983-" + sb.SandboxID + ".e2b.test"
	if status, data := viaC.files(t, "GET", "path=/tmp/b.txt", host, nil); status != http.StatusOK || string(data) != "written-via-b\n" {
		t.Errorf("download via c by host %s: %d %q", host, status, data)
	}
	sum := sha256.Sum256([]byte("/tmp/up.txt:read:user:" + sb.EnvdAccessToken))
	signed := url.Values{"path": {"/tmp/up.txt"}, "username": {"user"},
		"signature": {"v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")}}
	req, _ := http.NewRequest("GET", b.srv.E2BURL()+"/files?"+signed.Encode(), nil)
	req.Header.Set("E2b-Sandbox-Id", sb.SandboxID)
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Errorf("signed download via b: %v", err)
	} else {
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(data) != "uploaded-via-c" {
			t.Errorf("signed download via b: %d %q", resp.StatusCode, data)
		}
	}

	// A command left running in the background (started via b, whose
	// client goes away) survives a pause via c and a connect via b.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	stdinOff := false
	stream, err := viaB.process().Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.2; done"}},
		Stdin:   &stdinOff,
	}))
	if err != nil {
		cancel()
		t.Fatalf("background Process/Start via b: %v", err)
	}
	if !stream.Receive() || stream.Msg().GetEvent().GetStart().GetPid() == 0 {
		cancel()
		t.Fatalf("background command via b: no start event: %v", stream.Err())
	}
	pid := stream.Msg().GetEvent().GetStart().GetPid()
	cancel()
	stream.Close()
	waitFor(t, "the background counter to count", func() (bool, string) {
		n, _ := strconv.Atoi(viaC.sh(t, "a", "cat /tmp/n 2>/dev/null || echo 0"))
		return n >= 3, strconv.Itoa(n)
	})
	list, err := viaC.process().List(context.Background(), connect.NewRequest(&process.ListRequest{}))
	if err != nil {
		t.Fatalf("Process/List via c: %v", err)
	}
	found := false
	for _, p := range list.Msg.GetProcesses() {
		found = found || p.GetPid() == pid
	}
	if !found {
		t.Errorf("Process/List via c does not list the command %d started via b: %v", pid, list.Msg.GetProcesses())
	}

	if status, data := e2bDo(t, c, "POST", "/sandboxes/"+sb.SandboxID+"/pause", nil); status != http.StatusNoContent {
		t.Fatalf("E2B pause via c: %d %s", status, data)
	}
	if status, data := e2bDo(t, b, "POST", "/sandboxes/"+sb.SandboxID+"/pause", nil); status != http.StatusConflict {
		t.Errorf("second E2B pause via b: %d %s, want 409 (already paused)", status, data)
	}
	var info struct {
		State string `json:"state"`
	}
	status, data := e2bDo(t, b, "GET", "/sandboxes/"+sb.SandboxID, nil)
	if json.Unmarshal(data, &info); status != http.StatusOK || info.State != "paused" {
		t.Errorf("E2B info via b after the pause: %d %s, want paused", status, data)
	}
	if got := get(t, c, sb.SandboxID); got.Status != "paused" || got.Node != "a" {
		t.Errorf("after the E2B pause via c: %s on %s, want paused on a", got.Status, got.Node)
	}
	if status, data := e2bDo(t, b, "POST", "/v2/sandboxes/"+sb.SandboxID+"/connect", map[string]any{"timeout": 600}); status != http.StatusCreated {
		t.Fatalf("E2B connect (resume) via b: %d %s, want 201", status, data)
	}
	before, _ := strconv.Atoi(viaC.sh(t, "a", "cat /tmp/n"))
	if got := viaC.sh(t, "a", fmt.Sprintf("kill -0 %d && echo alive", pid)); got != "alive" {
		t.Errorf("the background command %d after pause/resume: %q", pid, got)
	}
	waitFor(t, "the counter to go on after the resume", func() (bool, string) {
		n, _ := strconv.Atoi(viaB.sh(t, "a", "cat /tmp/n"))
		return n > before, fmt.Sprintf("%d (was %d)", n, before)
	})
	if status, data := viaB.files(t, "GET", "path=/tmp/up.txt", "", nil); status != http.StatusOK || string(data) != "uploaded-via-c" {
		t.Errorf("download via b after the resume: %d %q", status, data)
	}

	if status, data := e2bDo(t, c, "DELETE", "/sandboxes/"+sb.SandboxID, nil); status != http.StatusNoContent {
		t.Fatalf("E2B kill via c: %d %s", status, data)
	}
	if status, _ := e2bDo(t, b, "GET", "/sandboxes/"+sb.SandboxID, nil); status != http.StatusNotFound {
		t.Errorf("E2B info via b after the kill: %d, want 404", status)
	}
	if contains(runningOn(t, a), sb.SandboxID) {
		t.Errorf("node a still runs killed sandbox %s", sb.SandboxID)
	}
}
