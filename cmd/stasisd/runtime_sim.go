//go:build stasis_sim

package main

// SIMULATION BUILD ONLY. This file exists only in stasisd built with
// `-tags stasis_sim` (scripts/sim-cluster.sh); `make build` has no
// --runtime flag. With --runtime sim, sandboxes are entries in a map with a
// fake agent (internal/runtime/sim), and no network namespace, firewall or
// egress proxy is set up: the node exercises the control plane (API,
// store, cluster) at scale, and runs no code.

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/stasis-sandbox/stasis/internal/api"
	"github.com/stasis-sandbox/stasis/internal/e2b"
	"github.com/stasis-sandbox/stasis/internal/health"
	"github.com/stasis-sandbox/stasis/internal/images"
	"github.com/stasis-sandbox/stasis/internal/metrics"
	"github.com/stasis-sandbox/stasis/internal/netpool"
	"github.com/stasis-sandbox/stasis/internal/runtime/sim"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
)

func registerSimFlags(fs *flag.FlagSet, f *serveFlags) {
	fs.StringVar(&f.runtime, "runtime", "gvisor", "SIMULATION BUILD: gvisor, or sim (no sandboxes: a fake agent per node, for control-plane scale tests)")
}

// setupSim is setup for --runtime sim: the same store, service, API and
// cluster membership, with the sim driver and no host networking.
func setupSim(ctx context.Context, f serveFlags, log *slog.Logger) (_ *node, err error) {
	switch f.runtime {
	case "gvisor":
		return nil, nil
	case "sim":
	default:
		return nil, fmt.Errorf("--runtime %q: want gvisor or sim", f.runtime)
	}
	log.Warn("SIMULATION: --runtime sim runs no sandboxes; for control-plane scale tests only")
	dataDir := f.dataDir
	if f.imagesDir == "" {
		f.imagesDir = filepath.Join(dataDir, "images")
	}
	if f.imagesDir, err = filepath.Abs(f.imagesDir); err != nil {
		return nil, fmt.Errorf("images dir: %w", err)
	}
	agent, err := os.Executable() // any file: the sim driver never runs it
	if err != nil {
		return nil, err
	}
	nodeKey, st, err := openState(ctx, &f, dataDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	sec, err := openSecrets(f.net, dataDir, st)
	if err != nil {
		return nil, err
	}
	if err := setupAPIKey(ctx, st, dataDir, log); err != nil {
		return nil, err
	}
	drv, err := sim.New()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			drv.Close()
		}
	}()
	checks := health.New(health.Config{Store: st.Check, Runsc: "/bin/true", DataDir: dataDir,
		MinFreeBytes: uint64(max(f.minFreeDiskMiB, 0)) << 20})
	uploads, snapCache, err := f.snap.open(ctx, dataDir, st, log)
	if err != nil {
		return nil, err
	}
	reg := metrics.New()
	nodeName := ""
	if clustered(f.databaseURL) {
		nodeName = f.cluster.nodeName
	}
	svc, err := sandbox.New(sandbox.Config{
		Store: st, NodeName: nodeName, Driver: drv,
		Images:      images.NewManager(f.imagesDir),
		SnapshotDir: filepath.Join(dataDir, "snapshots"),
		AgentPath:   agent, AgentDir: filepath.Join(dataDir, "agents"),
		MaxLivePerTeam: f.maxLive, WarmWindow: f.warmWindow, Metrics: reg,
		NodeKey: nodeKey, Logger: log, DefaultTemplate: f.template,
		DefaultVCPU: f.vcpu, DefaultMemMiB: f.memMiB, DefaultDiskMiB: f.diskMiB,
		Storage: checks, Secrets: sec, Uploads: uploads, SnapshotCache: snapCache,
	})
	if err != nil {
		return nil, err
	}
	if err := svc.Recover(ctx); err != nil {
		return nil, err
	}
	handler := api.New(svc, st, reg, log)
	handler.UseHealth(checks)
	handler.UseSecrets(sec)
	// An empty pool: no sandbox has a link, so previews answer "not running".
	pool, err := netpool.New(netpool.Config{Prefix: f.netnsPrefix, IfPrefix: ifPrefix(f.netnsPrefix)})
	if err != nil {
		return nil, err
	}
	previews := previewRouter(f.net, svc, pool, nodeKey, handler, log)
	n := &node{svc: svc, api: previews, e2b: e2b.New(svc, st, log), store: st, uploads: uploads, sim: drv}
	if nodeName != "" {
		if n.api, n.e2b, n.member, err = joinCluster(ctx, f.cluster, st, svc, handler, previews, n.e2b, log); err != nil {
			return nil, err
		}
	}
	log.Info("sim runtime ready", "fake_agent", drv.Addr())
	return n, nil
}
