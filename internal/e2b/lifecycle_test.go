package e2b_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/stasis-sandbox/stasis/internal/e2b/envdpb/process"
	"github.com/stasis-sandbox/stasis/internal/e2b/envdpb/process/processconnect"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestE2BLifecycle covers metrics, snapshots, fork, the timeout's two
// actions, and the proxy to a sandbox's other ports.
func TestE2BLifecycle(t *testing.T) {
	srv := testenv.StartServer(t)
	c := &client{t: t, base: srv.E2BURL(), key: srv.APIKey}
	sb := c.create(map[string]any{"templateID": "base"})
	pc := processconnect.NewProcessClient(envdClient(sb, ""), c.base)

	t.Run("metrics", func(t *testing.T) {
		st, data, _ := c.do("GET", "/sandboxes/"+sb.SandboxID+"/metrics", nil)
		var ms []struct {
			CPUCount  int   `json:"cpuCount"`
			MemTotal  int64 `json:"memTotal"`
			MemUsed   int64 `json:"memUsed"`
			DiskTotal int64 `json:"diskTotal"`
			DiskUsed  int64 `json:"diskUsed"`
		}
		json.Unmarshal(data, &ms)
		if st != 200 || len(ms) != 1 || ms[0].CPUCount < 1 || ms[0].MemTotal <= 0 || ms[0].MemUsed <= 0 || ms[0].DiskTotal <= 0 {
			t.Fatalf("metrics: %d %s", st, data)
		}
	})

	t.Run("port proxy", func(t *testing.T) {
		stream, err := pc.Start(context.Background(), connect.NewRequest(&process.StartRequest{
			Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-c", "cd /tmp && echo served > index.html && exec python3 -m http.server 8000"}},
		}))
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		if !stream.Receive() {
			t.Fatal(stream.Err())
		}
		get := func(token string) (int, string) {
			req, _ := http.NewRequest("GET", c.base+"/index.html", nil)
			req.Header.Set("E2b-Sandbox-Id", sb.SandboxID)
			req.Header.Set("E2b-Sandbox-Port", "8000")
			req.Header.Set("E2B-Traffic-Access-Token", token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		if st, _ := get("wrong"); st != 401 {
			t.Fatalf("wrong token: %d", st)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			st, body := get(sb.EnvdAccessToken)
			if st == 200 && body == "served\n" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("port 8000: %d %q", st, body)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("snapshots", func(t *testing.T) {
		run(t, pc, "echo snap > /home/user/mark")
		st, data, _ := c.do("POST", "/sandboxes/"+sb.SandboxID+"/snapshots", map[string]string{"name": "mine"})
		var snap struct {
			SnapshotID string   `json:"snapshotID"`
			Names      []string `json:"names"`
		}
		json.Unmarshal(data, &snap)
		if st != 201 || snap.SnapshotID == "" || len(snap.Names) != 1 || snap.Names[0] != "mine" {
			t.Fatalf("create snapshot: %d %s", st, data)
		}
		st, data, _ = c.do("GET", "/snapshots?sandboxID="+sb.SandboxID, nil)
		if st != 200 || !strings.Contains(string(data), snap.SnapshotID) {
			t.Fatalf("list snapshots: %d %s", st, data)
		}
		from := c.create(map[string]any{"templateID": snap.SnapshotID})
		out, _, _ := run(t, processconnect.NewProcessClient(envdClient(from, ""), c.base), "cat /home/user/mark")
		if out != "snap\n" {
			t.Fatalf("sandbox from snapshot: %q", out)
		}
		if st, data, _ := c.do("DELETE", "/templates/"+snap.SnapshotID, nil); st != 204 {
			t.Fatalf("delete snapshot: %d %s", st, data)
		}
		if st, _, _ := c.do("DELETE", "/templates/"+snap.SnapshotID, nil); st != 404 {
			t.Fatalf("second delete: %d", st)
		}
	})

	t.Run("fork", func(t *testing.T) {
		run(t, pc, "echo forked > /home/user/fork-mark")
		st, data, _ := c.do("POST", "/sandboxes/"+sb.SandboxID+"/fork", map[string]int{"count": 1, "timeout": 60})
		var res []struct {
			Sandbox *sandboxJSON `json:"sandbox"`
		}
		json.Unmarshal(data, &res)
		if st != 201 || len(res) != 1 || res[0].Sandbox == nil {
			t.Fatalf("fork: %d %s", st, data)
		}
		fork := *res[0].Sandbox
		t.Cleanup(func() { c.do("DELETE", "/sandboxes/"+fork.SandboxID, nil) })
		out, _, _ := run(t, processconnect.NewProcessClient(envdClient(fork, ""), c.base), "cat /home/user/fork-mark")
		if out != "forked\n" {
			t.Fatalf("fork's file: %q", out)
		}
		// The source runs on, as before.
		if out, _, _ := run(t, pc, "cat /home/user/fork-mark"); out != "forked\n" {
			t.Fatalf("source after fork: %q", out)
		}
	})

	t.Run("timeout pauses with autoPause, kills without", func(t *testing.T) {
		paused := c.create(map[string]any{"templateID": "base", "timeout": 1, "autoPause": true})
		killed := c.create(map[string]any{"templateID": "base", "timeout": 1})
		deadline := time.Now().Add(60 * time.Second)
		for {
			st1, data, _ := c.do("GET", "/sandboxes/"+paused.SandboxID, nil)
			st2, _, _ := c.do("GET", "/sandboxes/"+killed.SandboxID, nil)
			if st1 == 200 && strings.Contains(string(data), `"state":"paused"`) && strings.Contains(string(data), `"onTimeout":"pause"`) && st2 == 404 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the timeout: autoPause one %d %s; the other %d", st1, data, st2)
			}
			time.Sleep(250 * time.Millisecond)
		}
		// envd traffic resumes the paused one.
		if out, _, _ := run(t, processconnect.NewProcessClient(envdClient(paused, ""), c.base), "echo back"); out != "back\n" {
			t.Fatalf("after auto-pause: %q", out)
		}
	})
}
