package main

import (
	"regexp"
	"strconv"
	"strings"
	"time"
)

// stepRE matches the step timings stasisd logs with a create, a resume or a
// pause ("link_bundle_ms=5.1 runsc_ms=420.3 agent_ready_ms=96.4 ..."); the
// bare "ms=" is the total.
var stepRE = regexp.MustCompile(` ([a-z_]+_ms)=([0-9.]+)`)

// lastSteps returns the step timings of the last log line of msg about
// sandbox id (stasisd logs it before it answers), or nil.
func (s *server) lastSteps(msg, id string) map[string]time.Duration {
	lines := s.logLines(msg)
	for i := len(lines) - 1; i >= 0; i-- {
		if !strings.Contains(lines[i], "sandbox="+id+" ") {
			continue
		}
		out := map[string]time.Duration{}
		for _, m := range stepRE.FindAllStringSubmatch(lines[i], -1) {
			ms, err := strconv.ParseFloat(m[2], 64)
			if err == nil {
				out[m[1]] = time.Duration(ms * float64(time.Millisecond))
			}
		}
		return out
	}
	return nil
}

// stepsTotal is the sum of the step timings m (stasisd's total, up to
// rounding).
func stepsTotal(m map[string]time.Duration) time.Duration {
	var t time.Duration
	for _, d := range m {
		t += d
	}
	return t
}

// steps gathers the step timings of one measurement, so that its row says
// where stasis's time went (the create, resume and pause log lines' breakdown).
type steps map[string]*durations

func (st *steps) add(m map[string]time.Duration) {
	if *st == nil {
		*st = steps{}
	}
	for k, d := range m {
		if (*st)[k] == nil {
			(*st)[k] = &durations{}
		}
		(*st)[k].add(d)
	}
}

// extra is the row's extra fields: stasis_<step> with each step's summary.
func (st steps) extra() map[string]any {
	out := map[string]any{}
	for k, d := range st {
		out["stasis_"+k] = d.stat()
	}
	return out
}
