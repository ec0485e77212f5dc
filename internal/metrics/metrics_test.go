package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape fetches the registry over real HTTP with the given Accept header.
func scrape(t *testing.T, r *Registry, accept string) (contentType, body string) {
	t.Helper()
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	req, err := http.NewRequest("GET", srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, b)
	}
	return resp.Header.Get("Content-Type"), string(b)
}

func parseText(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, body)
	}
	return fams
}

func TestExposition(t *testing.T) {
	r := New()
	r.Observe("pause", 30*time.Millisecond)
	r.Observe("pause", 2*time.Second)
	r.Fail("resume", "snapshot_corrupt")
	r.Fail("resume", "snapshot_corrupt")
	if err := r.GaugeVecFunc("stasis_sandboxes", "Sandboxes by status.", "status", func() (map[string]float64, error) {
		return map[string]float64{"active": 3, "paused": 0}, nil
	}); err != nil {
		t.Fatal(err)
	}
	ct, out := scrape(t, r, "")
	if !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type = %q, want the Prometheus text format", ct)
	}
	for _, want := range []string{
		`stasis_operation_duration_seconds_bucket{operation="pause",le="0.025"} 0`,
		`stasis_operation_duration_seconds_bucket{operation="pause",le="0.05"} 1`,
		`stasis_operation_duration_seconds_bucket{operation="pause",le="2.5"} 2`,
		`stasis_operation_duration_seconds_bucket{operation="pause",le="+Inf"} 2`,
		`stasis_operation_duration_seconds_count{operation="pause"} 2`,
		`stasis_operation_failures_total{operation="resume",reason="snapshot_corrupt"} 2`,
		`stasis_sandboxes{status="active"} 3`,
		`stasis_sandboxes{status="paused"} 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	fams := parseText(t, out)
	for name, typ := range map[string]dto.MetricType{
		"stasis_operation_duration_seconds": dto.MetricType_HISTOGRAM,
		"stasis_operation_failures_total":   dto.MetricType_COUNTER,
		"stasis_sandboxes":                  dto.MetricType_GAUGE,
		"process_cpu_seconds_total":         dto.MetricType_COUNTER,
		"process_resident_memory_bytes":     dto.MetricType_GAUGE,
		"process_open_fds":                  dto.MetricType_GAUGE,
		"go_goroutines":                     dto.MetricType_GAUGE,
		"go_memstats_heap_alloc_bytes":      dto.MetricType_GAUGE,
	} {
		f := fams[name]
		if f == nil {
			t.Errorf("no %s family", name)
			continue
		}
		if f.GetType() != typ {
			t.Errorf("%s has type %v, want %v", name, f.GetType(), typ)
		}
	}
	h := fams["stasis_operation_duration_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 2 || h.GetSampleSum() < 2.03 || h.GetSampleSum() > 2.031 {
		t.Errorf("pause histogram count %d sum %v, want 2 and 2.03", h.GetSampleCount(), h.GetSampleSum())
	}
	if len(h.GetBucket()) != len(Buckets)+1 { // the text format lists +Inf too
		t.Errorf("pause histogram has %d buckets, want %d", len(h.GetBucket()), len(Buckets)+1)
	}
}

func TestOpenMetricsNegotiated(t *testing.T) {
	r := New()
	r.Fail("exec", "agent")
	ct, out := scrape(t, r, "application/openmetrics-text;version=1.0.0")
	if !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Fatalf("Content-Type = %q for an OpenMetrics scraper", ct)
	}
	if !strings.HasSuffix(out, "# EOF\n") || !strings.Contains(out, `stasis_operation_failures_total{operation="exec",reason="agent"} 1`) {
		t.Fatalf("not an OpenMetrics exposition of our counter:\n%s", out)
	}
}

// A gauge whose source fails is left out of that scrape; the rest is served.
func TestGaugeErrorKeepsOtherMetrics(t *testing.T) {
	r := New()
	r.Observe("create", time.Second)
	if err := r.GaugeVecFunc("stasis_sandboxes", "Sandboxes by status.", "status", func() (map[string]float64, error) {
		return nil, errors.New("store down")
	}); err != nil {
		t.Fatal(err)
	}
	_, out := scrape(t, r, "")
	fams := parseText(t, out)
	if fams["stasis_sandboxes"] != nil {
		t.Errorf("stasis_sandboxes served although its source failed:\n%s", out)
	}
	if fams["stasis_operation_duration_seconds"] == nil || fams["go_goroutines"] == nil {
		t.Errorf("a failing gauge took the other metrics down:\n%s", out)
	}
}

func TestGaugeNameTwice(t *testing.T) {
	r := New()
	f := func() (map[string]float64, error) { return nil, nil }
	if err := r.GaugeVecFunc("stasis_sandboxes", "Sandboxes by status.", "status", f); err != nil {
		t.Fatal(err)
	}
	if err := r.GaugeVecFunc("stasis_sandboxes", "Sandboxes by status.", "status", f); err == nil {
		t.Fatal("registering stasis_sandboxes twice succeeded")
	}
}
