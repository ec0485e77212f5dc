package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/stasis-sandbox/stasis/internal/api"
	"github.com/stasis-sandbox/stasis/internal/cluster"
	"github.com/stasis-sandbox/stasis/internal/e2b"
	"github.com/stasis-sandbox/stasis/internal/egress"
	"github.com/stasis-sandbox/stasis/internal/firewall"
	"github.com/stasis-sandbox/stasis/internal/health"
	"github.com/stasis-sandbox/stasis/internal/httpguard"
	"github.com/stasis-sandbox/stasis/internal/images"
	"github.com/stasis-sandbox/stasis/internal/metrics"
	"github.com/stasis-sandbox/stasis/internal/netpool"
	"github.com/stasis-sandbox/stasis/internal/objstore"
	"github.com/stasis-sandbox/stasis/internal/oci"
	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/runtime/faultinject"
	"github.com/stasis-sandbox/stasis/internal/runtime/gvisor"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

const defaultTeam = "default"

type serveFlags struct {
	databaseURL                                                                                  string
	listen, e2bListen, dataDir, imagesDir, runsc, agent, template, logLevel, subnet, netnsPrefix string
	vcpu, memMiB, diskMiB, maxLive, linkMTU, linkSpares                                          int
	warmWindow                                                                                   time.Duration
	pauseOnShutdown                                                                              bool
	minFreeDiskMiB, maxUnauthenticated                                                           int
	bodyIdle                                                                                     time.Duration
	net                                                                                          netFlags
	cluster                                                                                      clusterFlags
	snap                                                                                         snapshotFlags
	runtime                                                                                      string // set only in stasis_sim builds (runtime_sim.go)
}

func runServe(args []string) error {
	fs := flag.NewFlagSet("stasisd serve", flag.ContinueOnError)
	var f serveFlags
	fs.StringVar(&f.listen, "listen", imagesEnvOr("STASIS_LISTEN", "127.0.0.1:8080"), "address to serve the API on")
	fs.StringVar(&f.e2bListen, "e2b-listen", imagesEnvOr("STASIS_E2B_LISTEN", "127.0.0.1:3000"), "address to serve E2B's protocol on (control plane and envd; empty: off)")
	fs.StringVar(&f.dataDir, "data-dir", imagesEnvOr("STASIS_DATA_DIR", "/var/lib/stasis"), "directory for the database, snapshots and runtime state")
	fs.StringVar(&f.databaseURL, "database-url", os.Getenv("STASIS_DATABASE_URL"), "state database: postgres://USER@HOST:PORT/DB for a cluster (default: SQLite at DATA_DIR/stasis.db)")
	fs.StringVar(&f.imagesDir, "images-dir", os.Getenv("STASIS_IMAGES_DIR"), "directory of built images (default DATA_DIR/images)")
	fs.StringVar(&f.runsc, "runsc", os.Getenv("STASIS_RUNSC"), "runsc binary (default: the one make setup built, else runsc on PATH)")
	fs.StringVar(&f.agent, "agent", os.Getenv("STASIS_AGENT"), "static stasis-agent binary (default: next to stasisd)")
	fs.StringVar(&f.template, "default-template", "stasis/base", "template used when a create names none")
	fs.IntVar(&f.vcpu, "default-vcpu", 1, "vCPUs of a sandbox when the create names none")
	fs.IntVar(&f.memMiB, "default-memory-mib", 1024, "memory of a sandbox when the create names none")
	fs.StringVar(&f.subnet, "subnet", "169.254.0.0/16", "link-local range sandbox links are allocated from")
	fs.IntVar(&f.linkMTU, "link-mtu", netpool.LinkMTU, "MTU of each sandbox's veth link (0: the kernel's default, 1500)")
	fs.IntVar(&f.linkSpares, "link-spares", 2, "network links kept built ahead (a netns and veth pair each), so a create or resume renames one instead of building it (0: none)")
	fs.StringVar(&f.netnsPrefix, "netns-prefix", "stasis", "name prefix of this server's network namespaces (distinct per server on one host)")
	fs.IntVar(&f.diskMiB, "default-disk-mib", 10240, "writable-layer quota of a sandbox when the create names none (0: unlimited)")
	fs.IntVar(&f.maxLive, "max-sandboxes-per-team", 50, "running (not paused) sandboxes a team may hold; 0 = unlimited")
	fs.DurationVar(&f.warmWindow, "warm-pause-window", 0, "keep a paused sandbox frozen in RAM this long after its snapshot is on disk, so resuming it is instant (0: free its memory at once)")
	fs.BoolVar(&f.pauseOnShutdown, "pause-on-shutdown", false, "on SIGTERM, pause every active sandbox (default: leave them running for the next start to re-adopt)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.IntVar(&f.minFreeDiskMiB, "min-free-disk-mib", 2048, "refuse new sandboxes, forks, template builds and saved snapshots (507 insufficient_storage), and report /health unhealthy, while the data dir's disk has less free space than this")
	fs.IntVar(&f.maxUnauthenticated, "max-unauthenticated-conns", 256, "connections that have not made an authenticated request; more are answered 503 server_busy and closed (0: unlimited)")
	fs.DurationVar(&f.bodyIdle, "body-idle-timeout", 30*time.Second, "cut off a request whose body sends nothing for this long (a flowing upload is never cut)")
	f.net.register(fs)
	f.cluster.register(fs)
	f.snap.register(fs)
	registerSimFlags(fs, &f)
	err := fs.Parse(args)
	if err != nil {
		return err
	}
	if err := f.cluster.resolve(f.listen, f.e2bListen); err != nil {
		return err
	}
	var level slog.Level
	if err = level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if f.dataDir, err = filepath.Abs(f.dataDir); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	own, err := claim(f.dataDir, f.listen, f.netnsPrefix)
	if err != nil {
		return err
	}
	defer own.release()
	ln := own.ln

	n, err := setup(ctx, f, log)
	if err != nil {
		ln.Close()
		return err
	}
	defer n.close(log)

	// Slow or silent clients cannot hold connections: headers must arrive
	// within ReadHeaderTimeout, bodies keep flowing (guard.BodyIdle), idle
	// keep-alives end, and connections that never authenticate are bounded.
	httpSrv := &http.Server{Handler: n.api, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	guard := httpguard.New(httpguard.Config{MaxUnauthenticated: f.maxUnauthenticated, BodyIdle: f.bodyIdle})
	log.Info("stasisd serving", "addr", "http://"+ln.Addr().String(), "data_dir", f.dataDir, "version", version)
	errc := make(chan error, 1)
	go func() { errc <- guard.Serve(httpSrv, ln) }()
	if f.e2bListen != "" {
		e2bSrv, err := serveE2B(f, n, log, errc)
		if err != nil {
			return err
		}
		defer e2bSrv.Close()
	}
	if n.member != nil {
		go n.member.Run(ctx)
	}
	go n.svc.RunTimers(ctx)
	go n.svc.RunHealthChecks(ctx)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Drain in-flight requests; sandboxes keep running and are re-adopted
	// by the next start.
	log.Info("shutting down: draining requests")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = httpSrv.Shutdown(sctx)
	if f.pauseOnShutdown {
		log.Info("pausing every active sandbox before exit")
		n.svc.PauseAll(context.Background())
	} else {
		log.Info("sandboxes keep running; the next start re-adopts them")
	}
	n.svc.WaitSealed() // paused sandboxes' snapshots on disk before we go
	return err
}

// node is what setup built: the service, its API, and the host resources
// behind them that a clean stop must release.
type node struct {
	svc     *sandbox.Service
	api     http.Handler
	e2b     http.Handler
	store   store.Store
	driver  *gvisor.Driver
	pool    *netpool.Pool
	fw      *firewall.Rules
	eg      *egressRun
	uploads *objstore.Uploader  // nil without --snapshot-url
	member  *cluster.Membership // nil on a single node
	sim     io.Closer           // the simulated runtime (stasis_sim builds only); then driver, pool, fw and eg are nil
}

// close releases the host resources of a clean stop. Running sandboxes
// outlive stasisd (the next start re-adopts them), so their links and the
// firewall that guards them stay while any runs; once none does, nothing
// of this server is left on the host.
func (n *node) close(log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Paused sandboxes still frozen in RAM have durable snapshots by now:
	// stop them rather than leave them to the next start.
	n.svc.DropWarm(ctx)
	if n.sim != nil {
		n.sim.Close()
		if n.uploads != nil {
			n.uploads.Close()
		}
		n.store.Close()
		return
	}
	if err := n.pool.Close(); err != nil {
		log.Warn("removing spare network links", "err", err)
	}
	if running, err := n.driver.List(ctx); err != nil {
		log.Warn("cannot tell which sandboxes still run; keeping their links and firewall", "err", err)
	} else if len(running) > 0 {
		log.Info("sandboxes keep running: their links and firewall chain stay", "running", len(running), "chain", n.fw.Chain())
	} else {
		if err := n.pool.Cleanup(ctx, nil); err != nil {
			log.Warn("removing network links", "err", err)
		}
		if err := n.fw.Remove(ctx); err != nil {
			log.Warn("removing the firewall chain", "chain", n.fw.Chain(), "err", err)
		}
	}
	// The egress proxy stops; its firewall rules go once no link is left.
	n.eg.stop(ctx, n.pool)
	if err := n.driver.Close(); err != nil {
		log.Warn("releasing runsc's mounts", "err", err)
	}
	if n.uploads != nil {
		n.uploads.Close() // unfinished uploads start again at the next start
	}
	n.store.Close()
}

// setup opens the store, the runtime and the service, and recovers state
// left by a previous run. The caller holds the data dir and the network
// names (see claim).
func setup(ctx context.Context, f serveFlags, log *slog.Logger) (_ *node, err error) {
	if n, err := setupSim(ctx, f, log); n != nil || err != nil {
		return n, err // stasis_sim builds with --runtime sim only
	}
	dataDir := f.dataDir
	if f.imagesDir == "" {
		f.imagesDir = filepath.Join(dataDir, "images")
	}
	// runsc refuses a rootfs reached through a symlink; resolve it once here.
	if err := os.MkdirAll(f.imagesDir, 0o755); err != nil {
		return nil, fmt.Errorf("images dir: %w", err)
	}
	if f.imagesDir, err = filepath.Abs(f.imagesDir); err != nil {
		return nil, fmt.Errorf("images dir: %w", err)
	}
	if f.imagesDir, err = filepath.EvalSymlinks(f.imagesDir); err != nil {
		return nil, fmt.Errorf("images dir: %w", err)
	}
	runsc, err := findRunsc(f.runsc)
	if err != nil {
		return nil, err
	}
	agent, err := findAgent(f.agent)
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
	inj, egressCA, err := newInjector(f.net, dataDir, sec, log)
	if err != nil {
		return nil, err
	}
	if err := setupAPIKey(ctx, st, dataDir, log); err != nil {
		return nil, err
	}
	subnet, err := netip.ParsePrefix(f.subnet)
	if err != nil {
		return nil, fmt.Errorf("--subnet: %w", err)
	}
	pool, err := netpool.New(netpool.Config{Prefix: f.netnsPrefix, IfPrefix: ifPrefix(f.netnsPrefix), Range: subnet, MTU: f.linkMTU})
	if err != nil {
		return nil, err
	}
	// Refreshes a chain a crashed run of this prefix left behind.
	fw := firewall.New(ifPrefix(f.netnsPrefix))
	if err := fw.Install(ctx); err != nil {
		return nil, fmt.Errorf("sandbox firewall: %w", err)
	}
	var svc *sandbox.Service // the egress proxy asks it for rules
	eg, err := startEgress(ctx, f.net, st, pool, ifPrefix(f.netnsPrefix),
		func(ctx context.Context, id string) (*egress.Policy, error) { return svc.NetworkPolicy(ctx, id) }, inj, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			eg.stop(ctx, pool)
		}
	}()
	driver, err := gvisor.New(gvisor.Config{
		Runsc:    runsc,
		RootDir:  filepath.Join(dataDir, "runsc"),
		StateDir: filepath.Join(dataDir, "sandboxes"),
		Net:      pool,
	})
	if err != nil {
		return nil, err
	}
	checks := health.New(health.Config{Store: st.Check, Runsc: runsc, DataDir: dataDir,
		MinFreeBytes: uint64(max(f.minFreeDiskMiB, 0)) << 20})
	var drv runtime.Driver = driver
	if file := os.Getenv(faultinject.Env); file != "" {
		// Test-only: end-to-end tests make the runtime fail on purpose.
		log.Warn("TEST ONLY: injecting runtime faults from "+faultinject.Env+"; never set it in production", "file", file)
		drv = faultinject.New(driver, file, log)
	}
	uploads, snapCache, err := f.snap.open(ctx, dataDir, st, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && uploads != nil {
			uploads.Close()
		}
	}()
	reg := metrics.New()
	nodeName := "" // a single node owns every sandbox
	if clustered(f.databaseURL) {
		nodeName = f.cluster.nodeName
	}
	svc, err = sandbox.New(sandbox.Config{
		Store:           st,
		NodeName:        nodeName,
		Driver:          drv,
		Images:          images.NewManager(f.imagesDir),
		SnapshotDir:     filepath.Join(dataDir, "snapshots"),
		AgentPath:       agent,
		AgentDir:        filepath.Join(dataDir, "agents"),
		MaxLivePerTeam:  f.maxLive,
		WarmWindow:      f.warmWindow,
		Metrics:         reg,
		OCI:             oci.NewPuller(filepath.Join(dataDir, "oci")),
		NodeKey:         nodeKey,
		Logger:          log,
		DefaultTemplate: f.template,
		DefaultVCPU:     f.vcpu,
		DefaultMemMiB:   f.memMiB,
		DefaultDiskMiB:  f.diskMiB,
		Storage:         checks,
		Secrets:         sec,
		EgressCA:        egressCA,
		Uploads:         uploads,
		SnapshotCache:   snapCache,
	})
	if err != nil {
		return nil, err
	}
	if err := svc.Recover(ctx); err != nil {
		return nil, err
	}
	// Network links of sandboxes that no longer run (a crash mid-create or
	// mid-delete) are orphans.
	if running, err := driver.List(ctx); err == nil {
		live := map[string]bool{}
		for _, inst := range running {
			live[inst.ID] = true
		}
		if err := pool.Cleanup(ctx, func(id string) bool { return live[id] }); err != nil {
			log.Warn("cleaning orphaned network links", "err", err)
		}
	}
	log.Info("runtime ready", "runsc", runsc, "agent", agent, "images_dir", f.imagesDir)
	handler := api.New(svc, st, reg, log)
	handler.UseHealth(checks)
	handler.UseSecrets(sec)
	previews := previewRouter(f.net, svc, pool, nodeKey, handler, log)
	var router, e2bRouter http.Handler = previews, e2b.New(svc, st, log)
	var member *cluster.Membership
	if nodeName != "" {
		if router, e2bRouter, member, err = joinCluster(ctx, f.cluster, st, svc, handler, previews, e2bRouter, log); err != nil {
			return nil, err
		}
	}
	pool.KeepSpares(f.linkSpares, func(err error) {
		log.Warn("a spare network link failed (creates and resumes build their own meanwhile)", "err", err)
	})
	return &node{svc: svc, api: router, e2b: e2bRouter, store: st, driver: driver, pool: pool, fw: fw, eg: eg, uploads: uploads, member: member}, nil
}

// openState loads (or creates) the node key and opens the store named by
// --database-url (default: SQLite in the data dir).
func openState(ctx context.Context, f *serveFlags, dataDir string) ([]byte, store.Store, error) {
	if f.cluster.nodeKeyFile == "" {
		f.cluster.nodeKeyFile = filepath.Join(dataDir, "node.key")
	}
	nodeKey, err := loadOrCreateKey(f.cluster.nodeKeyFile)
	if err != nil {
		return nil, nil, err
	}
	dbURL := f.databaseURL
	if dbURL == "" {
		dbURL = filepath.Join(dataDir, "stasis.db")
	}
	st, err := store.Open(ctx, dbURL)
	return nodeKey, st, err
}

// ifPrefix derives the (at most 6 character) veth name prefix from the netns prefix.
func ifPrefix(netnsPrefix string) string {
	if netnsPrefix == "stasis" {
		return "stx"
	}
	if len(netnsPrefix) > 6 {
		return netnsPrefix[:6]
	}
	return netnsPrefix
}

// setupAPIKey makes sure a usable API key exists: STASIS_API_KEY when set,
// otherwise a generated one written (0600) to DATA_DIR/api-key on first start.
func setupAPIKey(ctx context.Context, st store.Store, dataDir string, log *slog.Logger) error {
	if err := st.EnsureTeam(ctx, defaultTeam, "default"); err != nil {
		return err
	}
	if key := os.Getenv("STASIS_API_KEY"); key != "" {
		return st.AddAPIKey(ctx, defaultTeam, "STASIS_API_KEY", key)
	}
	n, err := st.CountAPIKeys(ctx)
	if err != nil || n > 0 {
		return err
	}
	key := store.NewSecret("ss_live_")
	path := filepath.Join(dataDir, "api-key")
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return fmt.Errorf("write initial API key: %w", err)
	}
	if err := st.AddAPIKey(ctx, defaultTeam, "initial", key); err != nil {
		return err
	}
	log.Info("created an API key; it is in the file shown (shown once, stored hashed)", "file", path)
	return nil
}

func loadOrCreateKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(b) == 32 {
		return b, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("node key: %w", err)
	}
	b = make([]byte, 32)
	rand.Read(b)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	return b, os.Rename(tmp, path)
}

// findRunsc resolves the runsc binary: an explicit path, else the pinned build
// `make setup` leaves in .cache next to bin/, else runsc on PATH.
func findRunsc(explicit string) (string, error) {
	if explicit != "" {
		return explicit, nil // gvisor.New validates it
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "..", ".cache", "runsc", "bin", "runsc")
		if _, err := os.Stat(p); err == nil {
			return filepath.Clean(p), nil
		}
	}
	if p, err := exec.LookPath("runsc"); err == nil {
		return p, nil
	}
	return "", errors.New("runsc not found: run `make setup`, or pass --runsc / set STASIS_RUNSC")
}

func findAgent(explicit string) (string, error) {
	p := explicit
	if p == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", err
		}
		p = filepath.Join(filepath.Dir(exe), "stasis-agent")
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("stasis-agent binary: %w (run `make build`, or pass --agent)", err)
	}
	if st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("stasis-agent binary %s is not executable", p)
	}
	return filepath.Abs(p)
}

// serveE2B serves E2B's protocol on --e2b-listen, with the same guards as
// the main API; its errors end the server like the main listener's.
func serveE2B(f serveFlags, n *node, log *slog.Logger, errc chan<- error) (*http.Server, error) {
	ln, err := net.Listen("tcp", f.e2bListen)
	if err != nil {
		return nil, fmt.Errorf("--e2b-listen: %w", err)
	}
	srv := &http.Server{Handler: n.e2b, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	guard := httpguard.New(httpguard.Config{MaxUnauthenticated: f.maxUnauthenticated, BodyIdle: f.bodyIdle})
	log.Info("serving E2B's protocol", "addr", "http://"+ln.Addr().String())
	go func() {
		if err := guard.Serve(srv, ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("e2b listener: %w", err)
		}
	}()
	return srv, nil
}
