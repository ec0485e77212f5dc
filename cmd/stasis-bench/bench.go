package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
	"github.com/stasis-sandbox/stasis/internal/images"
	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/testnet"
)

const (
	tmplMinimal = "stasis/minimal"
	tmplBase    = "stasis/base"
	mib         = 1 << 20
)

// sleepInit is the baseline's trivial init: it just stays alive.
var sleepInit = []string{"/bin/sleep", "2147483647"}

// holdScript allocates and touches argv[1] MiB (one non-zero byte per page,
// so checkpoint cannot skip the pages as zero), writes its PID to
// /tmp/ready and sleeps. It is the memory footprint of the pause/resume
// measurements, for stasis (started by the agent) and for the baseline (as
// init).
const holdScript = `import os, sys, time
n = int(sys.argv[1]) << 20
b = bytearray(n)
for i in range(0, n, 4096):
    b[i] = 1
with open("/tmp/ready.tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename("/tmp/ready.tmp", "/tmp/ready")
while True:
    time.sleep(3600)
`

// holderStart bounds the memory holder's start: touching 1 GB from python
// took over 2 minutes on this host under a load of 50-70.
const holderStart = 5 * time.Minute

// loadSettle bounds the wait for a lazy restore's memory load (and stasis's
// check of it) to end after the first command.
const loadSettle = 2 * time.Minute

// aliveCmd succeeds only if the memory holder is still running.
const aliveCmd = `kill -0 "$(cat /tmp/ready)"`

// startHolder starts the memory holder in stasis sandbox bx, as a user
// would: hold.py written, then started in the background through exec. It
// returns once the holder has touched its memory.
func (bx *box) startHolder(ctx context.Context, sizeMiB int) error {
	if err := bx.writeFile(ctx, "/tmp/hold.py", []byte(holdScript)); err != nil {
		return err
	}
	if _, err := bx.exec(ctx, fmt.Sprintf("python3 /tmp/hold.py %d >/dev/null 2>&1 &", sizeMiB)); err != nil {
		return err
	}
	if err := waitFor(ctx, holderStart, func() error { _, err := bx.exec(ctx, aliveCmd); return err }); err != nil {
		return fmt.Errorf("memory holder did not start: %w", err)
	}
	return nil
}

// rawAgentToken is the agent secret of the baseline's agent containers.
const rawAgentToken = "stasis-bench-raw"

// rawAgentEnv configures the agent as init of a baseline container as the
// gVisor driver does for a stasis/base sandbox of memMiB.
func rawAgentEnv(memMiB int) []string {
	return []string{agentproto.EnvTokenSHA256 + "=" + agentproto.TokenHashHex(rawAgentToken), "STASIS_DEFAULT_USER=user", "STASIS_DEFAULT_WORKDIR=/home/user",
		"STASIS_MEMORY_LIMIT_MIB=" + strconv.Itoa(memMiB), "STASIS_VCPU=1", "GOMAXPROCS=1", "STASIS_AGENT_GOMAXPROCS=1"}
}

// rawAgent is a client of the agent running as init of baseline container rb.
func rawAgent(rb *rawBox) *agentclient.Client {
	return agentclient.New(netip.AddrPortFrom(rb.addr, runtime.AgentPort).String(), rawAgentToken)
}

// waitReady waits (a minute at most) until agent c answers.
func waitReady(ctx context.Context, c *agentclient.Client) error {
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return c.WaitReady(wctx)
}

// waitRawAgent waits until the agent of baseline container rb answers.
func waitRawAgent(ctx context.Context, rb *rawBox) error {
	c := rawAgent(rb)
	defer c.CloseIdleConnections()
	return waitReady(ctx, c)
}

// startHolderViaAgent starts the memory holder in baseline container rb
// through its agent, as stasis does: hold.py written, then started in the
// background by a shell of the default user.
func startHolderViaAgent(ctx context.Context, rb *rawBox, size int) error {
	c := rawAgent(rb)
	defer c.CloseIdleConnections()
	if err := waitReady(ctx, c); err != nil {
		return err
	}
	if err := c.WriteFile(ctx, "/tmp/hold.py", strings.NewReader(holdScript), int64(len(holdScript))); err != nil {
		return err
	}
	var stderr bytes.Buffer
	st, err := c.Run(ctx, agentclient.ExecRequest{Command: fmt.Sprintf("python3 /tmp/hold.py %d >/dev/null 2>&1 &", size)}, io.Discard, &stderr)
	if err == nil && st.ExitCode != 0 {
		err = fmt.Errorf("starting the holder: exit %d: %s", st.ExitCode, stderr.String())
	}
	return err
}

// bench is one run in progress.
type bench struct {
	cfg   *Config
	srv   *server
	warm  *server // nil when stasisd has no warm tier
	raw   *rawEnv
	rep   *Report
	imgs  *images.Manager
	seq   atomic.Int64
	pause map[int]*pauseResults // by size in MiB
	inet  *testnet.Internet     // the network phase's test internet; nil without it
	// inetCAFile holds the test internet's CA for stasisd's --egress-ca-file.
	inetCAFile string
}

// Run runs every measurement and returns the report. A phase that fails is
// recorded in the report's problems and the run goes on; the returned error
// lists the problems.
func Run(ctx context.Context, cfg *Config) (*Report, error) {
	start := time.Now()
	b := &bench{cfg: cfg, imgs: images.NewManager(cfg.ImagesDir)}
	b.rep = &Report{
		SchemaVersion: 1,
		Date:          start.UTC().Format(time.RFC3339),
		Mode:          map[bool]string{true: "quick", false: "full"}[cfg.Quick],
		Command:       strings.Join(append([]string{"stasis-bench"}, os.Args[1:]...), " "),
		Machine:       machineInfo(),
		Versions:      versions(ctx, cfg),
		Phases:        map[string]float64{},
	}
	b.rep.Machine.BusyStart = round(hostCPUPercent(ctx, time.Second))
	b.logf("stasis-bench %s mode: %d CPUs, %d MiB, runsc %s", b.rep.Mode, b.rep.Machine.NProc, b.rep.Machine.MemTotalMiB, b.rep.Versions.Runsc)
	// Two runs with the same network prefixes would tear down each other's
	// links (stasisd and the baseline remove orphans with their prefix at
	// start): one at a time per prefix.
	unlock, err := lockPrefix(ctx, cfg, b.logf)
	if err != nil {
		return nil, err
	}
	defer unlock()
	for _, t := range []string{tmplMinimal, tmplBase} {
		if _, err := b.imgs.Get(t); err != nil {
			return nil, fmt.Errorf("image %s is not built (run make setup): %w", t, err)
		}
	}
	// The warm tier (paused sandboxes kept frozen in RAM for a while, with
	// their snapshot on disk) is a server option: the main stasisd has it
	// off, a second one has it on.
	hasWarm := serverHasFlag(cfg.Stasisd, "warm-pause-window")
	var coldFlags []string
	if hasWarm {
		coldFlags = []string{"--warm-pause-window", "0"}
	}
	if serverHasFlag(cfg.Stasisd, "max-sandboxes-per-team") {
		// The density phase holds more than the default 50 running ones.
		coldFlags = append(coldFlags, "--max-sandboxes-per-team", "0")
	}
	// The network phase's test internet: stasisd's resolver forwards there.
	coldFlags = append(coldFlags, b.startInternet()...)
	if b.inet != nil {
		defer b.inet.Close()
	}
	if b.inetCAFile != "" {
		defer os.Remove(b.inetCAFile)
	}
	srv, err := startServer(ctx, cfg, cfg.Subnet, cfg.NetnsPrefix, coldFlags...)
	if err != nil {
		return nil, err
	}
	b.srv = srv
	defer srv.stop()
	if hasWarm {
		warmFlags := []string{"--warm-pause-window", "1h"}
		if serverHasFlag(cfg.Stasisd, "dns-upstream") {
			warmFlags = append(warmFlags, "--dns-upstream", "127.0.0.1:1") // its sandboxes resolve nothing
		}
		warm, err := startServer(ctx, cfg, cfg.WarmSubnet, cfg.WarmPrefix, warmFlags...)
		if err != nil {
			return nil, fmt.Errorf("warm-tier server: %w", err)
		}
		b.warm = warm
		defer warm.stop()
	} else {
		b.logf("stasisd has no --warm-pause-window: no warm-tier figures")
	}
	raw, err := newRawEnv(cfg)
	if err != nil {
		return nil, err
	}
	b.raw = raw
	defer raw.close()

	phases := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"create", b.benchCreate},
		{"exec", b.benchExec},
		{"files", b.benchFiles},
		{"pause-resume", b.benchPause},
		{"network", b.benchNetwork},
		{"e2b", b.benchE2B},
		{"density", b.benchDensity},
		{"snapshot-upload", b.benchSnapshotUpload},
		{"cluster", b.benchCluster},
	}
	for _, p := range phases {
		if cfg.Phases != "" && !slices.Contains(strings.Split(cfg.Phases, ","), p.name) {
			continue
		}
		if ctx.Err() != nil {
			b.problem("interrupted before %s", p.name)
			break
		}
		t0 := time.Now()
		b.logf("== %s", p.name)
		if err := p.fn(ctx); err != nil {
			b.problem("%s: %v", p.name, err)
			b.logf("%s failed: %v", p.name, err)
		}
		b.rep.Phases[p.name] = roundSecs(time.Since(t0))
	}
	b.rep.GoBenchmarks = findGoBenchmarks(cfg.RepoRoot)
	b.rep.DurationSeconds = roundSecs(time.Since(start))
	b.rep.Machine.LoadEnd = loadavg()
	b.logf("done in %s", time.Since(start).Round(time.Second))
	if len(b.rep.Problems) > 0 {
		return b.rep, fmt.Errorf("%d problem(s): %s", len(b.rep.Problems), strings.Join(b.rep.Problems, "; "))
	}
	return b.rep, nil
}

// lockPrefix takes an flock named after the run's netns prefix, waiting
// while another run holds it.
func lockPrefix(ctx context.Context, cfg *Config, logf func(string, ...any)) (func(), error) {
	path := filepath.Join(os.TempDir(), "stasis-bench-"+cfg.NetnsPrefix+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			return func() { f.Close() }, nil
		}
		if i == 0 {
			logf("another stasis-bench run holds %s; waiting", path)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func roundSecs(d time.Duration) float64 {
	return float64(d.Round(100*time.Millisecond)) / float64(time.Second)
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.cfg.Log, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func (b *bench) problem(format string, args ...any) {
	b.rep.Problems = append(b.rep.Problems, fmt.Sprintf(format, args...))
}

func (b *bench) add(r Row) {
	if r.Status == "" {
		r.Status = "ok"
	}
	if r.Ratio == nil {
		r.Ratio = ratio(r.Stasis, r.Raw)
	}
	b.rep.Rows = append(b.rep.Rows, r)
	var s, rw string
	if r.Stasis != nil {
		s = fmt.Sprintf("stasis %.1f/%.1f %s", r.Stasis.Median, r.Stasis.P95, r.Stasis.Unit)
	}
	if r.Raw != nil {
		rw = fmt.Sprintf("raw %.1f/%.1f %s", r.Raw.Median, r.Raw.P95, r.Raw.Unit)
	}
	ratio := ""
	if r.Ratio != nil {
		ratio = fmt.Sprintf("x%.2f", *r.Ratio)
	}
	b.logf("  %-52s %-28s %-28s %s %s", r.Name, s, rw, ratio, r.Status)
}

func (b *bench) name(prefix string) string {
	return fmt.Sprintf("bench-%s-%d", prefix, b.seq.Add(1))
}

func (b *bench) rootfs(template string) string {
	img, err := b.imgs.Get(template)
	if err != nil {
		return ""
	}
	return img.RootFS
}

// timed runs f and returns how long it took.
func timed(f func() error) (time.Duration, error) {
	t0 := time.Now()
	err := f()
	return time.Since(t0), err
}

func opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 5*time.Minute)
}

// ---- create ----

func (b *bench) benchCreate(ctx context.Context) error {
	for _, tmpl := range []string{tmplMinimal, tmplBase} {
		var sCreate, sDelete, rCreate, rDelete, rNet, rUnlimited durations
		var sSteps steps
		for i := 0; i < b.cfg.CreateReps; i++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			var bx *box
			d, err := timed(func() (err error) {
				bx, err = b.srv.create(ctx, b.name("create"), tmpl, 0)
				return err
			})
			if err != nil {
				return err
			}
			sCreate.add(d)
			sSteps.add(b.srv.lastSteps("sandbox created", bx.ID))
			d, err = timed(func() error { return bx.delete(ctx) })
			if err != nil {
				return err
			}
			sDelete.add(d)

			var rb *rawBox
			d, err = timed(func() (err error) {
				rb, err = b.raw.prepare(ctx, b.rootfs(tmpl), sleepInit, 1024, 1)
				return err
			})
			if err != nil {
				return err
			}
			rNet.add(d)
			d, err = timed(func() error { return rb.start(ctx) })
			if err != nil {
				rb.destroy(ctx)
				return err
			}
			rCreate.add(d)
			d, err = timed(func() error { return rb.destroy(ctx) })
			if err != nil {
				return err
			}
			rDelete.add(d)

			// The same without a CPU quota, for the informative row.
			if rb, err = b.raw.prepare(ctx, b.rootfs(tmpl), sleepInit, 1024, 0); err != nil {
				return err
			}
			d, err = timed(func() error { return rb.start(ctx) })
			if err != nil {
				rb.destroy(ctx)
				return err
			}
			rUnlimited.add(d)
			if err := rb.destroy(ctx); err != nil {
				return err
			}
		}
		b.add(Row{Group: "create", Name: "create (cold) from " + tmpl,
			Stasis: sCreate.stat(), StasisOp: "POST /sandboxes until 201 (agent answering)",
			Raw: rCreate.stat(), RawOp: "runsc run --detach (sleep as init)",
			Extra: mergeExtra(map[string]any{"raw_link_and_bundle_ms": rNet.stat()}, sSteps.extra()),
			Note:  "raw excludes building the netns/veth and bundle (extra.raw_link_and_bundle_ms); stasis includes taking its link (a spare built ahead, renamed) and writing its bundle; stasis_* are the steps stasisd logs (link and bundle, runsc run, runsc returned until the agent answers, the store's record)"})
		b.add(Row{Group: "create", Name: "create (cold) from " + tmpl + ", against runsc with no CPU quota",
			Stasis: sCreate.stat(), StasisOp: "the row above's",
			Raw: rUnlimited.stat(), RawOp: "runsc run --detach (sleep as init) with no CPU quota in the bundle",
			Note: "informative, not a goal: stasis boots with its quota lifted (see the section's introduction), so this shows what stasis adds to an unthrottled boot"})
		b.add(Row{Group: "create", Name: "delete (active) " + tmpl,
			Stasis: sDelete.stat(), StasisOp: "DELETE /sandboxes/{id}",
			Raw: rDelete.stat(), RawOp: "runsc delete --force + wait for exit + link teardown"})
	}
	return b.benchCreateFromTemplate(ctx)
}

type templateJSON struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Error     string `json:"error_message"`
	SizeBytes int64  `json:"size_bytes"`
}

// benchCreateFromTemplate builds a template from stasis/minimal (booted and
// snapshotted by stasis) and creates sandboxes from it; the baseline
// restores a checkpoint of an idle container into new containers.
func (b *bench) benchCreateFromTemplate(ctx context.Context) error {
	const rowName = "create from a template snapshot (stasis/minimal)"
	var t templateJSON
	err := b.srv.do(ctx, "POST", "/templates", map[string]any{"name": b.name("tmpl"), "build_spec": map[string]string{"from": tmplMinimal}}, &t)
	if isAPIStatus(err, 404) || isAPIStatus(err, 405) {
		b.add(Row{Group: "create", Name: rowName, Status: "not_available",
			Note: "this stasisd has no templates (POST /templates answers " + err.Error() + ")"})
		return nil
	}
	if err != nil {
		return fmt.Errorf("create template: %w", err)
	}
	defer b.srv.do(context.WithoutCancel(ctx), "DELETE", "/templates/"+t.ID, nil, nil)
	t0 := time.Now()
	err = waitFor(ctx, 5*time.Minute, func() error {
		if err := b.srv.do(ctx, "GET", "/templates/"+t.ID, nil, &t); err != nil {
			return err
		}
		switch t.Status {
		case "ready":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("template build %s: %s", t.Status, t.Error)
		}
		return fmt.Errorf("template is %s", t.Status)
	})
	if err != nil {
		return err
	}
	buildTime := time.Since(t0)

	// Baseline images, each checkpointed once: an idle container with sleep
	// as init, and one with what the stasis sandbox runs (the agent as init,
	// answering).
	img := filepath.Join(b.raw.dir, "template-image")
	if err := b.rawTemplateImage(ctx, img, sleepInit, nil, nil); err != nil {
		return fmt.Errorf("baseline template image: %w", err)
	}
	defer os.RemoveAll(img)
	agentInit, agentEnv := []string{runtime.AgentMountPath}, rawAgentEnv(1024)
	agentImg := filepath.Join(b.raw.dir, "template-image-agent")
	if err := b.rawTemplateImage(ctx, agentImg, agentInit, agentEnv, waitRawAgent); err != nil {
		return fmt.Errorf("baseline template image with the agent: %w", err)
	}
	defer os.RemoveAll(agentImg)

	var sCreate, sFirst, rRestore, rFirst, aRestore durations
	var sSteps steps
	for i := 0; i < b.cfg.CreateReps; i++ {
		var bx *box
		t0 := time.Now()
		d, err := timed(func() (err error) { bx, err = b.srv.create(ctx, b.name("fromtmpl"), t.Name, 0); return err })
		if err != nil {
			return err
		}
		sCreate.add(d)
		if _, err := bx.exec(ctx, "true"); err != nil {
			return fmt.Errorf("first command in a sandbox from a template: %w", err)
		}
		sFirst.add(time.Since(t0))
		sSteps.add(b.srv.lastSteps("sandbox created from snapshot", bx.ID))
		if err := bx.delete(ctx); err != nil {
			return err
		}
		restore, first, err := b.rawFromImage(ctx, img, sleepInit, nil)
		if err != nil {
			return fmt.Errorf("raw restore of template image: %w", err)
		}
		rRestore.add(restore)
		rFirst.add(first)
		restore, _, err = b.rawFromImage(ctx, agentImg, agentInit, agentEnv)
		if err != nil {
			return fmt.Errorf("raw restore of template image with the agent: %w", err)
		}
		aRestore.add(restore)
	}
	b.add(Row{Group: "create", Name: rowName,
		Stasis: sCreate.stat(), StasisOp: "POST /sandboxes {from_template} until 201 (restored; the agent gets its own secret right after, and requests wait for that)",
		Raw: rRestore.stat(), RawOp: "runsc restore --detach of an idle container's checkpoint into a new container",
		Extra: mergeExtra(map[string]any{"template_build_s": roundSecs(buildTime), "template_snapshot_mib": round(float64(t.SizeBytes) / mib)}, sSteps.extra())})
	b.add(Row{Group: "create", Name: "create from a template snapshot, against runsc on the same sandbox (stasis/minimal)",
		Stasis: sCreate.stat(), StasisOp: "POST /sandboxes {from_template} until 201",
		Raw: aRestore.stat(), RawOp: "runsc restore --detach of a checkpoint of an idle container running what the stasis sandbox runs (stasis-agent as init, answering) into a new container"})
	b.add(Row{Group: "create", Name: "create from a template snapshot → first command OK (stasis/minimal)",
		Stasis: sFirst.stat(), StasisOp: "POST /sandboxes {from_template} + POST /exec true",
		Raw: rFirst.stat(), RawOp: "runsc restore --detach + runsc exec /bin/true"})
	return nil
}

// rawTemplateImage checkpoints a new stasis/minimal baseline container
// whose init is args (env added to its environment) into dir, once ready
// (if given) says it is ready, and makes the image durable.
func (b *bench) rawTemplateImage(ctx context.Context, dir string, args, env []string, ready func(context.Context, *rawBox) error) error {
	src, err := b.raw.prepare(ctx, b.rootfs(tmplMinimal), args, 1024, 1, env...)
	if err != nil {
		return err
	}
	defer src.destroy(context.WithoutCancel(ctx))
	if err := src.start(ctx); err != nil {
		return err
	}
	if ready != nil {
		if err := ready(ctx, src); err != nil {
			return err
		}
	}
	if err := src.checkpoint(ctx, dir); err != nil {
		return err
	}
	return syncTree(dir)
}

// rawFromImage restores img (a rawTemplateImage of the same args and env)
// into a new baseline container and runs /bin/true in it; it returns the
// time to the restore and to the command's end.
func (b *bench) rawFromImage(ctx context.Context, img string, args, env []string) (restore, first time.Duration, err error) {
	rb, err := b.raw.prepare(ctx, b.rootfs(tmplMinimal), args, 1024, 1, env...)
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		if derr := rb.destroy(context.WithoutCancel(ctx)); err == nil {
			err = derr
		}
	}()
	t0 := time.Now()
	if err := rb.restore(ctx, img); err != nil {
		return 0, 0, err
	}
	restore = time.Since(t0)
	if err := rb.exec(ctx, nil, nil, "/bin/true"); err != nil {
		return 0, 0, err
	}
	return restore, time.Since(t0), nil
}

// idlePair starts an idle stasis/minimal sandbox and the equivalent raw
// runsc container, for measurements that compare the two side by side.
func (b *bench) idlePair(ctx context.Context, name string) (*box, *rawBox, func(), error) {
	bx, err := b.srv.create(ctx, b.name(name), tmplMinimal, 0)
	if err != nil {
		return nil, nil, nil, err
	}
	rb, err := b.raw.prepare(ctx, b.rootfs(tmplMinimal), sleepInit, 1024, 1)
	if err == nil {
		if err = rb.start(ctx); err != nil {
			rb.destroy(context.WithoutCancel(ctx))
		}
	}
	if err != nil {
		bx.delete(context.WithoutCancel(ctx))
		return nil, nil, nil, err
	}
	return bx, rb, func() {
		rb.destroy(context.WithoutCancel(ctx))
		bx.delete(context.WithoutCancel(ctx))
	}, nil
}

// ---- exec ----

func (b *bench) benchExec(ctx context.Context) error {
	bx, rb, done, err := b.idlePair(ctx, "exec")
	if err != nil {
		return err
	}
	defer done()
	// Warm up both paths (page cache, connection pool).
	for i := 0; i < 3; i++ {
		if _, err := bx.exec(ctx, "true"); err != nil {
			return err
		}
		if err := rb.exec(ctx, nil, nil, "/bin/true"); err != nil {
			return err
		}
	}
	// Each stasis exec follows a raw one, so the agent's spare shell is
	// ready, as it is for commands that are not back to back.
	var sTrue, sBinTrue, rTrue durations
	for i := 0; i < b.cfg.ExecReps; i++ {
		for _, m := range []struct {
			cmd string
			d   *durations
		}{{"true", &sTrue}, {"/bin/true", &sBinTrue}} {
			d, err := timed(func() error { _, err := bx.exec(ctx, m.cmd); return err })
			if err != nil {
				return err
			}
			m.d.add(d)
			d, err = timed(func() error { return rb.exec(ctx, nil, nil, "/bin/true") })
			if err != nil {
				return err
			}
			rTrue.add(d)
		}
	}
	// Back to back, the next command waits for the spare shell to be
	// replaced (or, for runsc, for nothing).
	var sTight, rTight durations
	for i := 0; i < b.cfg.ExecReps; i++ {
		d, err := timed(func() error { _, err := bx.exec(ctx, "true"); return err })
		if err != nil {
			return err
		}
		sTight.add(d)
	}
	for i := 0; i < b.cfg.ExecReps; i++ {
		d, err := timed(func() error { return rb.exec(ctx, nil, nil, "/bin/true") })
		if err != nil {
			return err
		}
		rTight.add(d)
	}
	b.add(Row{Group: "exec", Name: "exec `true`",
		Stasis: sTrue.stat(), StasisOp: "POST /exec {command:\"true\"} (the agent's spare /bin/sh runs it: a builtin)",
		Raw: rTrue.stat(), RawOp: "runsc exec ID /bin/true"})
	b.add(Row{Group: "exec", Name: "exec `/bin/true`",
		Stasis: sBinTrue.stat(), StasisOp: "POST /exec {command:\"/bin/true\"} (the spare shell forks and execs it)",
		Raw: rTrue.stat(), RawOp: "runsc exec ID /bin/true"})
	b.add(Row{Group: "exec", Name: "exec `true`, back to back",
		Stasis: sTight.stat(), StasisOp: "POST /exec {command:\"true\"} in a tight loop (each waits for the spare shell to be replaced)",
		Raw: rTight.stat(), RawOp: "runsc exec ID /bin/true in a tight loop"})

	const oneMB = 1 << 20
	cmd := fmt.Sprintf("yes | head -c %d", oneMB)
	var sOut, rOut durations
	for i := 0; i < b.cfg.Exec1MBReps; i++ {
		var res *execResult
		d, err := timed(func() (err error) { res, err = bx.exec(ctx, cmd); return err })
		if err != nil {
			return err
		}
		if len(res.Stdout) != oneMB {
			return fmt.Errorf("exec 1 MB: got %d bytes of stdout", len(res.Stdout))
		}
		sOut.add(d)
		var buf bytes.Buffer
		d, err = timed(func() error { return rb.exec(ctx, nil, &buf, "/bin/sh", "-c", cmd) })
		if err != nil {
			return err
		}
		if buf.Len() != oneMB {
			return fmt.Errorf("raw exec 1 MB: got %d bytes of stdout", buf.Len())
		}
		rOut.add(d)
	}
	b.add(Row{Group: "exec", Name: "exec printing 1 MB",
		Stasis: sOut.stat(), StasisOp: "POST /exec `" + cmd + "`, JSON response",
		Raw: rOut.stat(), RawOp: "runsc exec ID sh -c '" + cmd + "', stdout to a pipe"})
	return nil
}

// ---- files ----

func (b *bench) benchFiles(ctx context.Context) error {
	bx, rb, done, err := b.idlePair(ctx, "files")
	if err != nil {
		return err
	}
	defer done()
	for si, size := range b.cfg.FileSizes {
		data := make([]byte, size)
		rand.Read(data)
		path := fmt.Sprintf("/home/user/bench-%d.bin", size)
		var sW, sR, rW, rR durations
		for i := 0; i < b.cfg.FileReps[si]; i++ {
			d, err := timed(func() error { return bx.writeFile(ctx, path, data) })
			if err != nil {
				return err
			}
			sW.add(d)
			var n int64
			d, err = timed(func() (err error) { n, err = bx.readFile(ctx, path); return err })
			if err != nil {
				return err
			}
			if n != size {
				return fmt.Errorf("read %s: got %d bytes, want %d", path, n, size)
			}
			sR.add(d)

			d, err = timed(func() error {
				return rb.exec(ctx, bytes.NewReader(data), nil, "/bin/sh", "-c", "cat > "+path)
			})
			if err != nil {
				return err
			}
			rW.add(d)
			var cw countWriter
			d, err = timed(func() error { return rb.exec(ctx, nil, &cw, "/bin/cat", path) })
			if err != nil {
				return err
			}
			if int64(cw) != size {
				return fmt.Errorf("raw read %s: got %d bytes, want %d", path, cw, size)
			}
			rR.add(d)
		}
		label := sizeLabel(size)
		sws, srs := sW.stat(), sR.stat()
		b.add(Row{Group: "files", Name: "file write " + label,
			Stasis: sws, StasisOp: "POST /files?path=/home/user/...",
			Raw: rW.stat(), RawOp: "runsc exec ID sh -c 'cat > file' < data",
			Extra: map[string]any{"stasis_mb_per_s": throughput(size, sws)}})
		b.add(Row{Group: "files", Name: "file read " + label,
			Stasis: srs, StasisOp: "GET /files?path=/home/user/...",
			Raw: rR.stat(), RawOp: "runsc exec ID cat file > pipe",
			Extra: map[string]any{"stasis_mb_per_s": throughput(size, srs)}})
	}
	return nil
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

func throughput(size int64, s *Stat) float64 {
	if s == nil || s.Median == 0 {
		return 0
	}
	return round(float64(size) / mib / (s.Median / 1000))
}

func sizeLabel(n int64) string {
	switch {
	case n >= mib && n%mib == 0:
		return fmt.Sprintf("%d MB", n/mib)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// ---- pause / resume ----

// memFor is the memory limit of a sandbox holding sizeMiB: the default 1 GiB,
// or enough above the footprint for python and the sentry.
func memFor(sizeMiB int) int {
	if sizeMiB <= 512 {
		return 1024
	}
	return sizeMiB + 1024
}

func (b *bench) benchPause(ctx context.Context) error {
	var errs []error
	for i, size := range b.cfg.PauseSizesMiB {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := b.pauseSize(ctx, size, b.cfg.PauseReps[i]); err != nil {
			errs = append(errs, fmt.Errorf("%d MiB: %w", size, err))
		}
		b.pairPauseRows(size)
	}
	return errors.Join(errs...)
}

// pauseResults holds one size's measurements.
type pauseResults struct {
	sPause, sDurable, sResume, sFirst, sAuto durations
	sPauseSteps, sResumeSteps                steps // stasisd's steps of sPause, sResume
	wPauseSteps                              steps // stasisd's steps of wPause
	rPause, rCkpt, rSync, rRestore, rFirst   durations
	rCkptDel                                 durations // checkpoint + delete, no fsync
	rFreeze, rThaw                           durations
	sCold, rCold, rColdBg                    durations // resume → first command, snapshot not in the page cache
	sImage, rImage                           []float64 // MiB
	sActiveMem, rActiveMem                   SandboxMem
	wPause, wResume, wFirst, wAuto           durations // stasis, warm tier
	rwPause, rwSync, rwResume, rwFirst       durations // runsc, same work
	wImage                                   []float64
	// runsc on the same sandbox: the agent as init, the holder started
	// through it.
	aCkptDel, aRestore, aFirst durations
	aImage                     []float64

	// The command's part of sFirst and sAuto: sFirst - sResume, and sAuto
	// less the transparent resume's steps (sAutoSteps), so that the two
	// rows compare the command with the command and the restore with the
	// restore.
	sFirstCmd, sAutoCmd durations
	sAutoSteps          steps
	wFirstCmd, wAutoCmd durations // the same, warm tier
	wAutoSteps          steps
}

func (b *bench) pauseRes(size int) *pauseResults {
	if b.pause == nil {
		b.pause = map[int]*pauseResults{}
	}
	if b.pause[size] == nil {
		b.pause[size] = &pauseResults{}
	}
	return b.pause[size]
}

func waitFor(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// pauseSize measures pause/resume of a sandbox holding size MiB, stasis and
// the baseline alternating. Before every timed pause the host's dirty pages
// are written back (untimed), so one sample's writeback does not land in the
// next one.
func (b *bench) pauseSize(ctx context.Context, size, reps int) error {
	pr := b.pauseRes(size)
	bg := context.WithoutCancel(ctx)

	// stasis: python started by the agent in a stasis/base sandbox.
	bx, err := b.srv.create(ctx, b.name(fmt.Sprintf("pause%d", size)), tmplBase, memFor(size))
	if err != nil {
		return err
	}
	defer bx.delete(bg)
	if err := bx.startHolder(ctx, size); err != nil {
		return fmt.Errorf("stasis: %w", err)
	}
	if pid, err := b.srv.sandboxPid(bx.ID); err == nil {
		pr.sActiveMem, _ = sandboxMem(pid)
	}

	// baseline: the same python as init of a runsc container on the same rootfs.
	rb, err := b.raw.prepare(ctx, b.rootfs(tmplBase), []string{"/usr/bin/python3", "-c", holdScript, strconv.Itoa(size)}, memFor(size), 1)
	if err != nil {
		return err
	}
	defer rb.destroy(bg)
	if err := rb.start(ctx); err != nil {
		return err
	}
	alive := func() error { return rb.exec(ctx, nil, nil, "/bin/sh", "-c", aliveCmd) }
	if err := waitFor(ctx, holderStart, alive); err != nil {
		return fmt.Errorf("raw: memory holder did not start: %w", err)
	}
	if pid, err := rb.sandboxPid(); err == nil {
		pr.rActiveMem, _ = sandboxMem(pid)
	}
	if b.cfg.ColdOnly {
		return b.coldResumes(ctx, pr, size, bx, rb, alive, reps)
	}

	// warm tier: a sandbox on the second server, and its own baseline
	// container: a checkpoint --leave-running changes how fast the next
	// checkpoint of the same sandbox is, so the cold baseline must not see
	// the warm tier's.
	var wb *box
	var rbw *rawBox
	var aliveW func() error
	if b.warm != nil {
		rbw, err = b.raw.prepare(ctx, b.rootfs(tmplBase), []string{"/usr/bin/python3", "-c", holdScript, strconv.Itoa(size)}, memFor(size), 1)
		if err != nil {
			return err
		}
		defer rbw.destroy(bg)
		if err := rbw.start(ctx); err != nil {
			return err
		}
		aliveW = func() error { return rbw.exec(ctx, nil, nil, "/bin/sh", "-c", aliveCmd) }
		if err := waitFor(ctx, holderStart, aliveW); err != nil {
			return fmt.Errorf("raw warm: memory holder did not start: %w", err)
		}
		wb, err = b.warm.create(ctx, b.name(fmt.Sprintf("warm%d", size)), tmplBase, memFor(size))
		if err != nil {
			return err
		}
		defer wb.delete(bg)
		if err := wb.startHolder(ctx, size); err != nil {
			return fmt.Errorf("warm: %w", err)
		}
	}

	// baseline 2, the same sandbox: what the stasis sandbox runs (the
	// agent as init, the holder started through it), checkpointed and
	// restored by runsc directly. The difference to baseline 1 is the cost
	// of the agent; the difference to stasis is what stasis adds around it.
	ra, err := b.raw.prepare(ctx, b.rootfs(tmplBase), []string{runtime.AgentMountPath}, memFor(size), 1, rawAgentEnv(memFor(size))...)
	if err != nil {
		return err
	}
	defer ra.destroy(bg)
	if err := ra.start(ctx); err != nil {
		return err
	}
	if err := startHolderViaAgent(ctx, ra, size); err != nil {
		return fmt.Errorf("raw, same sandbox: %w", err)
	}
	aliveA := func() error { return ra.exec(ctx, nil, nil, "/bin/sh", "-c", aliveCmd) }
	if err := waitFor(ctx, holderStart, aliveA); err != nil {
		return fmt.Errorf("raw, same sandbox: memory holder did not start: %w", err)
	}

	// When each side last came back from a checkpoint (see PauseSettle).
	bxRestored, rbRestored, raRestored := time.Now(), time.Now(), time.Now()
	settle := func() {
		var wait time.Duration
		for _, t := range []time.Time{bxRestored, rbRestored, raRestored} {
			if w := b.cfg.PauseSettle - time.Since(t); w > wait {
				wait = w
			}
		}
		if wait > 0 {
			time.Sleep(wait)
		}
	}
	for i := 0; i < reps; i++ {
		if wb != nil {
			if err := b.warmRep(ctx, pr, wb, rbw, aliveW, i); err != nil {
				return err
			}
		}
		settle()
		// stasis: pause, until durable, resume from disk, first command.
		syscall.Sync()
		t0 := time.Now()
		if err := bx.pause(ctx); err != nil {
			return err
		}
		pr.sPause.add(time.Since(t0))
		pr.sPauseSteps.add(b.srv.lastSteps("sandbox paused", bx.ID))
		if err := bx.waitDurable(ctx); err != nil {
			return err
		}
		pr.sDurable.add(time.Since(t0))
		if err := bx.waitDiskOnly(ctx); err != nil {
			return err
		}
		sb, err := bx.get(ctx)
		if err != nil {
			return err
		}
		pr.sImage = append(pr.sImage, float64(sb.Usage.SnapshotBytes)/mib)
		t0 = time.Now()
		if err := bx.resume(ctx); err != nil {
			return err
		}
		resumed := time.Since(t0)
		pr.sResume.add(resumed)
		pr.sResumeSteps.add(b.srv.lastSteps("sandbox resumed", bx.ID))
		if _, err := bx.exec(ctx, aliveCmd); err != nil {
			return fmt.Errorf("stasis after resume: %w", err)
		}
		first := time.Since(t0)
		pr.sFirst.add(first)
		pr.sFirstCmd.add(first - resumed)
		bxRestored = time.Now()
		// A large snapshot restores lazily: its memory load and check must
		// not run during the baseline's timed checkpoint and restore.
		if err := waitFor(ctx, loadSettle, bx.snapshotGone); err != nil {
			return fmt.Errorf("stasis after resume: memory load and check: %w", err)
		}

		// baseline: checkpoint, fsync the image (stasis makes it durable
		// too), delete the stopped container; restore; first command.
		rt, err := b.rawCycle(ctx, rb, alive, i, true)
		if err != nil {
			return fmt.Errorf("raw: %w", err)
		}
		pr.rCkpt.add(rt.ckpt)
		pr.rSync.add(rt.sync)
		pr.rPause.add(rt.ckpt + rt.sync + rt.del)
		pr.rCkptDel.add(rt.ckpt + rt.del)
		pr.rImage = append(pr.rImage, rt.imageMiB)
		pr.rRestore.add(rt.restore)
		pr.rFirst.add(rt.first)
		rbRestored = time.Now()

		// baseline 2, the same sandbox: checkpoint, delete; restore; first command.
		at, err := b.rawCycle(ctx, ra, aliveA, i, false)
		if err != nil {
			return fmt.Errorf("raw, same sandbox: %w", err)
		}
		pr.aCkptDel.add(at.ckpt + at.del)
		pr.aImage = append(pr.aImage, at.imageMiB)
		pr.aRestore.add(at.restore)
		pr.aFirst.add(at.first)
		raRestored = time.Now()
	}

	// A data-plane call on a paused sandbox resumes it transparently.
	for i := 0; i < reps; i++ {
		syscall.Sync()
		if err := bx.pause(ctx); err != nil {
			return err
		}
		if err := bx.waitDiskOnly(ctx); err != nil {
			return err
		}
		d, err := timed(func() error { _, err := bx.exec(ctx, aliveCmd); return err })
		if err != nil {
			return fmt.Errorf("exec on paused sandbox: %w", err)
		}
		pr.sAuto.add(d)
		st := b.srv.lastSteps("sandbox resumed", bx.ID)
		pr.sAutoSteps.add(st)
		pr.sAutoCmd.add(d - stepsTotal(st))
		if wb != nil {
			// Untimed, as for the warm resume rows: the lazy restore this
			// exec just made (its memory load and check) and the warm
			// pause's seal (checksums and fsync of the whole image) would
			// otherwise run during the timed exec, which the baseline's
			// thaw after its fsync does not pay.
			if err := waitFor(ctx, loadSettle, bx.snapshotGone); err != nil {
				return fmt.Errorf("exec on paused sandbox: memory load and check: %w", err)
			}
			syscall.Sync()
			if err := wb.pause(ctx); err != nil {
				return err
			}
			if err := wb.waitDurable(ctx); err != nil {
				return fmt.Errorf("warm: %w", err)
			}
			d, err := timed(func() error { _, err := wb.exec(ctx, aliveCmd); return err })
			if err != nil {
				return fmt.Errorf("exec on warm paused sandbox: %w", err)
			}
			pr.wAuto.add(d)
			st := b.warm.lastSteps("sandbox resumed", wb.ID)
			pr.wAutoSteps.add(st)
			pr.wAutoCmd.add(d - stepsTotal(st))
		}
	}

	if err := b.coldResumes(ctx, pr, size, bx, rb, alive, reps); err != nil {
		return err
	}

	// Freeze in RAM (runsc pause/resume): the tier stasis does not have yet.
	for i := 0; i < reps*2; i++ {
		d, err := timed(func() error { return rb.freeze(ctx) })
		if err != nil {
			return err
		}
		pr.rFreeze.add(d)
		d, err = timed(func() error { return rb.thaw(ctx) })
		if err != nil {
			return err
		}
		pr.rThaw.add(d)
	}
	if err := alive(); err != nil {
		return fmt.Errorf("raw after freeze/thaw: %w", err)
	}
	return nil
}

// coldResumes measures resume → first command with the snapshot on disk and
// not in the page cache, stasis and the baseline alternating. A lazy
// restore goes on loading memory after the first command; each sample waits
// (untimed) until that is over, so no sample pays for the one before it, as
// a resume on an otherwise idle host would not.
func (b *bench) coldResumes(ctx context.Context, pr *pauseResults, size int, bx *box, rb *rawBox, alive func() error, reps int) error {
	// Cold resume: the snapshot on disk and not in the page cache, as after
	// a long pause on a busy host. Both sides drop their image files from
	// the page cache (untimed) before the restore.
	for i := 0; i < reps; i++ {
		syscall.Sync()
		if err := bx.pause(ctx); err != nil {
			return err
		}
		if err := bx.waitDiskOnly(ctx); err != nil {
			return err
		}
		if err := dropPageCache(filepath.Join(b.srv.dataDir, "snapshots", bx.ID)); err != nil {
			return err
		}
		t0 := time.Now()
		if err := bx.resume(ctx); err != nil {
			return err
		}
		resumed := time.Since(t0)
		if _, err := bx.exec(ctx, aliveCmd); err != nil {
			return fmt.Errorf("stasis after cold resume: %w", err)
		}
		pr.sCold.add(time.Since(t0))
		b.logf("cold resume %d MiB #%d: resume %v, first command %v", size, i, resumed.Round(time.Millisecond), (time.Since(t0) - resumed).Round(time.Millisecond))
		// The restore's background work (the memory load, then its
		// checksum) must not run during the other side's timed restore.
		waited, err := timed(func() error { return waitFor(ctx, loadSettle, bx.snapshotGone) })
		if err != nil {
			return fmt.Errorf("stasis after cold resume: memory load and check: %w", err)
		}
		b.logf("cold resume %d MiB #%d: memory loaded and checked %v after the first command", size, i, waited.Round(time.Millisecond))
		if !b.cfg.ColdOnly {
			rt, err := b.rawCycleCold(ctx, rb, alive, i)
			if err != nil {
				return fmt.Errorf("raw, cold: %w", err)
			}
			pr.rCold.add(rt.first)
		}
		// runsc's lazy restore, as stasis runs it: memory loads on after
		// restore returns, with O_DIRECT reads.
		rt, err := b.rawCycleCold(ctx, rb, alive, i, "--background", "--direct")
		if err != nil {
			return fmt.Errorf("raw, cold, --background --direct: %w", err)
		}
		pr.rColdBg.add(rt.first)
		b.logf("raw cold resume %d MiB #%d (--background --direct): restore %v, first command %v", size, i, rt.restore.Round(time.Millisecond), (rt.first - rt.restore).Round(time.Millisecond))
		waited, err = timed(func() error { return waitFor(ctx, loadSettle, rb.pagesLoaded) })
		if err != nil {
			return fmt.Errorf("raw after cold resume: memory load: %w", err)
		}
		b.logf("raw cold resume %d MiB #%d: memory loaded %v after the first command", size, i, waited.Round(time.Millisecond))
	}

	return nil
}

// rawCycleTimes is one cold pause/resume of a baseline container.
type rawCycleTimes struct {
	ckpt, sync, del, restore, first time.Duration
	imageMiB                        float64
}

// rawCycle checkpoints baseline container rb to a fresh image (fsynced if
// fsync), deletes it, restores it and runs alive, timing each step as the
// stasis side is timed. Host dirty pages are written back first (untimed).
func (b *bench) rawCycle(ctx context.Context, rb *rawBox, alive func() error, i int, fsync bool) (rawCycleTimes, error) {
	return b.rawCycleImg(ctx, rb, alive, fmt.Sprintf("img-%s-%d", rb.ID, i), fsync, false)
}

// rawCycleCold is rawCycle with the image dropped from the page cache
// (untimed) before a restore with restoreFlags.
func (b *bench) rawCycleCold(ctx context.Context, rb *rawBox, alive func() error, i int, restoreFlags ...string) (rawCycleTimes, error) {
	return b.rawCycleImg(ctx, rb, alive, fmt.Sprintf("cold-%s-%d", rb.ID, i), true, true, restoreFlags...)
}

func (b *bench) rawCycleImg(ctx context.Context, rb *rawBox, alive func() error, name string, fsync, cold bool, restoreFlags ...string) (rawCycleTimes, error) {
	var t rawCycleTimes
	img := filepath.Join(b.raw.dir, name)
	defer os.RemoveAll(img)
	syscall.Sync()
	var err error
	if t.ckpt, err = timed(func() error { return rb.checkpoint(ctx, img) }); err != nil {
		return t, err
	}
	if fsync {
		if t.sync, err = timed(func() error { return syncTree(img) }); err != nil {
			return t, err
		}
	}
	if t.del, err = timed(func() error { return rb.deleteStopped(ctx) }); err != nil {
		return t, err
	}
	t.imageMiB = float64(dirSize(img)) / mib
	if err := rb.readdress(ctx); err != nil {
		return t, err
	}
	if cold {
		if err := dropPageCache(img); err != nil {
			return t, err
		}
	}
	t0 := time.Now()
	if err := rb.restore(ctx, img, restoreFlags...); err != nil {
		return t, err
	}
	t.restore = time.Since(t0)
	if err := alive(); err != nil {
		return t, fmt.Errorf("after restore: %w", err)
	}
	t.first = time.Since(t0)
	return t, nil
}

// warmRep is one warm-tier sample: stasis pause/resume on the warm server,
// then the same work with runsc: freeze, checkpoint --leave-running, fsync
// the image; thaw.
func (b *bench) warmRep(ctx context.Context, pr *pauseResults, wb *box, rb *rawBox, alive func() error, i int) error {
	syscall.Sync()
	d, err := timed(func() error { return wb.pause(ctx) })
	if err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	pr.wPause.add(d)
	pr.wPauseSteps.add(b.warm.lastSteps("sandbox paused", wb.ID))
	if sb, err := wb.get(ctx); err == nil {
		pr.wImage = append(pr.wImage, float64(sb.Usage.SnapshotBytes)/mib)
	}
	// Resume once the snapshot is durable: the usual case of a resume a
	// little later, within the window (sooner is a thaw as well).
	if err := wb.waitDurable(ctx); err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	t0 := time.Now()
	if err := wb.resume(ctx); err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	resumed := time.Since(t0)
	pr.wResume.add(resumed)
	if _, err := wb.exec(ctx, aliveCmd); err != nil {
		return fmt.Errorf("warm, after resume: %w", err)
	}
	first := time.Since(t0)
	pr.wFirst.add(first)
	pr.wFirstCmd.add(first - resumed)

	img := filepath.Join(b.raw.dir, fmt.Sprintf("warm-%s-%d", rb.ID, i))
	defer os.RemoveAll(img)
	syscall.Sync()
	d, err = timed(func() error {
		if err := rb.freeze(ctx); err != nil {
			return err
		}
		return rb.checkpointLeaveRunning(ctx, img)
	})
	if err != nil {
		return fmt.Errorf("raw warm: %w", err)
	}
	ds, err := timed(func() error { return syncTree(img) })
	if err != nil {
		return fmt.Errorf("raw warm: %w", err)
	}
	pr.rwPause.add(d)
	pr.rwSync.add(ds)
	t0 = time.Now()
	if err := rb.thaw(ctx); err != nil {
		return fmt.Errorf("raw warm: %w", err)
	}
	pr.rwResume.add(time.Since(t0))
	if err := alive(); err != nil {
		return fmt.Errorf("raw warm, after thaw: %w", err)
	}
	pr.rwFirst.add(time.Since(t0))
	return nil
}

// dropPageCache writes back and evicts every file under dir from the page
// cache (posix_fadvise DONTNEED), leaving the rest of the host's cache be.
func dropPageCache(dir string) error {
	return filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Sync(); err != nil {
			return err
		}
		return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	})
}

// syncTree fsyncs every file under dir, and dir.
func syncTree(dir string) error {
	return filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() && !d.IsDir() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	})
}

// touchedLabel names a memory holder's size in row names ("200 MB touched").
func touchedLabel(sizeMiB int) string {
	if sizeMiB >= 1024 && sizeMiB%1024 == 0 {
		return fmt.Sprintf("%d GB touched", sizeMiB/1024)
	}
	return fmt.Sprintf("%d MB touched", sizeMiB)
}

func (b *bench) pairPauseRows(size int) {
	pr := b.pauseRes(size)
	label := touchedLabel(size)
	memExtra := map[string]any{
		"stasis_active_pss_mib":    round(pr.sActiveMem.PssMiB),
		"stasis_active_cgroup_mib": round(pr.sActiveMem.CgroupMiB),
		"raw_active_pss_mib":       round(pr.rActiveMem.PssMiB),
		"raw_active_cgroup_mib":    round(pr.rActiveMem.CgroupMiB),
	}
	b.add(Row{Group: "pause", Name: "pause (checkpointed; sealed on disk in the background), " + label,
		Stasis: pr.sPause.stat(), StasisOp: "POST /sandboxes/{id}/pause (returns once checkpointed, frozen in RAM meanwhile)",
		Raw: pr.rCkptDel.stat(), RawOp: "runsc checkpoint + runsc delete --force (no fsync: runsc does not sync its image)",
		Extra: mergeExtra(memExtra, map[string]any{"raw_checkpoint_only_ms": pr.rCkpt.stat()}, pr.sPauseSteps.extra()),
		Note:  "host dirty pages are written back (untimed) before every pause, stasis and runsc alike; " + pauseStepsNote})
	b.add(Row{Group: "pause", Name: "pause until durable on disk, " + label,
		Stasis: pr.sDurable.stat(), StasisOp: "POST pause, then GET /sandboxes/{id} every 2 ms until pause.durable",
		Raw: pr.rPause.stat(), RawOp: "runsc checkpoint + fsync of the image files + runsc delete --force",
		Extra: map[string]any{"raw_fsync_only_ms": pr.rSync.stat()}})
	b.add(Row{Group: "pause", Name: "checkpoint image size, " + label,
		Stasis: summarize("MiB", pr.sImage), StasisOp: "usage.snapshot_bytes",
		Raw: summarize("MiB", pr.rImage), RawOp: "size of --image-path dir"})
	b.add(Row{Group: "pause", Name: "resume (restore from disk), " + label,
		Stasis: pr.sResume.stat(), StasisOp: "POST /sandboxes/{id}/resume until 200 (agent accepting connections), once on disk only",
		Raw: pr.rRestore.stat(), RawOp: "runsc restore --detach", Extra: pr.sResumeSteps.extra(),
		Note: "stasis_* are the steps stasisd logs (the store before the restore, link and bundle, runsc restore, until the agent's socket accepts, the store after)"})
	b.add(Row{Group: "pause", Name: "resume → first command OK, " + label,
		Stasis: pr.sFirst.stat(), StasisOp: "resume + POST /exec",
		Raw: pr.rFirst.stat(), RawOp: "runsc restore --detach + runsc exec",
		Extra: map[string]any{"stasis_command_ms": pr.sFirstCmd.stat()}, Note: commandNote})
	b.add(Row{Group: "pause", Name: "exec on paused sandbox (transparent resume), " + label,
		Stasis: pr.sAuto.stat(), StasisOp: "POST /exec on a paused sandbox",
		Raw: pr.rFirst.stat(), RawOp: "runsc restore --detach + runsc exec",
		Extra: mergeExtra(pr.sAutoSteps.extra(), map[string]any{"stasis_command_ms": pr.sAutoCmd.stat()}), Note: commandNote})
	b.add(Row{Group: "pause", Name: "cold resume → first command OK (snapshot not in the page cache), " + label,
		Stasis: pr.sCold.stat(), StasisOp: "POST resume + POST /exec, the snapshot's files evicted from the page cache (fsync + posix_fadvise DONTNEED, untimed) before the resume",
		Raw: pr.rCold.stat(), RawOp: "runsc restore --detach + runsc exec, the image's files evicted from the page cache the same way"})
	b.add(Row{Group: "pause", Name: "cold resume → first command OK, against runsc restore --background --direct, " + label,
		Stasis: pr.sCold.stat(), StasisOp: "as the row above",
		Raw: pr.rColdBg.stat(), RawOp: "runsc restore --detach --background --direct (memory loads on with O_DIRECT reads after restore returns: what stasis runs for a large cold snapshot) + runsc exec, the image's files evicted from the page cache first"})
	sameOp := "a runsc container running what the stasis sandbox runs: stasis-agent as init, the holder started through it"
	b.add(Row{Group: "pause", Name: "pause, against runsc on the same sandbox, " + label,
		Stasis: pr.sPause.stat(), StasisOp: "POST /sandboxes/{id}/pause",
		Raw: pr.aCkptDel.stat(), RawOp: "runsc checkpoint + runsc delete --force of " + sameOp})
	b.add(Row{Group: "pause", Name: "checkpoint image size, against runsc on the same sandbox, " + label,
		Stasis: summarize("MiB", pr.sImage), StasisOp: "usage.snapshot_bytes",
		Raw: summarize("MiB", pr.aImage), RawOp: "size of --image-path dir"})
	b.add(Row{Group: "pause", Name: "resume (restore from disk), against runsc on the same sandbox, " + label,
		Stasis: pr.sResume.stat(), StasisOp: "POST /sandboxes/{id}/resume until 200 (agent accepting connections), once on disk only",
		Raw: pr.aRestore.stat(), RawOp: "runsc restore --detach of " + sameOp})
	b.add(Row{Group: "pause", Name: "resume → first command OK, against runsc on the same sandbox, " + label,
		Stasis: pr.sFirst.stat(), StasisOp: "resume + POST /exec",
		Raw: pr.aFirst.stat(), RawOp: "runsc restore --detach + runsc exec"})
	if len(pr.wPause) > 0 {
		b.add(Row{Group: "warm", Name: "warm pause (checkpointed, kept frozen in RAM), " + label,
			Stasis: pr.wPause.stat(), StasisOp: "POST /sandboxes/{id}/pause on a stasisd with --warm-pause-window",
			Raw: pr.rwPause.stat(), RawOp: "runsc pause + runsc checkpoint --leave-running",
			Extra: mergeExtra(map[string]any{"raw_fsync_after_ms": pr.rwSync.stat()}, pr.wPauseSteps.extra()),
			Note:  pauseStepsNote})
		b.add(Row{Group: "warm", Name: "warm resume (thaw), " + label,
			Stasis: pr.wResume.stat(), StasisOp: "POST /sandboxes/{id}/resume within the warm window",
			Raw: pr.rwResume.stat(), RawOp: "runsc resume"})
		b.add(Row{Group: "warm", Name: "warm resume → first command OK, " + label,
			Stasis: pr.wFirst.stat(), StasisOp: "resume + POST /exec",
			Raw: pr.rwFirst.stat(), RawOp: "runsc resume + runsc exec",
			Extra: map[string]any{"stasis_command_ms": pr.wFirstCmd.stat()}, Note: commandNote})
		b.add(Row{Group: "warm", Name: "exec on warm-paused sandbox (transparent resume), " + label,
			Stasis: pr.wAuto.stat(), StasisOp: "POST /exec on a warm-paused sandbox",
			Raw: pr.rwFirst.stat(), RawOp: "runsc resume + runsc exec",
			Extra: mergeExtra(pr.wAutoSteps.extra(), map[string]any{"stasis_command_ms": pr.wAutoCmd.stat()}), Note: commandNote})
	}
	b.add(Row{Group: "warm", Name: "freeze only (runsc pause), " + label, Status: "stasis_not_available",
		Raw: pr.rFreeze.stat(), RawOp: "runsc pause",
		Note: "stasis always writes the snapshot when it pauses; a freeze without a snapshot is not offered"})
	b.add(Row{Group: "warm", Name: "thaw only (runsc resume), " + label, Status: "stasis_not_available",
		Raw: pr.rThaw.stat(), RawOp: "runsc resume"})
}

// commandNote explains the stasis_command_ms of the rows that end with a
// first command after a resume.
const commandNote = "stasis_command_ms is the command's part: after POST resume returned, or, for the transparent resume, the exec less the resume's steps stasisd logs (stasis_*_ms, as in the resume row)"

// pauseStepsNote says what a pause row's stasis_* fields are.
const pauseStepsNote = "stasis_* are the steps stasisd logs (settle a lazy load, the store's pausing record, the agent's quiesce, the freeze, runsc checkpoint, the store's paused record, after)"

func mergeExtra(ms ...map[string]any) map[string]any {
	out := map[string]any{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// ---- density ----

func (b *bench) benchDensity(ctx context.Context) error {
	d := &Density{ActiveBound: b.cfg.MaxActive, PausedBound: b.cfg.MaxPaused, TimeBudgetSeconds: b.cfg.DensityBudget.Seconds(),
		MemFloorMiB: float64(b.cfg.MinMemAvailable) / mib}
	b.rep.Density = d
	var errs []error

	// Baseline: idle raw containers with a trivial init.
	var rawPss, rawCg []float64
	var rawBoxes []*rawBox
	for i := 0; i < b.cfg.RawIdle; i++ {
		rb, err := b.raw.prepare(ctx, b.rootfs(tmplMinimal), sleepInit, 1024, 1)
		if err != nil {
			errs = append(errs, err)
			break
		}
		rawBoxes = append(rawBoxes, rb)
		if err := rb.start(ctx); err != nil {
			errs = append(errs, err)
			break
		}
	}
	sleepCtx(ctx, b.cfg.Settle)
	var rawPids []int
	for _, rb := range rawBoxes {
		if pid, err := rb.sandboxPid(); err == nil {
			rawPids = append(rawPids, pid)
			if m, err := sandboxMem(pid); err == nil {
				rawPss = append(rawPss, m.PssMiB)
				rawCg = append(rawCg, m.CgroupMiB)
			}
		}
	}
	rawCPU := idleCPU(ctx, rawPids, b.cfg.IdleCPUWindow)
	for _, rb := range rawBoxes {
		rb.destroy(context.WithoutCancel(ctx))
	}

	memAvail0 := meminfo()["MemAvailable"]
	d.IdleCPUPercentBefore = round(hostCPUPercent(ctx, b.cfg.IdleCPUWindow))

	// Active: create idle sandboxes one after the other up to the bound,
	// while creates stay under 2× their first latency (median of the last
	// 5 against the first 5) and the host keeps MinMemAvailable.
	var boxes []*box
	var createD durations
	activeStart := time.Now()
	for len(boxes) < b.cfg.MaxActive && ctx.Err() == nil {
		if time.Since(activeStart) > b.cfg.DensityBudget {
			d.ActiveStoppedByTime = true
			break
		}
		if memLow(b.cfg.MinMemAvailable) {
			d.ActiveStoppedByMemory = true
			break
		}
		if n := len(createD); n >= 10 && createD[n-5:].stat().Median > 2*createD[:5].stat().Median {
			d.ActiveStoppedBySlowdown = true
			break
		}
		var bx *box
		dt, err := timed(func() (err error) { bx, err = b.srv.create(ctx, b.name("density"), tmplMinimal, 0); return err })
		if err != nil {
			d.ActiveFailure = err.Error()
			break
		}
		createD.add(dt)
		boxes = append(boxes, bx)
	}
	defer func() {
		// Whatever is left (active or paused) goes; timed below when it can be.
		for _, bx := range boxes {
			bx.delete(context.WithoutCancel(ctx))
		}
	}()
	d.ActiveHeld = len(boxes)
	d.ActiveSeconds = roundSecs(time.Since(activeStart))
	d.ActiveReachedBound = d.ActiveFailure == "" && !d.ActiveStoppedByTime && !d.ActiveStoppedByMemory && !d.ActiveStoppedBySlowdown && len(boxes) == b.cfg.MaxActive
	if n := len(createD); n > 0 {
		k := min(5, n)
		d.CreateFirstMs = createD[:k].stat()
		d.CreateLastMs = createD[n-k:].stat()
	}
	sleepCtx(ctx, b.cfg.Settle)
	var pss, cg []float64
	var pids []int
	for _, bx := range boxes {
		pid, err := b.srv.sandboxPid(bx.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pids = append(pids, pid)
		m, err := sandboxMem(pid)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pss = append(pss, m.PssMiB)
		cg = append(cg, m.CgroupMiB)
	}
	memAvail1 := meminfo()["MemAvailable"]
	if len(boxes) > 0 {
		d.MemAvailableDropPerActiveMiB = round(float64(memAvail0-memAvail1) / mib / float64(len(boxes)))
	}
	d.IdleCPUPercentActive = round(hostCPUPercent(ctx, b.cfg.IdleCPUWindow))
	// stasisd's own share over the same window as the sandboxes': what a
	// crowd of idle sandboxes costs in stasisd (health checks, timers)
	// against what it costs in the sandboxes (sentries, agents).
	srvCPU0, srvErr := processCPU(b.srv.cmd.Process.Pid)
	idleStart := time.Now()
	stasisCPU := idleCPU(ctx, pids, b.cfg.IdleCPUWindow)
	if srvCPU1, err := processCPU(b.srv.cmd.Process.Pid); err == nil && srvErr == nil {
		d.StasisdCPUPercentActive = round(float64(srvCPU1-srvCPU0) / float64(time.Since(idleStart)) * 100)
	}
	d.StasisdRSSMiB = round(processRSS(b.srv.cmd.Process.Pid))
	b.add(Row{Group: "density", Name: "host memory per idle active sandbox (PSS)",
		Stasis: summarize("MiB", pss), StasisOp: fmt.Sprintf("sum of PSS over the sandbox cgroup's processes (sentry, gofer, systrap stubs), %d idle stasis/minimal sandboxes", len(pss)),
		Note: "for large footprints this sum counts application memory about twice (see the *_active_pss_mib and *_active_cgroup_mib figures of the pause rows); the cgroup row below does not",
		Raw:  summarize("MiB", rawPss), RawOp: fmt.Sprintf("same, %d idle runsc containers (sleep as init)", len(rawPss))})
	b.add(Row{Group: "density", Name: "memory cgroup usage per idle active sandbox",
		Stasis: summarize("MiB", cg), StasisOp: "memory cgroup usage (includes page cache charged to it)",
		Raw: summarize("MiB", rawCg), RawOp: "same"})
	b.add(Row{Group: "density", Name: "CPU per idle active sandbox (% of one core)",
		Stasis: summarize("%", stasisCPU), StasisOp: fmt.Sprintf("cpuacct of the sandbox cgroup over %s", b.cfg.IdleCPUWindow),
		Raw: summarize("%", rawCPU), RawOp: "same"})

	// Health of the crowd: a command in (up to 10 of) them, and a list
	// call. Each sandbox's first command after idling is timed apart from
	// a second one right after it: the first pays for waking an idle
	// sandbox (its agent connection, its spare shell, the sentry's
	// threads), the second is what the crowd alone costs a command.
	var execD, execAgainD durations
	step := max(1, len(boxes)/10)
	for i := 0; i < len(boxes); i += step {
		bx := boxes[i]
		dt, err := timed(func() error { _, err := bx.exec(ctx, "true"); return err })
		if err != nil {
			errs = append(errs, fmt.Errorf("exec with %d active: %w", len(boxes), err))
			break
		}
		execD.add(dt)
		dt, err = timed(func() error { _, err := bx.exec(ctx, "true"); return err })
		if err != nil {
			errs = append(errs, fmt.Errorf("second exec with %d active: %w", len(boxes), err))
			break
		}
		execAgainD.add(dt)
	}
	b.add(Row{Group: "density", Name: fmt.Sprintf("exec `true` with %d active sandboxes", len(boxes)),
		Stasis: execD.stat(), StasisOp: "POST /exec, the first command in each of up to 10 of them after they idled"})
	b.add(Row{Group: "density", Name: fmt.Sprintf("exec `true` with %d active sandboxes, second in a row", len(boxes)),
		Stasis: execAgainD.stat(), StasisOp: "POST /exec again in the same sandbox right after the first"})
	listRow := func(n int) {
		var ld durations
		for i := 0; i < 5; i++ {
			dt, err := timed(func() error { var l []sandboxJSON; return b.srv.do(ctx, "GET", "/sandboxes", nil, &l) })
			if err != nil {
				errs = append(errs, err)
				return
			}
			ld.add(dt)
		}
		b.add(Row{Group: "density", Name: fmt.Sprintf("GET /sandboxes with %d sandboxes", n),
			Stasis: ld.stat(), StasisOp: "list"})
	}
	listRow(len(boxes))

	// Paused: pause the active ones, then create and pause more up to the
	// bound, DensityWorkers at a time (one by one, 2,000 take hours).
	var pauseD, fillCreateD durations
	var pausedBoxes []*box
	var snap []float64
	var mu sync.Mutex
	pauseOne := func(bx *box) error {
		dt, err := timed(func() error { return bx.pause(ctx) })
		if err != nil {
			return err
		}
		mu.Lock()
		pauseD.add(dt)
		pausedBoxes = append(pausedBoxes, bx)
		mu.Unlock()
		return nil
	}
	pausedStart := time.Now()
	var failed atomic.Value
	var stoppedByTime, stoppedByMemory atomic.Bool
	// fill runs job(i) for i in [0, n) on DensityWorkers workers until
	// one fails, the time budget is spent or memory runs low.
	fill := func(n int, job func(i int) error) {
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < b.cfg.DensityWorkers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil && failed.Load() == nil {
					if time.Since(pausedStart) > b.cfg.DensityBudget {
						stoppedByTime.Store(true)
						return
					}
					if memLow(b.cfg.MinMemAvailable) {
						stoppedByMemory.Store(true)
						return
					}
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					if err := job(i); err != nil {
						failed.CompareAndSwap(nil, err.Error())
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	active := boxes
	fill(min(len(active), b.cfg.MaxPaused), func(i int) error { return pauseOne(active[i]) })
	memAvail2 := meminfo()["MemAvailable"]
	d.MemAvailableRecoveredMiB = round(float64(memAvail2-memAvail1) / mib)
	fill(b.cfg.MaxPaused-len(active), func(int) error {
		var bx *box
		dt, err := timed(func() (err error) { bx, err = b.srv.create(ctx, b.name("paused"), tmplMinimal, 0); return err })
		if err != nil {
			return err
		}
		mu.Lock()
		fillCreateD.add(dt)
		boxes = append(boxes, bx)
		mu.Unlock()
		return pauseOne(bx)
	})
	d.PausedStoppedByTime = stoppedByTime.Load()
	d.PausedStoppedByMemory = stoppedByMemory.Load()
	if f, ok := failed.Load().(string); ok {
		d.PausedFailure = f
	}
	d.FillWorkers = b.cfg.DensityWorkers
	var list []sandboxJSON
	if err := b.srv.do(ctx, "GET", "/sandboxes", nil, &list); err != nil {
		errs = append(errs, err)
	}
	for _, sb := range list {
		if sb.Status == "paused" {
			d.PausedHeld++
			snap = append(snap, float64(sb.Usage.SnapshotBytes)/mib)
		}
	}
	d.PausedReachedBound = d.PausedFailure == "" && !d.PausedStoppedByTime && !d.PausedStoppedByMemory && d.PausedHeld >= b.cfg.MaxPaused
	d.SnapshotDiskMiB = round(float64(dirSize(filepath.Join(b.srv.dataDir, "snapshots"))) / mib)
	b.add(Row{Group: "density", Name: "pause an idle stasis/minimal sandbox",
		Stasis: pauseD.stat(), StasisOp: "POST /sandboxes/{id}/pause, up to " + strconv.Itoa(b.cfg.MaxPaused) + " paused"})
	if len(fillCreateD) > 0 {
		b.add(Row{Group: "density", Name: fmt.Sprintf("create while filling up with paused sandboxes, %d at a time", b.cfg.DensityWorkers),
			Stasis: fillCreateD.stat(), StasisOp: fmt.Sprintf("POST /sandboxes from stasis/minimal, each then paused; %d workers create and pause at once, so each create shares the host with up to %d others' creates or pauses", b.cfg.DensityWorkers, b.cfg.DensityWorkers-1)})
	}
	b.add(Row{Group: "density", Name: "disk per paused idle sandbox",
		Stasis: summarize("MiB", snap), StasisOp: "usage.snapshot_bytes"})
	listRow(len(list))

	// The crowd still works: resume 5 of them, from the first paused to
	// the last, and run a command in each.
	d.PausedSeconds = roundSecs(time.Since(pausedStart))
	if len(pausedBoxes) > 0 {
		var resD durations
		var sample []*box
		for i := range 5 {
			if j := i * (len(pausedBoxes) - 1) / 4; len(sample) == 0 || sample[len(sample)-1] != pausedBoxes[j] {
				sample = append(sample, pausedBoxes[j])
			}
		}
		for _, bx := range sample {
			dt, err := timed(func() error {
				if err := bx.resume(ctx); err != nil {
					return err
				}
				_, err := bx.exec(ctx, "true")
				return err
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("resume among %d paused: %w", d.PausedHeld, err))
				continue
			}
			resD.add(dt)
		}
		b.add(Row{Group: "density", Name: fmt.Sprintf("resume + exec among %d paused", d.PausedHeld),
			Stasis: resD.stat(), StasisOp: "POST resume + POST /exec, in up to 5 of them spread from the first paused to the last, one after the other"})
	}

	// Delete them all (4 at a time) and time it.
	t0 := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	var delErr atomic.Value
	for _, bx := range boxes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := bx.delete(context.WithoutCancel(ctx)); err != nil && !isAPIStatus(err, 404) {
				delErr.CompareAndSwap(nil, err.Error())
			}
		}()
	}
	wg.Wait()
	d.DeleteAllSeconds = roundSecs(time.Since(t0))
	d.DeleteAllCount = len(boxes)
	if e, ok := delErr.Load().(string); ok {
		errs = append(errs, errors.New("delete: "+e))
	}
	boxes = nil
	slices.Sort(snap)
	return errors.Join(errs...)
}

// memLow reports whether the host's MemAvailable is under floor bytes.
func memLow(floor int64) bool {
	avail, ok := meminfo()["MemAvailable"]
	return ok && avail < floor
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
