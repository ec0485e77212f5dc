package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/images"
	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// BenchmarkCreateFloor measures the floor under a cold create's "agent
// ready" step: the time from `runsc run --detach` returning until a TCP
// request to the sandbox's address is answered, on the bundle the bench's
// baseline writes (the driver's), for these inits alternately (c, go and agent
// unless STASIS_FLOOR_INITS says otherwise):
//
//	c      a static C program that answers one line
//	cthreads  the same starting 5 idle threads first (Go starts about as many)
//	cthread2  the same starting 2 (the agent's Go runtime starts 2 before it listens)
//	csig   the C init installing a handler for every signal first, as Go's runtime does
//	cgolike  csig starting 2 idle threads too: Go's start without Go
//	go     a static Go program doing the same with net
//	gohttp the same linked with net/http and os/user (size, package inits)
//	agent  the stasis-agent answering /health (stasisd's WaitReady)
//	agentb the same with the agent binary STASIS_AGENT_B (an A/B of two agents)
//	agentl the agent, waited for until its socket accepts (WaitListening) instead of its answer
//
// STASIS_FLOOR_INITS picks the inits, in order (comma-separated); "init+VAR=value" adds to an
// init's environment, "init+vcpu=n" sets its CPU quota (default 1, the
// bench's) and "init+image=stasis/base" its root filesystem (default
// stasis/minimal). It also logs the cgroup's CPU throttling around the wait.
//
// Development only (benchmarks do not run in `go test`); it ignores b.N and
// reports medians over STASIS_FLOOR_REPS (default 12) rounds:
//
//	STASIS_RUNSC=$PWD/.cache/runsc/bin/runsc STASIS_IMAGES_DIR=$PWD/.cache/images STASIS_AGENT=$PWD/bin/stasis-agent \
//	  go test ./cmd/stasis-bench -run '^$' -bench CreateFloor -benchtime 1x -v
func BenchmarkCreateFloor(b *testing.B) {
	testenv.RequireRoot(b)
	reps := 12
	if s := os.Getenv("STASIS_FLOOR_REPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		reps = n
	}
	tmp := b.TempDir()
	cfg := &Config{
		Quick: true, RepoRoot: testenv.RepoRoot(), TempDir: tmp, OutDir: tmp,
		// Its own links, clear of testenv's slots and the bench's ranges.
		RawSubnet: "169.254.243.0/24", RawPrefix: "sbfloor",
		Runsc: os.Getenv("STASIS_RUNSC"), ImagesDir: os.Getenv("STASIS_IMAGES_DIR"), Agent: os.Getenv("STASIS_AGENT"),
	}
	if err := cfg.defaults(); err != nil {
		b.Fatal(err)
	}
	if cfg.Agent == "" {
		b.Fatal("set STASIS_AGENT to the stasis-agent binary (make build: bin/stasis-agent)")
	}
	inits := map[string]string{"agent": cfg.Agent, "agentb": os.Getenv("STASIS_AGENT_B"), "agentl": cfg.Agent, "c": filepath.Join(tmp, "answer-c"), "cthreads": filepath.Join(tmp, "answer-cthreads"), "cthread2": filepath.Join(tmp, "answer-cthread2"), "csig": filepath.Join(tmp, "answer-csig"), "cgolike": filepath.Join(tmp, "answer-cgolike"), "go": filepath.Join(tmp, "answer-go"), "gohttp": filepath.Join(tmp, "answer-gohttp")}
	build := func(cmd *exec.Cmd) {
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %v: %s", cmd.Args, err, out)
		}
	}
	build(exec.Command("gcc", "-static", "-O2", "-o", inits["c"], "testdata/floor/answer.c"))
	build(exec.Command("gcc", "-static", "-O2", "-DTHREADS=5", "-pthread", "-o", inits["cthreads"], "testdata/floor/answer.c"))
	build(exec.Command("gcc", "-static", "-O2", "-DTHREADS=2", "-pthread", "-o", inits["cthread2"], "testdata/floor/answer.c"))
	build(exec.Command("gcc", "-static", "-O2", "-DSIGACTIONS", "-o", inits["csig"], "testdata/floor/answer.c"))
	build(exec.Command("gcc", "-static", "-O2", "-DSIGACTIONS", "-DTHREADS=2", "-pthread", "-o", inits["cgolike"], "testdata/floor/answer.c"))
	for _, k := range []string{"go", "gohttp"} {
		gob := exec.Command("go", "build", "-trimpath", "-o", inits[k], "./testdata/floor/answer"+k)
		gob.Env = append(os.Environ(), "CGO_ENABLED=0") // as the agent is built
		build(gob)
	}

	e, err := newRawEnv(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer e.close()
	imgs := &bench{imgs: images.NewManager(cfg.ImagesDir)}
	ctx := context.Background()
	order := []string{"c", "go", "agent"}
	if s := os.Getenv("STASIS_FLOOR_INITS"); s != "" {
		order = strings.Split(s, ",") // e.g. go,go+GOMAXPROCS=1: an init with env added
	}
	run, ready := map[string]*durations{}, map[string]*durations{}
	throttled := map[string][]string{}
	for _, k := range order {
		run[k], ready[k] = &durations{}, &durations{}
	}
	b.ResetTimer()
	for i := 0; i < reps; i++ {
		for _, k := range order {
			// The init is the bind-mounted /.stasis/agent, as for stasisd.
			name, extra, _ := strings.Cut(k, "+")
			e.agent = inits[name]
			if e.agent == "" {
				b.Fatalf("init %s: no binary (agentb needs STASIS_AGENT_B)", name)
			}
			isAgent := name == "agent" || name == "agentb" || name == "agentl"
			var env []string
			if isAgent {
				env = rawAgentEnv(1024)
			}
			vcpu := 1 // the bench's stasis/minimal sandboxes'
			image := tmplMinimal
			for _, kv := range strings.Split(extra, "+") {
				if v, ok := strings.CutPrefix(kv, "image="); ok {
					image = v
				} else if v, ok := strings.CutPrefix(kv, "vcpu="); ok {
					if vcpu, err = strconv.Atoi(v); err != nil {
						b.Fatal(err)
					}
				} else if kv != "" {
					env = append(env, kv)
				}
			}
			rootfs := imgs.rootfs(image)
			if rootfs == "" {
				b.Fatalf("no %s image in %s", image, cfg.ImagesDir)
			}
			rb, err := e.prepare(ctx, rootfs, []string{runtime.AgentMountPath}, 1024, vcpu, env...)
			if err != nil {
				b.Fatal(err)
			}
			d, err := timed(func() error { return rb.start(ctx) })
			if err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			before := cpuThrottled(rb.ID)
			if name == "agentl" {
				wctx, cancel := context.WithTimeout(ctx, time.Minute)
				err = rawAgent(rb).WaitListening(wctx)
				cancel()
			} else if isAgent {
				err = waitRawAgent(ctx, rb)
			} else {
				err = waitLine(ctx, netip.AddrPortFrom(rb.addr, runtime.AgentPort).String())
			}
			if err != nil {
				b.Fatalf("%s: %v", k, err)
			}
			run[k].add(d)
			ready[k].add(time.Since(t0))
			throttled[k] = append(throttled[k], before+">"+cpuThrottled(rb.ID))
			if err := rb.destroy(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	for _, k := range order {
		r, a := run[k].stat(), ready[k].stat()
		b.Logf("%-6s runsc run --detach p50 %6.1f ms   returned -> answered p50 %5.1f ms  (min %5.1f, max %5.1f, n=%d) %v",
			k, r.Median, a.Median, a.Min, a.Max, a.N, a.Values)
		b.ReportMetric(a.Median, k+"-ready-ms")
		b.Logf("%-6s CPU quota throttling of its cgroup, when runsc returned > when answered (periods/ms): %v", k, throttled[k])
	}
}

// waitLine polls addr every 2 ms (as agentclient.WaitReady does) until a
// connection to it yields a line.
func waitLine(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			_, err = bufio.NewReader(c).ReadString('\n')
			c.Close()
			if err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never answered: %w (last: %v)", addr, ctx.Err(), err)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// cpuThrottled is how often and how long the CPU quota throttled container
// id's cgroup so far ("n/ms"; cgroup v1 or v2), or "?" when unknown.
func cpuThrottled(id string) string {
	for _, dir := range []string{"/sys/fs/cgroup/cpu", "/sys/fs/cgroup"} {
		b, err := os.ReadFile(filepath.Join(dir, rawCgroupParent, id, "cpu.stat"))
		if err != nil {
			continue
		}
		var n, ns float64
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) != 2 {
				continue
			}
			v, _ := strconv.ParseFloat(f[1], 64)
			switch f[0] {
			case "nr_throttled":
				n = v
			case "throttled_time": // v1, ns
				ns = v
			case "throttled_usec": // v2
				ns = v * 1000
			}
		}
		return fmt.Sprintf("%.0f/%.0f", n, ns/1e6)
	}
	return "?"
}
