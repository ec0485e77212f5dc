package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestCLINetwork: create with egress rules, the network log of what they
// blocked (blocked by stasisd: nothing leaves the host), and a preview URL.
func TestCLINetwork(t *testing.T) {
	srv := testenv.StartServer(t)
	c := newCLI(t, srv)
	id := c.create("net", "--deny-out", "0.0.0.0/0", "--allow-out", "*.example.test")
	var info struct {
		Network struct {
			AllowOut []string `json:"allow_out"`
			DenyOut  []string `json:"deny_out"`
		} `json:"network"`
	}
	if err := json.Unmarshal([]byte(c.ok("info", "--json", id)), &info); err != nil {
		t.Fatal(err)
	}
	if strings.Join(info.Network.AllowOut, ",") != "*.example.test" || strings.Join(info.Network.DenyOut, ",") != "0.0.0.0/0" {
		t.Fatalf("network after create: %+v", info.Network)
	}
	c.run("exec", id, "echo | timeout 10 nc 203.0.113.44 80")
	var out string
	for range 100 {
		out = c.ok("network", "log", id)
		if strings.Contains(out, "203.0.113.44:80") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(out, "blocked") || !strings.Contains(out, "203.0.113.44:80") || !strings.Contains(out, "deny_out:0.0.0.0/0") {
		t.Fatalf("network log:\n%s", out)
	}
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	if got := strings.TrimSpace(c.ok("preview", id, "8000")); got != "http://8000-"+id+".sandbox.localhost:"+port+"/" {
		t.Fatalf("preview printed %q", got)
	}
	if r := c.run("preview", id, "80"); r.code == 0 {
		t.Fatalf("preview of port 80 succeeded: %q", r.stdout)
	}
	if r := c.run("create", "--deny-out", "example.test"); r.code == 0 || !strings.Contains(r.stderr, "example.test") {
		t.Fatalf("create with a domain in --deny-out: %+v", r)
	}
}
