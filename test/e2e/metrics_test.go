package e2e

import (
	"io"
	"net/http"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestMetricsScrape scrapes a real stasisd the way Prometheus does: the
// exposition must parse, carry stasis's own metric names and labels, and the
// Go runtime and process collectors.
func TestMetricsScrape(t *testing.T) {
	srv := testenv.StartServer(t, testenv.WithArgs("--max-sandboxes-per-team", "1"))
	c, _ := createMinimal(t, srv, "metrics-1")
	if got := c.sh("echo hi"); got != "hi" {
		t.Fatalf("exec printed %q", got)
	}
	// The second live sandbox is refused: a counted failure.
	if err := srv.Do("POST", "/sandboxes", map[string]any{"name": "metrics-2", "from_template": "stasis/minimal"}, nil); statusOf(err) != http.StatusTooManyRequests {
		t.Fatalf("second sandbox over the limit of 1: %v", err)
	}

	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v\n%s", resp.StatusCode, err, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q, want the Prometheus text format", ct)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("/metrics does not parse as Prometheus text: %v\n%s", err, body)
	}

	// The names and labels stasis has always served.
	for _, want := range []string{
		`stasis_operation_duration_seconds_count{operation="create"} 1`,
		`stasis_operation_duration_seconds_count{operation="exec"} 1`,
		`stasis_operation_duration_seconds_bucket{operation="create",le="+Inf"} 1`,
		`stasis_operation_failures_total{operation="admit",reason="too_many_sandboxes"} 1`,
		`stasis_sandboxes{status="active"} 1`,
		`stasis_sandboxes{status="paused"} 0`,
		`stasis_sandboxes{status="starting"} 0`,
		`stasis_sandboxes{status="pausing"} 0`,
		`stasis_sandboxes{status="resuming"} 0`,
		`stasis_sandboxes{status="failed"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	for name, typ := range map[string]dto.MetricType{
		"stasis_operation_duration_seconds": dto.MetricType_HISTOGRAM,
		"stasis_operation_failures_total":   dto.MetricType_COUNTER,
		"stasis_sandboxes":                  dto.MetricType_GAUGE,
	} {
		if f := fams[name]; f == nil || f.GetType() != typ {
			t.Errorf("family %s: %v, want type %v", name, f, typ)
		}
	}
	// The collectors client_golang brings: the stasisd process and its Go runtime.
	var process, goRuntime int
	for name := range fams {
		switch {
		case strings.HasPrefix(name, "process_"):
			process++
		case strings.HasPrefix(name, "go_"):
			goRuntime++
		}
	}
	for _, name := range []string{"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
		"process_start_time_seconds", "go_goroutines", "go_memstats_heap_alloc_bytes", "go_gc_duration_seconds"} {
		if fams[name] == nil {
			t.Errorf("/metrics lacks %s (%d process_* and %d go_* families)", name, process, goRuntime)
		}
	}
	if f := fams["process_resident_memory_bytes"]; f != nil && f.GetMetric()[0].GetGauge().GetValue() <= 0 {
		t.Errorf("process_resident_memory_bytes = %v, want the stasisd's RSS", f.GetMetric()[0].GetGauge().GetValue())
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}
