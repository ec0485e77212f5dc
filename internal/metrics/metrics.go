// Package metrics holds stasisd's Prometheus metrics: latency histograms and
// failure counters recorded by the sandbox service, gauges computed at scrape
// time, and the Go runtime and process collectors of client_golang.
package metrics

import (
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Buckets are the latency histogram bounds, in seconds.
var Buckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// Registry holds every metric of one stasisd. The zero value is not usable;
// call New.
type Registry struct {
	reg      *prometheus.Registry
	duration *prometheus.HistogramVec
	failures *prometheus.CounterVec
}

// New returns a registry holding the operation metrics and the Go runtime
// and process collectors.
func New() *Registry {
	r := &Registry{
		reg: prometheus.NewRegistry(),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "stasis_operation_duration_seconds",
			Help:    "Latency of sandbox operations.",
			Buckets: Buckets,
		}, []string{"operation"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stasis_operation_failures_total",
			Help: "Failed sandbox operations by reason.",
		}, []string{"operation", "reason"}),
	}
	r.reg.MustRegister(r.duration, r.failures,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Observe records how long an operation (create, exec, pause, resume, ...) took.
func (r *Registry) Observe(op string, d time.Duration) {
	r.duration.WithLabelValues(op).Observe(d.Seconds())
}

// Fail counts a failed operation with a short reason code.
func (r *Registry) Fail(op, reason string) {
	r.failures.WithLabelValues(op, reason).Inc()
}

// GaugeVecFunc registers a gauge with one label whose values are computed by
// values at every scrape, one sample per map key. When values fails, that
// scrape leaves the gauge out and serves the other metrics. It fails if a
// metric of that name is already registered.
func (r *Registry) GaugeVecFunc(name, help, label string, values func() (map[string]float64, error)) error {
	return r.reg.Register(&gaugeVecFunc{
		desc:   prometheus.NewDesc(name, help, []string{label}, nil),
		values: values,
	})
}

// Handler serves the metrics in the exposition format the scraper asks for
// (Prometheus text, OpenMetrics or protobuf).
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		ErrorHandling:     promhttp.ContinueOnError,
	})
}

// gaugeVecFunc is a collector computing a labelled gauge at scrape time.
type gaugeVecFunc struct {
	desc   *prometheus.Desc
	values func() (map[string]float64, error)
}

func (g *gaugeVecFunc) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g *gaugeVecFunc) Collect(ch chan<- prometheus.Metric) {
	vals, err := g.values()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(g.desc, err)
		return
	}
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, vals[k], k)
	}
}
