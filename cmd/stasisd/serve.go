package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
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
	"github.com/stasis-sandbox/stasis/internal/egress"
	"github.com/stasis-sandbox/stasis/internal/firewall"
	"github.com/stasis-sandbox/stasis/internal/images"
	"github.com/stasis-sandbox/stasis/internal/metrics"
	"github.com/stasis-sandbox/stasis/internal/netpool"
	"github.com/stasis-sandbox/stasis/internal/oci"
	"github.com/stasis-sandbox/stasis/internal/runtime/gvisor"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

const defaultTeam = "default"

type serveFlags struct {
	listen, dataDir, imagesDir, runsc, agent, template, logLevel, subnet, netnsPrefix string
	vcpu, memMiB, diskMiB, maxLive                                                    int
	warmWindow                                                                        time.Duration
	pauseOnShutdown                                                                   bool
	net                                                                               netFlags
}

func runServe(args []string) error {
	fs := flag.NewFlagSet("stasisd serve", flag.ContinueOnError)
	var f serveFlags
	fs.StringVar(&f.listen, "listen", imagesEnvOr("STASIS_LISTEN", "127.0.0.1:8080"), "address to serve the API on")
	fs.StringVar(&f.dataDir, "data-dir", imagesEnvOr("STASIS_DATA_DIR", "/var/lib/stasis"), "directory for the database, snapshots and runtime state")
	fs.StringVar(&f.imagesDir, "images-dir", os.Getenv("STASIS_IMAGES_DIR"), "directory of built images (default DATA_DIR/images)")
	fs.StringVar(&f.runsc, "runsc", os.Getenv("STASIS_RUNSC"), "runsc binary (default: the one make setup built, else runsc on PATH)")
	fs.StringVar(&f.agent, "agent", os.Getenv("STASIS_AGENT"), "static stasis-agent binary (default: next to stasisd)")
	fs.StringVar(&f.template, "default-template", "stasis/base", "template used when a create names none")
	fs.IntVar(&f.vcpu, "default-vcpu", 1, "vCPUs of a sandbox when the create names none")
	fs.IntVar(&f.memMiB, "default-memory-mib", 1024, "memory of a sandbox when the create names none")
	fs.StringVar(&f.subnet, "subnet", "169.254.0.0/16", "link-local range sandbox links are allocated from")
	fs.StringVar(&f.netnsPrefix, "netns-prefix", "stasis", "name prefix of this server's network namespaces (distinct per server on one host)")
	fs.IntVar(&f.diskMiB, "default-disk-mib", 10240, "writable-layer quota of a sandbox when the create names none (0: unlimited)")
	fs.IntVar(&f.maxLive, "max-sandboxes-per-team", 50, "running (not paused) sandboxes a team may hold; 0 = unlimited")
	fs.DurationVar(&f.warmWindow, "warm-pause-window", 0, "keep a paused sandbox frozen in RAM this long after its snapshot is on disk, so resuming it is instant (0: free its memory at once)")
	fs.BoolVar(&f.pauseOnShutdown, "pause-on-shutdown", false, "on SIGTERM, pause every active sandbox (default: leave them running for the next start to re-adopt)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	f.net.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	svc, srv, cleanup, err := setup(ctx, f, log)
	if err != nil {
		return err
	}
	defer cleanup()

	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.listen, err)
	}
	httpSrv := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	log.Info("stasisd serving", "addr", "http://"+ln.Addr().String(), "data_dir", f.dataDir, "version", version)
	errc := make(chan error, 1)
	go func() { errc <- httpSrv.Serve(ln) }()
	go svc.RunTimers(ctx)
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
		svc.PauseAll(context.Background())
	} else {
		log.Info("sandboxes keep running; the next start re-adopts them")
	}
	svc.WaitSealed() // paused sandboxes' snapshots on disk before we go
	return err
}

// setup opens the store, the runtime and the service, and recovers state
// left by a previous run.
func setup(ctx context.Context, f serveFlags, log *slog.Logger) (_ *sandbox.Service, _ http.Handler, _ func(), err error) {
	if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
		return nil, nil, nil, fmt.Errorf("data dir: %w", err)
	}
	dataDir, _ := filepath.Abs(f.dataDir)
	if f.imagesDir == "" {
		f.imagesDir = filepath.Join(dataDir, "images")
	}
	// runsc refuses a rootfs reached through a symlink; resolve it once here.
	if err := os.MkdirAll(f.imagesDir, 0o755); err != nil {
		return nil, nil, nil, fmt.Errorf("images dir: %w", err)
	}
	if f.imagesDir, err = filepath.Abs(f.imagesDir); err != nil {
		return nil, nil, nil, fmt.Errorf("images dir: %w", err)
	}
	if f.imagesDir, err = filepath.EvalSymlinks(f.imagesDir); err != nil {
		return nil, nil, nil, fmt.Errorf("images dir: %w", err)
	}
	runsc, err := findRunsc(f.runsc)
	if err != nil {
		return nil, nil, nil, err
	}
	agent, err := findAgent(f.agent)
	if err != nil {
		return nil, nil, nil, err
	}
	nodeKey, err := loadOrCreateKey(filepath.Join(dataDir, "node.key"))
	if err != nil {
		return nil, nil, nil, err
	}
	st, err := store.Open(ctx, filepath.Join(dataDir, "stasis.db"))
	if err != nil {
		return nil, nil, nil, err
	}
	if err := setupAPIKey(ctx, st, dataDir, log); err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	subnet, err := netip.ParsePrefix(f.subnet)
	if err != nil {
		st.Close()
		return nil, nil, nil, fmt.Errorf("--subnet: %w", err)
	}
	pool, err := netpool.New(netpool.Config{Prefix: f.netnsPrefix, IfPrefix: ifPrefix(f.netnsPrefix), Range: subnet})
	if err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	if err := firewall.New(ifPrefix(f.netnsPrefix)).Install(ctx); err != nil {
		st.Close()
		return nil, nil, nil, fmt.Errorf("sandbox firewall: %w", err)
	}
	var svc *sandbox.Service // the egress proxy asks it for rules
	eg, err := startEgress(ctx, f.net, st, pool, ifPrefix(f.netnsPrefix),
		func(ctx context.Context, id string) (*egress.Policy, error) { return svc.NetworkPolicy(ctx, id) }, log)
	if err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	driver, err := gvisor.New(gvisor.Config{
		Runsc:    runsc,
		RootDir:  filepath.Join(dataDir, "runsc"),
		StateDir: filepath.Join(dataDir, "sandboxes"),
		Net:      pool,
	})
	if err != nil {
		eg.stop(ctx, pool)
		st.Close()
		return nil, nil, nil, err
	}
	reg := metrics.New()
	svc, err = sandbox.New(sandbox.Config{
		Store:           st,
		Driver:          driver,
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
	})
	if err != nil {
		eg.stop(ctx, pool)
		st.Close()
		return nil, nil, nil, err
	}
	if err := svc.Recover(ctx); err != nil {
		eg.stop(ctx, pool)
		st.Close()
		return nil, nil, nil, err
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
	handler := previewRouter(f.net, svc, pool, nodeKey, api.New(svc, st, reg, log), log)
	return svc, handler, func() {
		eg.stop(context.Background(), pool)
		st.Close()
	}, nil
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
func setupAPIKey(ctx context.Context, st *store.Store, dataDir string, log *slog.Logger) error {
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
