package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stasis-sandbox/stasis/internal/cluster"
	"github.com/stasis-sandbox/stasis/internal/firewall"
	"github.com/stasis-sandbox/stasis/internal/fsutil"
	"github.com/stasis-sandbox/stasis/internal/netpool"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// ---- cluster: resume on another node, and the forwarding hop ----

// clusterPlan is the cluster phase's holder sizes (MiB), the repetitions of
// each, and how many exec pairs measure the forwarding hop.
func (c *Config) clusterPlan() (sizes, reps []int, hopPairs int) {
	if c.Quick {
		return []int{10}, []int{2}, 10
	}
	return []int{10, 200, 1024}, []int{5, 4, 3}, 100
}

// routerSettle is how long to wait after a node's state changes before
// routing on it: each node's router re-reads the node list at most once a
// second (cluster.Router's node list TTL).
const routerSettle = 1500 * time.Millisecond

// benchCluster measures two things a cluster adds, on two stasisd nodes
// sharing a real PostgreSQL and a real S3 server (versitygw), all on
// loopback: resuming a paused sandbox on the other node (download, check,
// restore) against resuming it where it was paused, and the latency the
// forwarding hop adds to an exec sent to the node that does not run the
// sandbox.
func (b *bench) benchCluster(ctx context.Context) error {
	cl, err := startBenchCluster(ctx, b.cfg)
	if err != nil {
		return err
	}
	defer cl.stop()
	b.logf("  two nodes (%s, %s) on PostgreSQL and versitygw", cl.nodes[0].URL, cl.nodes[1].URL)
	var errs []error
	if err := b.clusterHop(ctx, cl); err != nil {
		errs = append(errs, fmt.Errorf("forwarding hop: %w", err))
	}
	sizes, reps, _ := b.cfg.clusterPlan()
	for i, size := range sizes {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		if err := b.clusterResume(ctx, cl, size, reps[i]); err != nil {
			errs = append(errs, fmt.Errorf("resume on another node, %d MiB: %w", size, err))
		}
	}
	return errors.Join(errs...)
}

// benchClusterEnv is the phase's cluster: PostgreSQL, versitygw and two
// stasisd nodes, each with its own data dir, port, netns prefix and subnet.
type benchClusterEnv struct {
	tmp      string
	pg       *testenv.Postgres
	s3       *testenv.S3
	nodes    []*server // nodes[i] is named names[i]
	names    []string
	subnets  []string
	prefixes []string
}

func startBenchCluster(ctx context.Context, cfg *Config) (_ *benchClusterEnv, err error) {
	tmp, err := os.MkdirTemp(cfg.TempDir, "stasis-bench-cluster-")
	if err != nil {
		return nil, err
	}
	cl := &benchClusterEnv{tmp: tmp, names: []string{"bench-a", "bench-b"},
		subnets: cfg.ClusterSubnets[:], prefixes: cfg.ClusterPrefixes[:]}
	defer func() {
		if err != nil {
			cl.stop()
		}
	}()
	// Links an earlier, interrupted run left behind.
	cl.removeLinks()
	// PostgreSQL runs as the postgres user, which must reach its
	// directory: the system temp dir, not -tmp (whose parents may be 0700).
	if cl.pg, err = testenv.LaunchPostgres(""); err != nil {
		return cl, err
	}
	if cl.s3, err = testenv.LaunchS3(tmp); err != nil {
		return cl, err
	}
	// The nodes share the node key (a sandbox's agent token must be valid
	// on whichever node restores it) and the secrets key, as in a real
	// cluster (docs/CLUSTER.md).
	var keyFlags []string
	for _, name := range []string{"node-key", "secrets-key"} {
		key := make([]byte, 32)
		rand.Read(key)
		path := filepath.Join(tmp, name)
		if err := os.WriteFile(path, key, 0o600); err != nil {
			return cl, err
		}
		keyFlags = append(keyFlags, "--"+name+"-file", path)
	}
	for i, name := range cl.names {
		args := append([]string{"--database-url", cl.pg.URL, "--snapshot-url", cl.s3.URL("bench"),
			"--node-name", name, "--dns-upstream", "127.0.0.1:1"}, keyFlags...)
		n, err := startServerEnv(ctx, cfg, cl.s3.Env(), cl.subnets[i], cl.prefixes[i], args...)
		if err != nil {
			return cl, fmt.Errorf("node %s: %w", name, err)
		}
		cl.nodes = append(cl.nodes, n)
	}
	return cl, nil
}

// stop deletes every sandbox and stops everything the cluster started,
// however far its start got.
func (cl *benchClusterEnv) stop() {
	for _, n := range cl.nodes {
		n.stop() // deletes every sandbox of the cluster (forwarded to owners), then stops
	}
	cl.removeLinks()
	if cl.s3 != nil {
		cl.s3.Stop()
	}
	if cl.pg != nil {
		cl.pg.Close()
	}
	os.RemoveAll(cl.tmp)
}

// removeLinks tears down any network namespace and veth the nodes left
// (a node killed before it could remove them), and their firewall chains.
func (cl *benchClusterEnv) removeLinks() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i, prefix := range cl.prefixes {
		// The prefixes are at most 6 characters: stasisd's interface
		// prefix is the netns prefix itself.
		if rng, err := netip.ParsePrefix(cl.subnets[i]); err == nil {
			if pool, err := netpool.New(netpool.Config{Prefix: prefix, IfPrefix: prefix, Range: rng}); err == nil {
				pool.Cleanup(ctx, nil)
			}
		}
		firewall.New(prefix).Remove(ctx)
	}
}

// owner returns the index of the node that owns bx.
func (cl *benchClusterEnv) owner(ctx context.Context, bx *box) (int, error) {
	sb, err := bx.get(ctx)
	if err != nil {
		return 0, err
	}
	for i, name := range cl.names {
		if sb.Node == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("sandbox %s names node %q, not one of %v", bx.ID, sb.Node, cl.names)
}

// setNodeState drains or activates node i (POST /nodes/{name}/drain|activate).
func (cl *benchClusterEnv) setNodeState(ctx context.Context, i int, action string) error {
	return cl.nodes[i].do(ctx, "POST", "/nodes/"+cl.names[i]+"/"+action, nil, nil)
}

// clusterHop measures exec `true` on a sandbox sent to the node that runs
// it and to the other node, which forwards it there, alternately.
func (b *bench) clusterHop(ctx context.Context, cl *benchClusterEnv) error {
	_, _, pairs := b.cfg.clusterPlan()
	bx, err := cl.nodes[0].create(ctx, b.name("clhop"), tmplMinimal, 0)
	if err != nil {
		return err
	}
	defer bx.delete(context.WithoutCancel(ctx))
	own, err := cl.owner(ctx, bx)
	if err != nil {
		return err
	}
	direct := &box{s: cl.nodes[own], ID: bx.ID, Token: bx.Token}
	hop := &box{s: cl.nodes[1-own], ID: bx.ID, Token: bx.Token}
	// The hop must really be one: the owner answers through the other node.
	if served, err := servedBy(ctx, hop); err != nil {
		return err
	} else if served != cl.names[own] {
		return fmt.Errorf("exec through %s was served by %q, not by the owner %s", cl.names[1-own], served, cl.names[own])
	}
	for range 3 { // warm up both paths (connections, caches)
		for _, x := range []*box{direct, hop} {
			if _, err := x.exec(ctx, "true"); err != nil {
				return err
			}
		}
	}
	var dDirect, dHop, diff durations
	for i := range pairs {
		order := []*box{direct, hop}
		if i%2 == 1 {
			order[0], order[1] = hop, direct
		}
		var took [2]time.Duration
		for j, x := range order {
			// Let the agent replace its spare shell first, as for isolated
			// commands (see the exec group).
			sleepCtx(ctx, 40*time.Millisecond)
			d, err := timed(func() error { _, err := x.exec(ctx, "true"); return err })
			if err != nil {
				return err
			}
			took[j] = d
		}
		if i%2 == 1 {
			took[0], took[1] = took[1], took[0]
		}
		dDirect.add(took[0])
		dHop.add(took[1])
		diff.add(took[1] - took[0])
	}
	hs, ds := dHop.stat(), dDirect.stat()
	b.add(Row{Group: "cluster", Name: hopRow,
		Stasis: hs, StasisOp: "POST /exec {command:\"true\"} sent to the node that does not run the sandbox; its router looks the owner up in PostgreSQL and proxies the request to the owner over a kept-alive HTTP/1.1 connection",
		Raw: ds, RawOp: "the same request sent to the owner node (its router looks the owner up too, then serves it)",
		Extra: map[string]any{
			"added_ms_p50":         round(hs.Median - ds.Median),
			"added_ms_p95":         round(hs.P95 - ds.P95),
			"paired_difference_ms": diff.stat(),
		}})
	return nil
}

// hopRow is the forwarding hop's row (the cluster goal reads it).
const hopRow = "exec `true` through the other node (one forwarding hop)"

// servedBy sends an exec through x and returns the node that served it
// (the X-Stasis-Node response header).
func servedBy(ctx context.Context, x *box) (string, error) {
	req, err := x.dataReq(ctx, "POST", "/exec", strings.NewReader(`{"command":"true"}`))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := x.s.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", &apiError{Status: resp.StatusCode, Body: string(body)}
	}
	return resp.Header.Get(cluster.NodeHeader), nil
}

// clusterResume measures, for a sandbox holding size MiB, resume →
// first command on the node that paused it against the same on the other
// node, which downloads the snapshot from the object store, checks and
// restores it. Each repetition does both: pause and resume on the owner
// (local), then pause again, drain the owner and resume through the other
// node (which then owns it: the next repetition runs the other way round).
func (b *bench) clusterResume(ctx context.Context, cl *benchClusterEnv, size, reps int) error {
	bx, err := cl.nodes[0].create(ctx, b.name(fmt.Sprintf("clres%d", size)), tmplBase, memFor(size))
	if err != nil {
		return err
	}
	defer func() { bx.delete(context.WithoutCancel(ctx)) }()
	home, err := cl.owner(ctx, bx)
	if err != nil {
		return err
	}
	bx.s = cl.nodes[home]
	if err := bx.startHolder(ctx, size); err != nil {
		return err
	}
	var local, other, localCall, otherCall, download durations
	var cachedLocal, cachedS3 []float64
	for range reps {
		// Local: pause, wait until portable (as the other-node case must),
		// resume on the same node.
		syscall.Sync()
		if err := bx.pause(ctx); err != nil {
			return err
		}
		if err := bx.waitPortable(ctx); err != nil {
			return err
		}
		if f, ok := newestCachedFraction(filepath.Join(bx.s.dataDir, "snapshots", bx.ID)); ok {
			cachedLocal = append(cachedLocal, f)
		}
		t0 := time.Now()
		if err := bx.resume(ctx); err != nil {
			return err
		}
		localCall.add(time.Since(t0))
		if _, err := bx.exec(ctx, aliveCmd); err != nil {
			return fmt.Errorf("after local resume: %w", err)
		}
		local.add(time.Since(t0))

		// The other node: pause again, drain the owner so that it cannot
		// take the resume, resume through the other node.
		syscall.Sync()
		if err := bx.pause(ctx); err != nil {
			return err
		}
		if err := bx.waitPortable(ctx); err != nil {
			return err
		}
		if f, ok := newestCachedFraction(filepath.Join(cl.s3.Dir(), cl.s3.Bucket), bx.ID); ok {
			cachedS3 = append(cachedS3, f)
		}
		away := 1 - home
		rb := &box{s: cl.nodes[away], ID: bx.ID, Token: bx.Token}
		var callTook, firstTook time.Duration
		logBefore := len(cl.nodes[away].logLines(downloadedMsg))
		err := cl.drained(ctx, home, func() error {
			t0 := time.Now()
			if err := rb.resume(ctx); err != nil {
				return err
			}
			callTook = time.Since(t0)
			if _, err := rb.exec(ctx, aliveCmd); err != nil {
				return fmt.Errorf("after resume on the other node: %w", err)
			}
			firstTook = time.Since(t0)
			return nil
		})
		if err != nil {
			return err
		}
		otherCall.add(callTook)
		other.add(firstTook)
		if now, err := cl.owner(ctx, rb); err != nil {
			return err
		} else if now != away {
			return fmt.Errorf("resume through %s left the sandbox on %s", cl.names[away], cl.names[now])
		}
		if d, ok := lastDownload(cl.nodes[away].logLines(downloadedMsg), logBefore, bx.ID); ok {
			download.add(d)
		} else {
			return fmt.Errorf("%s logged no download of %s: the resume did not fetch the snapshot", cl.names[away], bx.ID)
		}
		bx, home = rb, away
	}
	otherStat, localStat := other.stat(), local.stat()
	b.add(Row{Group: "cluster", Name: "resume on the other node (download + restore) → first command OK, " + touchedLabel(size),
		Stasis: otherStat, StasisOp: "owner drained, POST /sandboxes/{id}/resume to the other node (claim, download from S3 with SHA-256 checks, restore), then exec of a command checking the holder",
		Raw: localStat, RawOp: "local resume: POST /sandboxes/{id}/resume to the node that paused it (restore from its own disk), then the same exec",
		Extra: map[string]any{
			"download_ms":                  download.stat(),
			"resume_call_other_node_ms":    otherCall.stat(),
			"resume_call_local_ms":         localCall.stat(),
			"pages_in_page_cache_local":    summarize("fraction", cachedLocal),
			"pages_in_page_cache_s3_files": summarize("fraction", cachedS3),
		}})
	return nil
}

// drained runs f while node i is draining (it takes no resumes), and makes
// it active again afterwards, whatever f did.
func (cl *benchClusterEnv) drained(ctx context.Context, i int, f func() error) error {
	if err := cl.setNodeState(ctx, i, "drain"); err != nil {
		return fmt.Errorf("drain %s: %w", cl.names[i], err)
	}
	sleepCtx(ctx, routerSettle)
	err := f()
	if aerr := cl.setNodeState(context.WithoutCancel(ctx), i, "activate"); aerr != nil && err == nil {
		err = fmt.Errorf("activate %s: %w", cl.names[i], aerr)
	}
	sleepCtx(ctx, routerSettle)
	return err
}

// downloadedMsg is what a node logs once it has downloaded a sandbox's
// snapshot to resume it (with sandbox=ID ms=N).
const downloadedMsg = "downloaded the snapshot from the object store"

var logMsRE = regexp.MustCompile(` ms=(\d+)`)

// lastDownload reads the download time of sandbox id from the log lines
// after the first skip.
func lastDownload(lines []string, skip int, id string) (time.Duration, bool) {
	for i := len(lines) - 1; i >= skip && i >= 0; i-- {
		if !strings.Contains(lines[i], "sandbox="+id) {
			continue
		}
		if m := logMsRE.FindStringSubmatch(lines[i]); m != nil {
			ms, _ := strconv.Atoi(m[1])
			return time.Duration(ms) * time.Millisecond, true
		}
	}
	return 0, false
}

// newestCachedFraction is the share of the newest pages.img under dir
// (whose path contains every one of within) that is in the page cache.
func newestCachedFraction(dir string, within ...string) (float64, bool) {
	var newest string
	var newestMod time.Time
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "pages.img" {
			return nil
		}
		for _, w := range within {
			if !strings.Contains(path, w) {
				return nil
			}
		}
		if fi, err := d.Info(); err == nil && fi.ModTime().After(newestMod) {
			newest, newestMod = path, fi.ModTime()
		}
		return nil
	})
	if newest == "" {
		return 0, false
	}
	f, err := os.Open(newest)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, false
	}
	return fsutil.CachedFraction(f, fi.Size())
}
