package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestQuickHarness runs the whole harness in quick mode against a real
// stasisd and real runsc containers, and checks that it measured every
// figure and wrote both reports. Timings are not judged.
func TestQuickHarness(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("starts real sandboxes")
	}
	out := t.TempDir()
	cfg := &Config{
		Quick:    true,
		OutDir:   out,
		RepoRoot: testenv.RepoRoot(),
		TempDir:  t.TempDir(),
		Log:      testWriter{t},
	}
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	// Binaries of the current tree: $STASIS_BIN_DIR when set, else a fresh build.
	bins := os.Getenv("STASIS_BIN_DIR")
	if bins == "" {
		dir, err := buildBinaries(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		bins = dir
	}
	cfg.Stasisd = filepath.Join(bins, "stasisd")
	cfg.Agent = filepath.Join(bins, "stasis-agent")
	rep, err := Run(context.Background(), cfg)
	if rep == nil {
		t.Fatal(err)
	}
	if werr := writeReport(out, rep); werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatal(err)
	}

	// Every measurable row has samples on each side it claims.
	groups := map[string]int{}
	for _, r := range rep.Rows {
		groups[r.Group]++
		switch r.Status {
		case "ok":
			if r.Stasis == nil || r.Stasis.N == 0 {
				t.Errorf("%s: no stasis samples", r.Name)
			}
			if r.RawOp != "" && (r.Raw == nil || r.Raw.N == 0) {
				t.Errorf("%s: no raw runsc samples", r.Name)
			}
		case "stasis_not_available":
			if r.Raw == nil || r.Raw.N == 0 {
				t.Errorf("%s: no raw runsc samples", r.Name)
			}
		case "not_available":
		default:
			t.Errorf("%s: status %q", r.Name, r.Status)
		}
	}
	// The network phase ran for real (this stasisd has egress), its
	// secrets rows too.
	for _, r := range rep.Rows {
		if (r.Group == "network" || r.Group == "secrets") && r.Status != "ok" {
			t.Errorf("%s: status %q (%s)", r.Name, r.Status, r.Note)
		}
	}
	for _, g := range []string{"create", "exec", "files", "pause", "warm", "network", "secrets", "density", "snapshot-upload", "cluster"} {
		if groups[g] == 0 {
			t.Errorf("no %s results", g)
		}
	}
	// Functional, not timing: sandboxes were held and nothing failed (a
	// slow host may stop at the time budget before the tiny bounds).
	if d := rep.Density; d == nil || d.ActiveHeld == 0 || d.PausedHeld == 0 || d.ActiveFailure != "" || d.PausedFailure != "" {
		t.Errorf("density: %+v", d)
	}
	if len(rep.GoBenchmarks) == 0 {
		t.Error("found no Go benchmarks in the tree")
	}

	data, err := os.ReadFile(filepath.Join(out, "benchmarks.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatalf("benchmarks.json: %v", err)
	}
	if back.Mode != "quick" || len(back.Rows) != len(rep.Rows) {
		t.Errorf("benchmarks.json: mode %q, %d rows", back.Mode, len(back.Rows))
	}
	md, err := os.ReadFile(filepath.Join(out, "BENCHMARKS.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Quick mode", "runsc", "exec `true`", "Density", "BenchmarkExecTrue", "Secrets: injection at egress", "Cluster targets (issue 14)"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("BENCHMARKS.md lacks %q", want)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// statCPU adds utime and stime, whatever the command name holds.
func TestStatCPU(t *testing.T) {
	line := "4242 (stasis d) (x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 12 0 100 0 0\n"
	got, err := statCPU(line)
	if err != nil || got != 3250*time.Millisecond {
		t.Fatalf("statCPU = %v, %v; want 3.25s", got, err)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 x 5"} {
		if _, err := statCPU(bad); err == nil {
			t.Errorf("statCPU(%q) gave no error", bad)
		}
	}
	// Our own process: the live file parses.
	if _, err := processCPU(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}
