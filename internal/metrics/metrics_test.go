package metrics

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

func TestExposition(t *testing.T) {
	r := New()
	r.Observe("pause", 30*time.Millisecond)
	r.Observe("pause", 2*time.Second)
	r.Fail("resume", "snapshot_corrupt")
	r.Gauge(func(w io.Writer) { fmt.Fprintln(w, `stasis_sandboxes{status="active"} 3`) })
	var b strings.Builder
	r.Write(&b)
	out := b.String()
	for _, want := range []string{
		`stasis_operation_duration_seconds_bucket{operation="pause",le="0.025"} 0`,
		`stasis_operation_duration_seconds_bucket{operation="pause",le="0.05"} 1`,
		`stasis_operation_duration_seconds_bucket{operation="pause",le="2.5"} 2`,
		`stasis_operation_duration_seconds_bucket{operation="pause",le="+Inf"} 2`,
		`stasis_operation_duration_seconds_count{operation="pause"} 2`,
		`stasis_operation_failures_total{operation="resume",reason="snapshot_corrupt"} 1`,
		`stasis_sandboxes{status="active"} 3`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}
