// Package metrics is a small Prometheus text-format registry: latency
// histograms and failure counters recorded by the sandbox service, and
// gauges computed at scrape time. It has no dependencies on purpose.
package metrics

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"sync"
	"time"
)

// Buckets are the latency histogram bounds, in seconds.
var Buckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// Registry holds every metric. The zero value is not usable; call New.
type Registry struct {
	mu       sync.Mutex
	hists    map[string]*histogram // by operation
	failures map[[2]string]uint64  // (operation, reason) -> count
	gauges   []func(w io.Writer)
}

type histogram struct {
	counts []uint64 // per bucket, cumulative at write time
	sum    float64
	n      uint64
}

// New returns an empty registry.
func New() *Registry {
	return &Registry{hists: map[string]*histogram{}, failures: map[[2]string]uint64{}}
}

// Observe records how long an operation (create, exec, pause, resume, ...) took.
func (r *Registry) Observe(op string, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hists[op]
	if h == nil {
		h = &histogram{counts: make([]uint64, len(Buckets))}
		r.hists[op] = h
	}
	s := d.Seconds()
	for i, b := range Buckets {
		if s <= b {
			h.counts[i]++
		}
	}
	h.sum += s
	h.n++
}

// Fail counts a failed operation with a short reason code.
func (r *Registry) Fail(op, reason string) {
	r.mu.Lock()
	r.failures[[2]string{op, reason}]++
	r.mu.Unlock()
}

// Gauge registers a function that writes gauge lines at scrape time.
func (r *Registry) Gauge(f func(w io.Writer)) {
	r.mu.Lock()
	r.gauges = append(r.gauges, f)
	r.mu.Unlock()
}

// Write writes every metric in the Prometheus text exposition format.
func (r *Registry) Write(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintln(w, "# HELP stasis_operation_duration_seconds Latency of sandbox operations.")
	fmt.Fprintln(w, "# TYPE stasis_operation_duration_seconds histogram")
	for _, op := range sortedKeys(r.hists) {
		h := r.hists[op]
		for i, b := range Buckets {
			fmt.Fprintf(w, "stasis_operation_duration_seconds_bucket{operation=%q,le=%q} %d\n", op, formatFloat(b), h.counts[i])
		}
		fmt.Fprintf(w, "stasis_operation_duration_seconds_bucket{operation=%q,le=\"+Inf\"} %d\n", op, h.n)
		fmt.Fprintf(w, "stasis_operation_duration_seconds_sum{operation=%q} %g\n", op, h.sum)
		fmt.Fprintf(w, "stasis_operation_duration_seconds_count{operation=%q} %d\n", op, h.n)
	}
	fmt.Fprintln(w, "# HELP stasis_operation_failures_total Failed sandbox operations by reason.")
	fmt.Fprintln(w, "# TYPE stasis_operation_failures_total counter")
	keys := make([][2]string, 0, len(r.failures))
	for k := range r.failures {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+keys[i][1] < keys[j][0]+keys[j][1] })
	for _, k := range keys {
		fmt.Fprintf(w, "stasis_operation_failures_total{operation=%q,reason=%q} %d\n", k[0], k[1], r.failures[k])
	}
	for _, g := range r.gauges {
		g(w)
	}
}

func formatFloat(f float64) string {
	if f == math.Trunc(f) {
		return fmt.Sprintf("%.0f", f)
	}
	return strings.TrimRight(fmt.Sprintf("%f", f), "0")
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
