package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/stasis-sandbox/stasis/internal/api"
	"github.com/stasis-sandbox/stasis/internal/cluster"
	"github.com/stasis-sandbox/stasis/internal/preview"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// clusterFlags say who this node is among others sharing one database.
type clusterFlags struct {
	nodeName, advertiseURL, cpuFeatures, nodeKeyFile string
	lease                                            time.Duration
}

func (f *clusterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.nodeName, "node-name", os.Getenv("STASIS_NODE_NAME"), "this node's name in a cluster; unique per node (default: the host name)")
	fs.StringVar(&f.advertiseURL, "advertise-url", os.Getenv("STASIS_ADVERTISE_URL"), "URL other nodes reach this node's API on (default: http://LISTEN)")
	fs.StringVar(&f.cpuFeatures, "cpu-features", os.Getenv("STASIS_CPU_FEATURES"), "CPU flags (as in /proc/cpuinfo, comma-separated) every node of the cluster must have, so snapshots restore on any node; a node whose CPU lacks one refuses to start. Set the same value on every node")
	fs.StringVar(&f.nodeKeyFile, "node-key-file", "", "key that sandboxes' agent tokens and preview links are derived from, created 0600 at first start (default DATA_DIR/node.key); every node of a cluster must use the same key, or a sandbox resumed on another node cannot be reached")
	fs.DurationVar(&f.lease, "node-lease", 15*time.Second, "a node that has not heartbeat for this long is declared lost: its active sandboxes fail and its paused ones resume elsewhere")
}

// resolve fills the defaults and checks the values: a bad flag stops the
// node before it touches anything.
func (f *clusterFlags) resolve(listen string) error {
	if f.nodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--node-name: no host name to default to: %w", err)
		}
		f.nodeName = h
	}
	if f.advertiseURL == "" {
		host, port, err := net.SplitHostPort(listen)
		if err != nil {
			return fmt.Errorf("--advertise-url: cannot derive it from --listen %q: %w", listen, err)
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			// Others cannot dial a wildcard; the host name is a guess that
			// works on a LAN. Set --advertise-url when it does not.
			if host, err = os.Hostname(); err != nil {
				return fmt.Errorf("--advertise-url: %w", err)
			}
		}
		f.advertiseURL = "http://" + net.JoinHostPort(host, port)
	}
	u, err := url.Parse(f.advertiseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--advertise-url %q: want http(s)://HOST:PORT", f.advertiseURL)
	}
	if f.lease < time.Second {
		return fmt.Errorf("--node-lease %s: must be at least 1s", f.lease)
	}
	return cluster.CheckHostFeatures(f.cpuFeatures)
}

// clustered reports whether the database is one several nodes share.
func clustered(databaseURL string) bool {
	return strings.HasPrefix(databaseURL, "postgres://") || strings.HasPrefix(databaseURL, "postgresql://")
}

// nodeHooks is what this node does as membership changes.
type nodeHooks struct {
	svc      *sandbox.Service
	lease    time.Duration
	log      *slog.Logger
	draining atomic.Bool // a drain's pauses are under way
}

func (h *nodeHooks) Load(ctx context.Context) (int64, int) { return h.svc.Load(ctx) }

func (h *nodeHooks) NodeLost(ctx context.Context, name string) {
	n, err := h.svc.FailLostNode(ctx, name, fmt.Sprintf(
		"node %s was lost (no heartbeat for %s): the sandbox ran there and its processes are gone", name, h.lease))
	if err != nil {
		h.log.Warn("failing a lost node's sandboxes", "node", name, "err", err)
	}
	if n > 0 {
		h.log.Warn("sandboxes of a lost node marked failed", "node", name, "count", n)
	}
}

func (h *nodeHooks) Reconcile(ctx context.Context, self store.Node) {
	h.svc.StopMovedAway(ctx)
	if self.State == store.NodeDraining && h.draining.CompareAndSwap(false, true) {
		// Paused, the sandboxes upload their snapshots and resume elsewhere.
		go func() {
			defer h.draining.Store(false)
			h.log.Info("draining: pausing this node's active sandboxes", "node", self.Name)
			h.svc.PauseOwn(ctx)
		}()
	}
}

// joinCluster registers this node in the shared store and puts the router
// in front of its API, so any node answers any request; forks through
// apiSrv place their children over the nodes.
func joinCluster(ctx context.Context, f clusterFlags, st store.Store, svc *sandbox.Service, apiSrv *api.Server, local *preview.Router, log *slog.Logger) (http.Handler, *cluster.Membership, error) {
	m := cluster.NewMembership(cluster.MembershipConfig{
		Registry: st,
		Hooks:    &nodeHooks{svc: svc, lease: f.lease, log: log},
		Self: store.Node{Name: f.nodeName, URL: f.advertiseURL,
			CPUFeatures: strings.Join(cluster.ParseFeatures(f.cpuFeatures), ","), Version: version},
		Lease:  f.lease,
		Logger: log,
	})
	if err := m.Join(ctx); err != nil {
		return nil, nil, err
	}
	dir := cluster.StoreDirectory{Store: st}
	apiSrv.UsePeers(cluster.NewPeers(f.nodeName, dir, f.lease))
	rt := cluster.NewRouter(cluster.RouterConfig{
		Self:      f.nodeName,
		Directory: dir,
		Forwarder: cluster.NewForwarder(f.nodeName, log),
		Local:     local,
		Lease:     f.lease,
		SandboxID: api.DataPlaneID,
		// Preview URLs are forwarded like the data plane.
		HostSandboxID: local.SandboxID,
		Logger:        log,
	})
	return rt, m, nil
}
