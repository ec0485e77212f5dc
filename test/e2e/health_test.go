package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

type healthReport struct {
	Status  string `json:"status"`
	Store   struct{ OK bool }
	Runtime struct{ OK bool }
	Disk    struct {
		OK           bool   `json:"ok"`
		Error        string `json:"error"`
		FreeBytes    uint64 `json:"free_bytes"`
		MinFreeBytes uint64 `json:"min_free_bytes"`
	}
}

func getHealth(t *testing.T, srv *testenv.Server) (int, healthReport) {
	t.Helper()
	resp, err := http.Get(srv.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h healthReport
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, h
}

// TestHealthAndDiskGuard: /health reports the store, the runtime and the
// disk; below --min-free-disk-mib it answers 503, and nothing new that
// takes disk space (sandbox, template build) is started: 507
// insufficient_storage.
func TestHealthAndDiskGuard(t *testing.T) {
	srv := testenv.StartServer(t)
	if status, h := getHealth(t, srv); status != http.StatusOK || h.Status != "ok" || !h.Store.OK || !h.Runtime.OK || !h.Disk.OK || h.Disk.FreeBytes == 0 {
		t.Fatalf("healthy server: HTTP %d %+v", status, h)
	}

	// No disk has a PiB free: the reserve cannot be met.
	full := testenv.StartServer(t, testenv.AllowUnhealthy(), testenv.WithArgs("--min-free-disk-mib", "1073741824"))
	status, h := getHealth(t, full)
	if status != http.StatusServiceUnavailable || h.Status != "unhealthy" || h.Disk.OK || !h.Store.OK || !h.Runtime.OK ||
		!strings.Contains(h.Disk.Error, "MiB free") {
		t.Fatalf("disk below the reserve: HTTP %d %+v", status, h)
	}
	for _, req := range []struct {
		path string
		body map[string]any
	}{
		{"/sandboxes", map[string]any{"name": "nope", "from_template": "stasis/minimal"}},
		{"/templates", map[string]any{"name": "nope", "build_spec": map[string]any{"from": "stasis/minimal"}}},
	} {
		err := full.Do("POST", req.path, req.body, nil)
		if statusOf(err) != http.StatusInsufficientStorage || !strings.Contains(err.Error(), "insufficient_storage") {
			t.Errorf("POST %s with the disk below the reserve: %v, want 507 insufficient_storage", req.path, err)
		}
	}
	var list []sandboxInfo
	if err := full.Do("GET", "/sandboxes", nil, &list); err != nil || len(list) != 0 {
		t.Errorf("sandboxes after refused creates: %v %+v", err, list)
	}
	var templates []map[string]any
	if err := full.Do("GET", "/templates", nil, &templates); err != nil || len(templates) != 0 {
		t.Errorf("templates after a refused create: %v %+v", err, templates)
	}
}
