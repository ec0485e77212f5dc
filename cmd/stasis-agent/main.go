// Command stasis-agent is the init process (PID 1) of every stasis sandbox.
// It reaps orphaned processes and serves stasisd's requests (exec, files) on
// the sandbox's network link; see internal/agent.
//
// Configuration comes from the environment, which it then scrubs of every
// STASIS_* variable: STASIS_AGENT_TOKEN_SHA256 (required: the SHA-256 of the
// token stasisd presents, never the token itself), STASIS_DEFAULT_USER,
// STASIS_DEFAULT_WORKDIR, STASIS_AGENT_LISTEN (default :49983),
// STASIS_MEMORY_LIMIT_MIB and STASIS_VCPU (the sandbox's limits, for the
// watchdog), STASIS_NAMESERVER (written to /etc/resolv.conf at boot),
// STASIS_EGRESS_CA (added to the trust store at boot, agent.InstallTrust),
// STASIS_AGENT_GOMAXPROCS (GOMAXPROCS is the agent's alone: scrubbed too).
//
// Its credentials are out of reach of the code it runs: it serves only
// connections from outside the sandbox (agent.HostOnly), and it makes itself
// non-dumpable, so that no process in the sandbox can read its memory or its
// /proc files (environ, maps, mem) or ptrace it.
//
// As PID 1 it also runs the sandbox's watchdog: an OOM killer that keeps the
// sandbox within its memory budget and a task limiter against fork bombs.
//
// Build it with scripts/build-agent.sh (static, its Go runtime patched with
// patches/go to start faster in gVisor; a plain CGO_ENABLED=0 go build works
// the same and starts a few milliseconds slower).

// The runtime does not name its memory mappings (a prctl system call per
// mapping): every system call costs a trap into gVisor, and the agent's
// start-up, which every cold create waits for, made 23 of them
// (docs/density/NOTES.md, "Inside runsc run and the Go start").
//
//go:debug decoratemappings=0
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

func main() {
	logger := log.New(os.Stderr, "stasis-agent: ", 0)
	if err := run(logger); err != nil {
		logger.Print(err)
		if os.Getpid() == 1 {
			// Exiting as PID 1 tears the sandbox down; that is the point,
			// stasisd sees the failure. Give the log a moment to get out.
			time.Sleep(100 * time.Millisecond)
		}
		os.Exit(1)
	}
}

func run(logger *log.Logger) error {
	// Commands run as root with the agent's capabilities; only this keeps
	// them out of its memory (the mm's flag, so it survives a checkpoint;
	// an execve resets it, so commands are unaffected).
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE, 0): %w", err)
	}
	nameserver := os.Getenv("STASIS_NAMESERVER") // read before ConfigFromEnv scrubs it
	egressCA := os.Getenv(agentproto.EnvEgressCA)
	cfg, err := agent.ConfigFromEnv()
	if err != nil {
		return err
	}
	// Listening first lets stasisd's health check connect and wait in the
	// backlog for its answer instead of being refused and polling again.
	ln, err := agent.Listen(cfg.Listen)
	if err != nil {
		return err
	}
	ln = agent.HostOnly(ln, logger)
	pid1 := os.Getpid() == 1 // asked once: each system call is a trap into gVisor
	// As PID 1 every orphan in the sandbox becomes our child: reap them all
	// (from the boot set-up on, below: no child exists before).
	reaper := agent.NewIdleReaper(pid1)
	defer reaper.Close()

	// As init, the agent is the sandbox's OOM killer and task limiter
	// (gVisor has neither); see agent.WatchdogConfig.
	watchdog := pid1
	var tasks int
	if watchdog {
		budget := cfg.MemoryLimitMiB
		if budget == 0 {
			budget = memTotalMiB()
		}
		tasks = agent.TaskLimit(budget)
		// Commands' RLIMIT_NPROC is a little higher than the number of
		// processes at which the watchdog kills a bomb: root's count
		// includes the agent's threads, and a bomb stopped by the rlimit
		// short of the watchdog's limit would spin there for ever.
		cfg.MaxProcs = tasks + tasks/4
	}
	srv, err := agent.New(cfg, reaper, logger)
	if err != nil {
		return err
	}
	// The sandbox's resolver and trust store are set up once the agent has
	// answered its first /health: their file writes wait on gVisor's gofer,
	// and every other request waits for them (Server.Boot). So does what
	// only commands need: the reaper and the signal handlers, whose first
	// signal.Notify costs a thread. Until then the agent runs the Go
	// runtime's three threads.
	booted := srv.Boot(func() error {
		var err error
		if pid1 {
			err = bootSetup(logger, nameserver, egressCA, cfg.DefaultUser)
		}
		reaper.Run()
		handleSignals(logger, srv, pid1)
		return err
	})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-booted:
		if err != nil {
			return err // as PID 1 this ends the sandbox: it cannot be used
		}
	case err := <-served:
		return err
	}
	if watchdog {
		// Started once the set-up is done: its first scan need not compete
		// with the start-up and the first health check for the CPU.
		wctx, stop := context.WithCancel(context.Background())
		defer stop()
		go srv.RunWatchdog(wctx, agent.WatchdogConfig{
			MemoryLimit:  uint64(cfg.MemoryLimitMiB) << 20,
			ProcessCost:  agent.DefaultProcessCost,
			MaxProcesses: tasks,
			GrowthRate:   uint64(cfg.VCPU) * agent.DefaultGrowthRatePerCPU, // 0: per CPU shown
		})
	}
	logger.Printf("pid %d listening on %s", os.Getpid(), ln.Addr())
	return <-served
}

// handleSignals shuts srv down on SIGTERM or SIGINT and, as PID 1,
// keeps stray signals from killing the agent.
func handleSignals(logger *log.Logger, srv *agent.Server, pid1 bool) {
	if pid1 {
		// Go exits on SIGHUP, SIGUSR1/2 and, for stderr, SIGPIPE; init must
		// not die of a stray signal. Notify rather than Ignore: ignored
		// dispositions would be inherited by every command.
		stray := make(chan os.Signal, 8)
		signal.Notify(stray, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE)
		go func() {
			for range stray {
			}
		}()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-sigs
		logger.Printf("%v: shutting down", sig)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
}

// bootSetup is what PID 1 prepares before the first command: /etc/resolv.conf
// pointing at stasisd's resolver (best effort, as an image may have it
// read-only) and the egress CA in the trust store (required: a sandbox that
// runs a command trusts it; until then the agent answers /health only).
func bootSetup(logger *log.Logger, nameserver, egressCA, user string) error {
	if nameserver != "" {
		if err := writeResolvConf(nameserver); err != nil {
			logger.Printf("writing /etc/resolv.conf: %v", err)
		}
	}
	if egressCA != "" {
		return agent.InstallTrust("/", []byte(egressCA), user)
	}
	return nil
}

// memTotalMiB is MemTotal from /proc/meminfo (0 if unknown).
func memTotalMiB() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb >> 10
		}
	}
	return 0
}

// writeResolvConf points the sandbox's resolver at stasisd's (the address
// in STASIS_NAMESERVER), replacing whatever the image has there: images
// often leave it empty or name a resolver of the machine they were built on.
func writeResolvConf(nameserver string) error {
	if net.ParseIP(nameserver) == nil {
		return fmt.Errorf("bad name server address %q", nameserver)
	}
	const path = "/etc/resolv.conf"
	os.Remove(path) // may be a (dangling) symlink
	return os.WriteFile(path, []byte("nameserver "+nameserver+"\noptions timeout:2 attempts:2\n"), 0o644)
}
