// Package e2e drives a real stasisd with real gVisor sandboxes through its
// HTTP API, the way a user with curl would.
package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

type sandboxInfo struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Status      string            `json:"status"`
	Template    string            `json:"template"`
	AccessToken string            `json:"access_token"`
	Metadata    map[string]string `json:"metadata"`
	Error       string            `json:"error"`
	Network     *struct {
		AllowOut []string `json:"allow_out"`
		DenyOut  []string `json:"deny_out"`
	} `json:"network"`
	PreviewPrivate bool `json:"preview_private"`
	Secrets        []struct {
		EnvKey     string `json:"env_key"`
		SecretName string `json:"secret_name"`
		Revoked    *bool  `json:"revoked"`
	} `json:"secrets"`
	Pause *struct {
		Durable  bool `json:"durable"`
		InMemory bool `json:"in_memory"`
	} `json:"pause"`
}

type execResult struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	ExitCode int    `json:"exit_code"`
}

// client talks to one sandbox's data plane.
type client struct {
	t     *testing.T
	srv   *testenv.Server
	id    string
	token string
}

func create(t *testing.T, srv *testenv.Server, body map[string]any) (*client, sandboxInfo) {
	t.Helper()
	var sb sandboxInfo
	if err := srv.Do("POST", "/sandboxes", body, &sb); err != nil {
		t.Fatalf("create: %v", err)
	}
	if sb.AccessToken == "" || sb.Status != "active" {
		t.Fatalf("create returned %+v; want active with an access_token", sb)
	}
	return &client{t: t, srv: srv, id: sb.ID, token: sb.AccessToken}, sb
}

func createMinimal(t *testing.T, srv *testenv.Server, name string) (*client, sandboxInfo) {
	return create(t, srv, map[string]any{"name": name, "from_template": "stasis/minimal"})
}

// raw sends a data-plane request and returns status and body.
func (c *client) raw(method, path string, body io.Reader) (int, []byte) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.srv.URL+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("X-Superserve-Sandbox-Id", c.id)
	req.Header.Set("X-Access-Token", c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func (c *client) exec(command string) execResult {
	c.t.Helper()
	b, _ := json.Marshal(map[string]any{"command": command})
	status, data := c.raw("POST", "/exec", bytes.NewReader(b))
	if status != http.StatusOK {
		c.t.Fatalf("exec %q: HTTP %d: %s", command, status, data)
	}
	var r execResult
	if err := json.Unmarshal(data, &r); err != nil {
		c.t.Fatalf("exec %q: bad JSON %s", command, data)
	}
	return r
}

// sh runs a command that must succeed and returns its trimmed stdout.
func (c *client) sh(command string) string {
	c.t.Helper()
	r := c.exec(command)
	if r.ExitCode != 0 {
		c.t.Fatalf("%q exited %d: stdout %q stderr %q", command, r.ExitCode, r.Stdout, r.Stderr)
	}
	return strings.TrimSpace(r.Stdout)
}

func (c *client) writeFile(path string, content []byte) {
	c.t.Helper()
	status, data := c.raw("POST", "/files?path="+url.QueryEscape(path), bytes.NewReader(content))
	if status != http.StatusOK {
		c.t.Fatalf("write %s: HTTP %d: %s", path, status, data)
	}
}

func (c *client) readFile(path string) []byte {
	c.t.Helper()
	status, data := c.raw("GET", "/files?path="+url.QueryEscape(path), nil)
	if status != http.StatusOK {
		c.t.Fatalf("read %s: HTTP %d: %s", path, status, data)
	}
	return data
}

func statusOf(err error) int {
	var he *testenv.HTTPError
	if errors.As(err, &he) {
		return he.Status
	}
	return 0
}

func getInfo(t *testing.T, srv *testenv.Server, id string) sandboxInfo {
	t.Helper()
	var sb sandboxInfo
	if err := srv.Do("GET", "/sandboxes/"+id, nil, &sb); err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	return sb
}

// hostProcessesMentioning lists host PIDs whose command line contains s.
func hostProcessesMentioning(s string) []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Contains(cmdline, []byte(s)) {
			pids = append(pids, e.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return pids
}
