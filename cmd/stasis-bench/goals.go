package main

import (
	"fmt"
	"strings"
)

// Goal is one target of issue 16, read from the rows of a run and listed at
// the top of BENCHMARKS.md with the figure the run measured. Each goal reads
// one number from the report: a row's stasis÷runsc ratio, a row's stasis
// median, or the ratio of two rows' stasis medians.
type Goal struct {
	What string // what is measured, as the table says it
	Row  string // the row (Row.Name) the figure comes from
	// Of, if set, is a second row: the figure is Row's stasis median ÷ Of's.
	Of string
	// Kind says which number of Row is compared with Max: goalRatio (the
	// row's stasis÷runsc ratio), goalMs (its stasis median, in its unit),
	// goalRel (Row's stasis median ÷ Of's) or goalAdded (the row's stasis
	// median − its other column's median, in ms).
	Kind string
	Max  float64 // met when the figure is at most Max
}

const (
	goalRatio = "ratio"
	goalMs    = "ms"
	goalRel   = "rel"
	goalAdded = "added"
)

// goals is the list in the table's order. Add a goal by appending to it.
var goals = []Goal{
	{What: "cold resume → first command, 1 GB (snapshot not in the page cache)", Row: "cold resume → first command OK (snapshot not in the page cache), 1 GB touched", Kind: goalMs, Max: 300},
	{What: "cold resume → first command, 1 GB ÷ 10 MB", Row: "cold resume → first command OK (snapshot not in the page cache), 1 GB touched", Of: "cold resume → first command OK (snapshot not in the page cache), 10 MB touched", Kind: goalRel, Max: 1.5},
	{What: "resume (restore from disk), 10 MB", Row: "resume (restore from disk), 10 MB touched", Kind: goalRatio, Max: 1.1},
	{What: "resume (restore from disk), 200 MB", Row: "resume (restore from disk), 200 MB touched", Kind: goalRatio, Max: 1.1},
	{What: "resume → first command, 10 MB", Row: "resume → first command OK, 10 MB touched", Kind: goalRatio, Max: 1.1},
	{What: "resume → first command, 200 MB", Row: "resume → first command OK, 200 MB touched", Kind: goalRatio, Max: 1.1},
	{What: "pause until durable on disk, 1 GB", Row: "pause until durable on disk, 1 GB touched", Kind: goalRatio, Max: 1.2},
	{What: "checkpoint image size, 10 MB", Row: "checkpoint image size, 10 MB touched", Kind: goalRatio, Max: 1.15},
	{What: "exec `true` isolated", Row: "exec `true`", Kind: goalMs, Max: 8},
	{What: "exec `true` back to back ÷ isolated", Row: "exec `true`, back to back", Of: "exec `true`", Kind: goalRel, Max: 1.2},
	{What: "exec printing 1 MB", Row: "exec printing 1 MB", Kind: goalRatio, Max: 1.1},
	{What: "file read 100 MB", Row: "file read 100 MB", Kind: goalRatio, Max: 1.0},
	{What: "create (cold) from stasis/minimal", Row: "create (cold) from stasis/minimal", Kind: goalRatio, Max: 1.1},
	{What: "create (cold) from stasis/base", Row: "create (cold) from stasis/base", Kind: goalRatio, Max: 1.1},
	{What: "create from a template snapshot", Row: "create from a template snapshot (stasis/minimal)", Kind: goalRatio, Max: 1.1},
}

// clusterGoals are issue 14's targets, listed in a table of their own.
var clusterGoals = []Goal{
	{What: "forwarding hop's added latency, exec `true` (p50, other node − owner)", Row: hopRow, Kind: goalAdded, Max: 1},
}

// goalFigure returns g's figure in r, and the ratio to raw runsc of its
// row (nil if the row has none); ok is false when the run lacks the rows.
func goalFigure(r *Report, g Goal) (now float64, unit string, ratio *float64, ok bool) {
	row := findRow(r, g.Row)
	if row == nil || row.Stasis == nil {
		return 0, "", nil, false
	}
	switch g.Kind {
	case goalRatio:
		if row.Ratio == nil {
			return 0, "", nil, false
		}
		return *row.Ratio, "×", row.Ratio, true
	case goalMs:
		return row.Stasis.Median, " " + row.Stasis.Unit, row.Ratio, true
	case goalRel:
		of := findRow(r, g.Of)
		if of == nil || of.Stasis == nil || of.Stasis.Median == 0 {
			return 0, "", nil, false
		}
		return row.Stasis.Median / of.Stasis.Median, "×", row.Ratio, true
	case goalAdded:
		if row.Raw == nil {
			return 0, "", nil, false
		}
		// Both columns are stasis: no runsc ratio.
		return row.Stasis.Median - row.Raw.Median, " ms", nil, true
	}
	return 0, "", nil, false
}

func findRow(r *Report, name string) *Row {
	for i := range r.Rows {
		if r.Rows[i].Name == name {
			return &r.Rows[i]
		}
	}
	return nil
}

// writeGoals writes the goal tables: what, target, what this run
// measured, the row's stasis÷runsc ratio, and whether the goal is met.
func writeGoals(b *strings.Builder, r *Report) {
	fmt.Fprintf(b, "## Goals\n\n")
	fmt.Fprintf(b, "The targets of issue 16 against this run. \"now\" is the goal's figure: a stasis÷runsc ratio (×), a stasis median, or the ratio of two stasis medians; \"vs runsc\" is the ratio of the row it reads.\n\n")
	writeGoalTable(b, r, goals)
	writeDensityGoals(b, r.Density)
	if hasRows(r, "cluster") {
		fmt.Fprintf(b, "Cluster targets (issue 14), from the cluster section below: both figures are stasis's, through the other node and on the owner, alternately.\n\n")
		writeGoalTable(b, r, clusterGoals)
	}
}

func writeGoalTable(b *strings.Builder, r *Report, list []Goal) {
	fmt.Fprintf(b, "| goal | target | now | vs runsc | met |\n| --- | ---: | ---: | ---: | :---: |\n")
	for _, g := range list {
		target := fmt.Sprintf("≤ %s×", num(g.Max))
		switch g.Kind {
		case goalMs:
			target = fmt.Sprintf("≤ %s ms", num(g.Max))
		case goalAdded:
			target = fmt.Sprintf("≤ +%s ms", num(g.Max))
		}
		now, unit, ratio, ok := goalFigure(r, g)
		if !ok {
			fmt.Fprintf(b, "| %s | %s | not measured in this run | — | — |\n", g.What, target)
			continue
		}
		vs := "—"
		if ratio != nil {
			vs = fmt.Sprintf("%.2f×", *ratio)
		}
		met := "no"
		if now <= g.Max {
			met = "yes"
		}
		sign := ""
		if g.Kind == goalAdded && now >= 0 {
			sign = "+"
		}
		fmt.Fprintf(b, "| %s | %s | %s%s%s | %s | %s |\n", g.What, target, sign, num(now), unit, vs, met)
	}
	fmt.Fprintf(b, "\n")
}

func hasRows(r *Report, group string) bool {
	for _, row := range r.Rows {
		if row.Group == group {
			return true
		}
	}
	return false
}

// Goal 6's targets: idle stasis/minimal sandboxes held at once.
const (
	densityActiveGoal = 300
	densityPausedGoal = 2000
)

// writeDensityGoals lists goal 6 against the density phase's counts: a run
// whose bounds are below the targets (plain make bench) cannot meet them.
func writeDensityGoals(b *strings.Builder, d *Density) {
	if d == nil {
		return
	}
	fmt.Fprintf(b, "Density (goal 6), from the density section below (`make bench-density` runs it at the targets' scale):\n\n")
	fmt.Fprintf(b, "| goal | target | now | met |\n| --- | ---: | ---: | :---: |\n")
	row := func(what string, target, held, bound int, reached, byTime, byMemory bool) {
		now := fmt.Sprint(held)
		switch {
		case reached:
			now = fmt.Sprintf("≥ %d (the run's bound)", held)
		case byMemory:
			now = fmt.Sprintf("≥ %d (stopped at the MemAvailable floor)", held)
		case byTime:
			now = fmt.Sprintf("≥ %d (stopped by the time budget)", held)
		}
		met := "no"
		switch {
		case held >= target:
			met = "yes"
		case reached && bound < target:
			met = "not measured at this scale"
		}
		fmt.Fprintf(b, "| %s | ≥ %d | %s | %s |\n", what, target, now, met)
	}
	row("idle active stasis/minimal sandboxes at once, creates under 2× their first latency", densityActiveGoal, d.ActiveHeld, d.ActiveBound, d.ActiveReachedBound, d.ActiveStoppedByTime, d.ActiveStoppedByMemory)
	row("paused stasis/minimal sandboxes at once", densityPausedGoal, d.PausedHeld, d.PausedBound, d.PausedReachedBound, d.PausedStoppedByTime, d.PausedStoppedByMemory)
	fmt.Fprintf(b, "\n")
}
