package main

import (
	"math"
	"slices"
	"time"
)

// Stat summarises repeated measurements of one quantity.
type Stat struct {
	Unit   string    `json:"unit"` // "ms", "MiB", "count", "%"
	N      int       `json:"n"`
	Median float64   `json:"median"`
	P95    float64   `json:"p95"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Mean   float64   `json:"mean"`
	Values []float64 `json:"values,omitempty"` // raw samples, in run order
}

// summarize computes a Stat over vals (in unit). It returns nil for no
// samples.
func summarize(unit string, vals []float64) *Stat {
	if len(vals) == 0 {
		return nil
	}
	s := slices.Clone(vals)
	slices.Sort(s)
	var sum float64
	for _, v := range s {
		sum += v
	}
	return &Stat{
		Unit:   unit,
		N:      len(s),
		Median: round(percentile(s, 50)),
		P95:    round(percentile(s, 95)),
		Min:    round(s[0]),
		Max:    round(s[len(s)-1]),
		Mean:   round(sum / float64(len(s))),
		Values: roundAll(vals),
	}
}

// percentile interpolates linearly between the closest ranks of sorted
// (the "R-7" method of spreadsheets and numpy's default).
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 1 {
		return sorted[0]
	}
	pos := p / 100 * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	frac := pos - float64(lo)
	return sorted[lo] + (sorted[hi]-sorted[lo])*frac
}

func round(v float64) float64 {
	switch {
	case math.Abs(v) >= 100:
		return math.Round(v*10) / 10
	case math.Abs(v) >= 1:
		return math.Round(v*100) / 100
	default:
		return math.Round(v*1000) / 1000
	}
}

func roundAll(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = round(x)
	}
	return out
}

// durations collects timings.
type durations []time.Duration

func (d *durations) add(t time.Duration) { *d = append(*d, t) }

func (d durations) stat() *Stat {
	vals := make([]float64, len(d))
	for i, t := range d {
		vals[i] = float64(t) / float64(time.Millisecond)
	}
	return summarize("ms", vals)
}

// ratio is a/b of two medians, or nil when either is missing.
func ratio(a, b *Stat) *float64 {
	if a == nil || b == nil || b.Median == 0 {
		return nil
	}
	r := math.Round(a.Median/b.Median*100) / 100
	return &r
}
