package agent

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Environment variables read by ConfigFromEnv. Every variable starting with
// EnvPrefix is removed from the agent's environment and never reaches a child.
const (
	EnvPrefix         = "STASIS_"
	EnvToken          = "STASIS_AGENT_TOKEN"
	EnvDefaultUser    = "STASIS_DEFAULT_USER"
	EnvDefaultWorkdir = "STASIS_DEFAULT_WORKDIR"
	EnvListen         = "STASIS_AGENT_LISTEN"
	// EnvMemoryLimit is the sandbox's memory budget in MiB (the memory_mib
	// it was created with). The watchdog keeps the sandbox's memory use
	// within it; the host cgroup allows some headroom above it for gVisor's
	// own overhead, so the watchdog acts before the host's OOM killer would
	// kill the whole sandbox.
	EnvMemoryLimit = "STASIS_MEMORY_LIMIT_MIB"
	// EnvVCPU is the sandbox's CPU limit in cores (gVisor shows at least
	// two CPUs whatever the limit); the watchdog's pace depends on it.
	EnvVCPU = "STASIS_VCPU"
)

// DefaultListen is the agent's listen address unless STASIS_AGENT_LISTEN says
// otherwise (runtime.AgentPort).
const DefaultListen = ":49983"

// Config configures a Server.
type Config struct {
	// Token is the per-sandbox secret every request must present. Required.
	Token string
	// DefaultUser runs commands and owns written files unless a request says
	// otherwise. Empty means root.
	DefaultUser string
	// DefaultWorkdir is the commands' working directory unless a request says
	// otherwise. Empty means the user's home directory if it exists, else /.
	DefaultWorkdir string
	// Listen is the TCP listen address (used by cmd/stasis-agent).
	Listen string
	// Env is the environment ("K=V") every child starts from; HOME, USER and
	// LOGNAME of the target user and the request's env are added to it.
	Env []string
	// MemoryLimitMiB is the sandbox's memory budget (STASIS_MEMORY_LIMIT_MIB)
	// for cmd/stasis-agent's watchdog; 0: none given.
	MemoryLimitMiB int
	// VCPU is the sandbox's CPU limit in cores (STASIS_VCPU); 0: none given.
	VCPU int
	// MaxProcs, if positive, is the RLIMIT_NPROC of every command: a fork
	// bomb's forks fail with EAGAIN once the command's user has that many
	// tasks (threads included). gVisor enforces it even for root, which
	// lacks CAP_SYS_RESOURCE and CAP_SYS_ADMIN in a sandbox. The agent
	// itself stays unlimited, so it can always create the threads it needs.
	// Commands of the agent's own user get it as soft and hard limit, those
	// of other users a little more, as soft limit only (see forkExec).
	MaxProcs int
	// NoSpareShell turns off the spare shell that is started ahead of the
	// next command (see spare.go).
	NoSpareShell bool
}

// ConfigFromEnv builds a Config from the process environment, then removes
// every STASIS_* variable from it (os.Unsetenv) so that neither the token nor
// any other agent setting leaks to the commands the agent runs.
func ConfigFromEnv() (Config, error) {
	cfg := Config{
		Token:          os.Getenv(EnvToken),
		DefaultUser:    os.Getenv(EnvDefaultUser),
		DefaultWorkdir: os.Getenv(EnvDefaultWorkdir),
		Listen:         os.Getenv(EnvListen),
	}
	memLimit, vcpu := os.Getenv(EnvMemoryLimit), os.Getenv(EnvVCPU)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, EnvPrefix) {
			os.Unsetenv(k)
		}
	}
	cfg.Env = os.Environ()
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.Token == "" {
		return cfg, errors.New(EnvToken + " is not set")
	}
	if memLimit != "" {
		n, err := strconv.Atoi(memLimit)
		if err != nil || n < 0 {
			return cfg, fmt.Errorf("%s must be a number of MiB, got %q", EnvMemoryLimit, memLimit)
		}
		cfg.MemoryLimitMiB = n
	}
	if vcpu != "" {
		n, err := strconv.Atoi(vcpu)
		if err != nil || n < 0 {
			return cfg, fmt.Errorf("%s must be a number of cores, got %q", EnvVCPU, vcpu)
		}
		cfg.VCPU = n
	}
	if cfg.DefaultWorkdir != "" && !strings.HasPrefix(cfg.DefaultWorkdir, "/") {
		return cfg, fmt.Errorf("%s must be absolute, got %q", EnvDefaultWorkdir, cfg.DefaultWorkdir)
	}
	return cfg, nil
}
