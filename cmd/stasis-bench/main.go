// Command stasis-bench measures stasis against a real stasisd and, for every
// figure, the same work done by raw runsc in the same run, and writes
// BENCHMARKS.md and benchmarks.json.
//
//	go run ./cmd/stasis-bench -out docs     # full run, about 5-10 minutes
//	go run ./cmd/stasis-bench -quick        # harness check, under 2 minutes, writes to a temp dir
//
// It needs root, the pinned runsc and the built images (make setup). It
// starts its own stasisd on a free loopback port with a temporary data dir,
// its own link-local range and netns prefix, and removes everything it made
// when it ends.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Config is one run's configuration.
type Config struct {
	Quick  bool
	Phases string // comma-separated phases to run; empty: all

	pauseSizes    []int         // -pause-sizes
	pauseReps     int           // -pause-reps
	densityBudget time.Duration // -density-budget
	OutDir        string        // where BENCHMARKS.md and benchmarks.json go
	// -density-active, -density-paused, -density-workers: a scaled-down
	// density run (to time the phase, or estimate the full one from it).
	densityActive, densityPaused, densityWorkers int

	RepoRoot  string
	Stasisd   string
	Agent     string
	Runsc     string
	ImagesDir string
	TempDir   string // data dirs, bundles, checkpoint images

	Subnet      string // stasisd's --subnet
	NetnsPrefix string // stasisd's --netns-prefix
	WarmSubnet  string // a second stasisd with --warm-pause-window (the warm tier)
	WarmPrefix  string
	RawSubnet   string // the baseline's links
	RawPrefix   string
	// The cluster phase's two stasisd nodes: each its own range and prefix.
	ClusterSubnets  [2]string
	ClusterPrefixes [2]string

	CreateReps    int
	ExecReps      int
	Exec1MBReps   int
	FileSizes     []int64 // bytes
	FileReps      []int
	PauseSizesMiB []int
	PauseReps     []int
	// ColdOnly runs only stasis's cold resume and the raw restore
	// --background --direct of the pause phase (for development: the rest
	// of the phase, and the plain cold restore, take most of its time).
	ColdOnly bool
	// The network phase: download size and repetitions.
	NetDownloadMiB  int
	NetDownloadReps int
	NetGetReps      int // small GETs per kind and side
	PreviewReps     int
	WakeReps        int
	MaxActive       int
	MaxPaused       int
	RawIdle         int           // raw containers for the idle-memory baseline
	DensityBudget   time.Duration // max time to fill up with active, and again with paused, sandboxes
	// DensityWorkers is how many paused sandboxes are created-and-paused at
	// once while the paused phase fills up.
	DensityWorkers int
	// MinMemAvailable: the density phase stops adding sandboxes once the
	// host's MemAvailable is below it (other work shares the host).
	MinMemAvailable int64
	// DensityLarge (opt in: -density-large) raises the density phase's
	// bounds to 300 active and 2,000 paused sandboxes; it takes 20-40 min.
	DensityLarge bool
	Settle       time.Duration // idle time before measuring idle memory/CPU
	// IdleCPUWindow is how long idle CPU is measured: long enough to
	// cover stasisd's 10 s health and dead-sandbox checks.
	IdleCPUWindow time.Duration
	// PauseSettle is how long both sandboxes have run since their last
	// restore before a cold pause is measured: right after a restore gVisor
	// checkpoints memory much faster (measured: 1 GB in 0.6 s instead of
	// 1.6 s), which would favour whichever side was restored last.
	PauseSettle time.Duration

	Log io.Writer
}

// defaults fills what the flags left empty.
func (c *Config) defaults() error {
	if c.RepoRoot == "" {
		r, err := repoRoot()
		if err != nil {
			return err
		}
		c.RepoRoot = r
	}
	if c.Runsc == "" {
		c.Runsc = envOr("STASIS_RUNSC", filepath.Join(c.RepoRoot, ".cache", "runsc", "bin", "runsc"))
	}
	if c.ImagesDir == "" {
		c.ImagesDir = envOr("STASIS_IMAGES_DIR", filepath.Join(c.RepoRoot, ".cache", "images"))
	}
	if c.TempDir == "" {
		c.TempDir = os.TempDir()
	}
	if c.Log == nil {
		c.Log = os.Stderr
	}
	if c.DensityLarge && c.Subnet == "" {
		// 512 links (a /30 each) for 300 active sandboxes; 169.254.232-239
		// is used by no test (see internal/testenv's slots).
		c.Subnet = "169.254.232.0/21"
	}
	if c.Quick {
		c.setQuick()
	} else {
		c.setFull()
	}
	if c.DensityLarge {
		c.MaxActive, c.MaxPaused = 300, 2000
		c.DensityBudget = 30 * time.Minute
		c.DensityWorkers = 4
	}
	if c.densityBudget > 0 {
		c.DensityBudget = c.densityBudget
	}
	if c.densityActive > 0 {
		c.MaxActive = c.densityActive
	}
	if c.densityPaused > 0 {
		c.MaxPaused = c.densityPaused
	}
	if c.densityWorkers > 0 {
		c.DensityWorkers = c.densityWorkers
	}
	if c.DensityWorkers == 0 {
		c.DensityWorkers = 2
	}
	if c.MinMemAvailable == 0 {
		c.MinMemAvailable = 3 << 30
	}
	if len(c.pauseSizes) > 0 {
		c.PauseSizesMiB = c.pauseSizes
		reps := c.PauseReps[len(c.PauseReps)-1]
		if c.pauseReps > 0 {
			reps = c.pauseReps
		}
		c.PauseReps = make([]int, len(c.pauseSizes))
		for i := range c.PauseReps {
			c.PauseReps[i] = reps
		}
	}
	for _, p := range []*string{&c.Stasisd, &c.Agent, &c.Runsc, &c.ImagesDir, &c.TempDir} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	// runsc refuses a rootfs reached through a symlink (stasisd resolves its
	// images dir the same way).
	if resolved, err := filepath.EvalSymlinks(c.ImagesDir); err == nil {
		c.ImagesDir = resolved
	}
	return nil
}

func (c *Config) setFull() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.Subnet, "169.254.244.0/23")
	def(&c.NetnsPrefix, "sbnch")
	def(&c.WarmSubnet, "169.254.246.0/24")
	def(&c.WarmPrefix, "sbwarm")
	def(&c.RawSubnet, "169.254.247.0/24")
	def(&c.RawPrefix, "sbraw")
	c.ClusterSubnets = [2]string{"169.254.252.0/24", "169.254.253.0/24"}
	c.ClusterPrefixes = [2]string{"sbcla", "sbclb"}
	c.CreateReps = 15
	c.ExecReps = 50
	c.Exec1MBReps = 20
	c.FileSizes = []int64{1 << 20, 100 << 20}
	c.FileReps = []int{20, 8}
	c.PauseSizesMiB = []int{10, 200, 1024}
	c.PauseReps = []int{8, 6, 4}
	c.NetDownloadMiB, c.NetDownloadReps = 100, 5
	c.NetGetReps = 50
	c.PreviewReps = 200
	c.WakeReps = 5
	c.MaxActive = 100 // 128 links fit in Subnet's /23
	c.MaxPaused = 500
	c.RawIdle = 5
	c.Settle = 5 * time.Second
	c.IdleCPUWindow = 30 * time.Second
	c.PauseSettle = 10 * time.Second
	c.DensityBudget = 150 * time.Second
}

// setQuick: tiny sizes, 2-3 repetitions; only proves the harness works.
func (c *Config) setQuick() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.Subnet, "169.254.248.0/23")
	def(&c.NetnsPrefix, "sbqk")
	def(&c.WarmSubnet, "169.254.250.0/24")
	def(&c.WarmPrefix, "sbqwrm")
	def(&c.RawSubnet, "169.254.251.0/24")
	def(&c.RawPrefix, "sbqraw")
	c.ClusterSubnets = [2]string{"169.254.254.0/25", "169.254.254.128/25"}
	c.ClusterPrefixes = [2]string{"sbqca", "sbqcb"}
	c.CreateReps = 2
	c.ExecReps = 3
	c.Exec1MBReps = 2
	c.FileSizes = []int64{64 << 10, 1 << 20}
	c.FileReps = []int{2, 2}
	c.PauseSizesMiB = []int{4}
	c.PauseReps = []int{2}
	c.NetDownloadMiB, c.NetDownloadReps = 8, 2
	c.NetGetReps = 5
	c.PreviewReps = 10
	c.WakeReps = 2
	c.MaxActive = 3
	c.MaxPaused = 5
	c.RawIdle = 2
	c.Settle = 500 * time.Millisecond
	c.IdleCPUWindow = time.Second
	c.DensityBudget = 30 * time.Second
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/stasis-sandbox/stasis\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run stasis-bench inside the stasis repository (go.mod not found)")
		}
		dir = parent
	}
}

// buildBinaries builds stasisd and stasis-agent from the tree into a temp
// dir, so a plain `go run` measures the current code.
func buildBinaries(ctx context.Context, cfg *Config) (dir string, err error) {
	dir, err = os.MkdirTemp(cfg.TempDir, "stasis-bench-bin-")
	if err != nil {
		return "", err
	}
	for _, name := range []string{"stasisd", "stasis-agent"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(dir, name), "./cmd/"+name)
		if name == "stasis-agent" { // its runtime patched, as make build does
			cmd = exec.CommandContext(ctx, "scripts/build-agent.sh", filepath.Join(dir, name))
		}
		cmd.Dir = cfg.RepoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
	}
	return dir, nil
}

func main() {
	var cfg Config
	flag.BoolVar(&cfg.Quick, "quick", false, "harness check: tiny sizes, 2-3 repetitions, under 2 minutes; writes to a temp dir unless -out is given")
	flag.StringVar(&cfg.OutDir, "out", "", "directory for BENCHMARKS.md and benchmarks.json (default: docs/ of the repo; a temp dir with -quick)")
	flag.StringVar(&cfg.Stasisd, "stasisd", "", "stasisd binary (default: build the current tree)")
	flag.StringVar(&cfg.Agent, "agent", "", "static stasis-agent binary (default: built with stasisd)")
	flag.StringVar(&cfg.Runsc, "runsc", "", "runsc binary (default $STASIS_RUNSC, else .cache/runsc/bin/runsc)")
	flag.StringVar(&cfg.ImagesDir, "images-dir", "", "built images (default $STASIS_IMAGES_DIR, else .cache/images)")
	flag.StringVar(&cfg.TempDir, "tmp", "", "where data dirs and checkpoint images go (default $TMPDIR or /tmp; needs a few GB)")
	flag.StringVar(&cfg.Subnet, "subnet", "", "link-local range for the stasisd under test (default 169.254.244.0/23; quick 169.254.248.0/23)")
	flag.StringVar(&cfg.NetnsPrefix, "netns-prefix", "", "netns prefix for the stasisd under test")
	flag.StringVar(&cfg.WarmSubnet, "warm-subnet", "", "link-local range for the second stasisd, run with --warm-pause-window (default 169.254.246.0/24; quick 169.254.250.0/24)")
	flag.StringVar(&cfg.WarmPrefix, "warm-netns-prefix", "", "netns prefix for the warm-tier stasisd")
	flag.StringVar(&cfg.RawSubnet, "raw-subnet", "", "link-local range for the raw runsc baseline (default 169.254.247.0/24; quick 169.254.251.0/24)")
	flag.StringVar(&cfg.RawPrefix, "raw-netns-prefix", "", "netns prefix for the raw runsc baseline")
	flag.StringVar(&cfg.Phases, "phases", "", "only these phases, comma-separated (create, exec, files, pause-resume, network, e2b, density, snapshot-upload, cluster), for development; writes to a temp dir unless -out is given")
	flag.IntVar(&cfg.pauseReps, "pause-reps", 0, "repetitions of each -pause-sizes size (default: the full run's for 1 GB), for development")
	flag.BoolVar(&cfg.ColdOnly, "cold-only", false, "pause phase: only stasis's cold resume and raw runsc restore --background --direct (no plain restore), for development")
	pauseSizes := flag.String("pause-sizes", "", "pause/resume sizes in MB, comma-separated (default 10,200,1024), for development")
	flag.DurationVar(&cfg.densityBudget, "density-budget", 0, "time budget of each of the density phase's fills, active and paused (default 150s; 30m with -density-large)")
	flag.IntVar(&cfg.densityActive, "density-active", 0, "the density phase's bound on idle active sandboxes (default 100; 300 with -density-large)")
	flag.IntVar(&cfg.densityPaused, "density-paused", 0, "the density phase's bound on paused sandboxes (default 500; 2,000 with -density-large)")
	flag.IntVar(&cfg.densityWorkers, "density-workers", 0, "how many paused sandboxes the density phase creates and pauses at once (default 2; 4 with -density-large)")
	flag.BoolVar(&cfg.DensityLarge, "density-large", false, "density phase at scale: up to 300 idle active and 2,000 paused stasis/minimal sandboxes (20-40 minutes more; its stasisd gets -subnet 169.254.232.0/21 unless given)")
	render := flag.String("render", "", "only rewrite BENCHMARKS.md from this benchmarks.json (no measuring)")
	flag.Parse()
	if *render != "" {
		if err := renderFromJSON(*render); err != nil {
			fmt.Fprintln(os.Stderr, "stasis-bench:", err)
			os.Exit(1)
		}
		return
	}

	if *pauseSizes != "" {
		for _, f := range strings.Split(*pauseSizes, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				fmt.Fprintln(os.Stderr, "stasis-bench: bad -pause-sizes:", *pauseSizes)
				os.Exit(2)
			}
			cfg.pauseSizes = append(cfg.pauseSizes, n)
		}
	}
	if err := mainErr(&cfg); err != nil {
		fmt.Fprintln(os.Stderr, "stasis-bench:", err)
		os.Exit(1)
	}
}

func mainErr(cfg *Config) error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root (sandboxes need it)")
	}
	if err := cfg.defaults(); err != nil {
		return err
	}
	// Cleanup must run however the run ends: a closed output pipe (| head)
	// must not kill the process, and SIGHUP/SIGINT/SIGTERM cancel the run
	// so the deferred cleanups delete sandboxes and links.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	if cfg.OutDir == "" {
		if cfg.Quick || cfg.Phases != "" || len(cfg.pauseSizes) > 0 {
			d, err := os.MkdirTemp("", "stasis-bench-out-")
			if err != nil {
				return err
			}
			cfg.OutDir = d
		} else {
			cfg.OutDir = filepath.Join(cfg.RepoRoot, "docs")
		}
	}
	if cfg.Stasisd == "" || cfg.Agent == "" {
		fmt.Fprintln(cfg.Log, "building stasisd and stasis-agent from the tree ...")
		dir, err := buildBinaries(ctx, cfg)
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if cfg.Stasisd == "" {
			cfg.Stasisd = filepath.Join(dir, "stasisd")
		}
		if cfg.Agent == "" {
			cfg.Agent = filepath.Join(dir, "stasis-agent")
		}
	}
	rep, err := Run(ctx, cfg)
	if rep != nil {
		if werr := writeReport(cfg.OutDir, rep); werr != nil {
			return werr
		}
		fmt.Fprintf(cfg.Log, "wrote %s and %s\n", filepath.Join(cfg.OutDir, "BENCHMARKS.md"), filepath.Join(cfg.OutDir, "benchmarks.json"))
	}
	return err
}
