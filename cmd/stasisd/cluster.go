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
	"github.com/stasis-sandbox/stasis/internal/e2b"
	"github.com/stasis-sandbox/stasis/internal/preview"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// clusterFlags say who this node is among others sharing one database.
type clusterFlags struct {
	nodeName, advertiseURL, cpuFeatures, nodeKeyFile string
	advertiseE2BURL                                  string // "" when this node serves no E2B listener
	lease                                            time.Duration
}

func (f *clusterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.nodeName, "node-name", os.Getenv("STASIS_NODE_NAME"), "this node's name in a cluster; unique per node (default: the host name)")
	fs.StringVar(&f.advertiseURL, "advertise-url", os.Getenv("STASIS_ADVERTISE_URL"), "URL other nodes reach this node's API on (default: http://LISTEN)")
	fs.StringVar(&f.advertiseE2BURL, "advertise-e2b-url", os.Getenv("STASIS_ADVERTISE_E2B_URL"), "URL other nodes reach this node's E2B listener on, to forward E2B traffic for its sandboxes (default: http://E2B_LISTEN; none when --e2b-listen is empty)")
	fs.StringVar(&f.cpuFeatures, "cpu-features", os.Getenv("STASIS_CPU_FEATURES"), "CPU flags (as in /proc/cpuinfo, comma-separated) every node of the cluster must have, so snapshots restore on any node; a node whose CPU lacks one refuses to start. Set the same value on every node")
	fs.StringVar(&f.nodeKeyFile, "node-key-file", "", "key that sandboxes' agent tokens and preview links are derived from, created 0600 at first start (default DATA_DIR/node.key); every node of a cluster must use the same key, or a sandbox resumed on another node cannot be reached")
	fs.DurationVar(&f.lease, "node-lease", 15*time.Second, "a node that has not heartbeat for this long is declared lost: its active sandboxes fail and its paused ones resume elsewhere")
}

// resolve fills the defaults and checks the values: a bad flag stops the
// node before it touches anything.
func (f *clusterFlags) resolve(listen, e2bListen string) error {
	if f.nodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--node-name: no host name to default to: %w", err)
		}
		f.nodeName = h
	}
	var err error
	if f.advertiseURL, err = advertised("--advertise-url", f.advertiseURL, "--listen", listen); err != nil {
		return err
	}
	if e2bListen == "" {
		f.advertiseE2BURL = "" // nothing to forward E2B traffic to
	} else if f.advertiseE2BURL, err = advertised("--advertise-e2b-url", f.advertiseE2BURL, "--e2b-listen", e2bListen); err != nil {
		return err
	}
	if f.lease < time.Second {
		return fmt.Errorf("--node-lease %s: must be at least 1s", f.lease)
	}
	return cluster.CheckHostFeatures(f.cpuFeatures)
}

// advertised checks the URL others reach a listener on (flag name), or
// derives it from the listen address (flag listenFlag) when not given.
func advertised(name, given, listenFlag, listen string) (string, error) {
	if given == "" {
		host, port, err := net.SplitHostPort(listen)
		if err != nil {
			return "", fmt.Errorf("%s: cannot derive it from %s %q: %w", name, listenFlag, listen, err)
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			// Others cannot dial a wildcard; the host name is a guess that
			// works on a LAN. Set the flag when it does not.
			if host, err = os.Hostname(); err != nil {
				return "", fmt.Errorf("%s: %w", name, err)
			}
		}
		given = "http://" + net.JoinHostPort(host, port)
	}
	u, err := url.Parse(given)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%s %q: want http(s)://HOST:PORT", name, given)
	}
	return given, nil
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

// joinCluster registers this node in the shared store and puts a router in
// front of its API and one in front of its E2B listener, so any node
// answers any request of either protocol; forks through apiSrv place their
// children over the nodes. It returns the API's router, then the E2B
// listener's.
func joinCluster(ctx context.Context, f clusterFlags, st store.Store, svc *sandbox.Service, apiSrv *api.Server, local *preview.Router, e2bLocal http.Handler, log *slog.Logger) (http.Handler, http.Handler, *cluster.Membership, error) {
	m := cluster.NewMembership(cluster.MembershipConfig{
		Registry: st,
		Hooks:    &nodeHooks{svc: svc, lease: f.lease, log: log},
		Self: store.Node{Name: f.nodeName, URL: f.advertiseURL, E2BURL: f.advertiseE2BURL,
			CPUFeatures: strings.Join(cluster.ParseFeatures(f.cpuFeatures), ","), Version: version},
		Lease:  f.lease,
		Logger: log,
	})
	if err := m.Join(ctx); err != nil {
		return nil, nil, nil, err
	}
	dir, fwd := cluster.StoreDirectory{Store: st}, cluster.NewForwarder(f.nodeName, log)
	apiSrv.UsePeers(cluster.NewPeers(f.nodeName, dir, f.lease))
	rt := cluster.NewRouter(cluster.RouterConfig{
		Self:      f.nodeName,
		Directory: dir,
		Forwarder: fwd,
		Local:     local,
		Lease:     f.lease,
		SandboxID: api.DataPlaneID,
		// Preview URLs are forwarded like the data plane.
		HostSandboxID: local.SandboxID,
		Logger:        log,
	})
	// E2B traffic goes to the owner's E2B listener, answered in E2B's
	// error format when that node cannot be reached.
	e2bRt := cluster.NewRouter(cluster.RouterConfig{
		Self:       f.nodeName,
		Directory:  dir,
		Forwarder:  fwd,
		Local:      e2bLocal,
		Lease:      f.lease,
		Classify:   e2b.Route,
		Address:    func(c cluster.Candidate) string { return c.E2BURL },
		WriteError: e2b.RoutingError,
		Logger:     log,
	})
	return rt, e2bRt, m, nil
}
