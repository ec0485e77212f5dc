//go:build stasis_sim

package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestSimRuntimeLifecycle: a node on the simulated runtime serves the
// real API, store and service: a sandbox is created, paused, resumed (with
// a rotated token) and deleted through HTTP, with no sandbox or network set
// up on the host.
func TestSimRuntimeLifecycle(t *testing.T) {
	const key = "ss_live_simtest0123456789"
	t.Setenv("STASIS_API_KEY", key)
	images := os.Getenv("STASIS_IMAGES_DIR")
	if images == "" {
		images = filepath.Join(testenv.RepoRoot(), ".cache", "images")
	}
	f := serveFlags{runtime: "sim", dataDir: t.TempDir(), imagesDir: images, netnsPrefix: "stsmt",
		template: "stasis/minimal", vcpu: 1, memMiB: 256, minFreeDiskMiB: 1}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := setup(context.Background(), f, log)
	if err != nil {
		t.Fatal(err)
	}
	defer n.close(log)
	srv := httptest.NewServer(n.api)
	defer srv.Close()

	call := func(method, path, body string, want int) map[string]any {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("X-API-Key", key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: HTTP %d, want %d: %s", method, path, resp.StatusCode, want, b)
		}
		var out map[string]any
		json.Unmarshal(b, &out)
		return out
	}
	sb := call("POST", "/sandboxes", `{"name":"sim"}`, 201)
	id, _ := sb["id"].(string)
	tok1, _ := sb["access_token"].(string)
	if sb["status"] != "active" || id == "" || tok1 == "" {
		t.Fatalf("create: %v", sb)
	}
	if got := call("POST", "/sandboxes/"+id+"/pause", "", 200); got["status"] != "paused" {
		t.Fatalf("pause: %v", got)
	}
	got := call("POST", "/sandboxes/"+id+"/resume", "", 200)
	if got["status"] != "active" || got["access_token"] == tok1 || got["access_token"] == "" {
		t.Fatalf("resume: %v", got)
	}
	call("DELETE", "/sandboxes/"+id, "", 204)
	call("GET", "/sandboxes/"+id, "", 404)
}

// TestSimRuntimeFlagRefusesUnknown: --runtime takes gvisor or sim only.
func TestSimRuntimeFlagRefusesUnknown(t *testing.T) {
	_, err := setupSim(context.Background(), serveFlags{runtime: "firecracker"}, slog.Default())
	if err == nil || !strings.Contains(err.Error(), "--runtime") {
		t.Fatalf("--runtime firecracker: %v", err)
	}
}
