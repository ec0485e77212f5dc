package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// Environment variables read by ConfigFromEnv. Every variable starting with
// EnvPrefix is removed from the agent's environment and never reaches a child.
const (
	EnvPrefix = "STASIS_"
	// EnvTokenSHA256 is the hex SHA-256 of the token requests must present
	// (agentproto.EnvTokenSHA256). The token itself is never in the
	// environment: code in the sandbox can read /proc/1/environ.
	EnvTokenSHA256 = agentproto.EnvTokenSHA256
	// EnvPlainToken is how older stasisd versions passed the token in
	// clear. It is refused, so that a caller cannot put it back there.
	EnvPlainToken     = "STASIS_AGENT_TOKEN"
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
	// EnvOwnProcs says GOMAXPROCS was set for the agent alone (one P per
	// vCPU, which the Go runtime reads before main): it is removed from the
	// environment too, so commands pick their own.
	EnvOwnProcs = "STASIS_AGENT_GOMAXPROCS"
)

// DefaultListen is the agent's listen address unless STASIS_AGENT_LISTEN says
// otherwise (runtime.AgentPort).
const DefaultListen = ":49983"

// Config configures a Server.
type Config struct {
	// TokenHash is the SHA-256 of the per-sandbox secret every request must
	// present (agentproto.TokenHash). Required. The agent never learns the
	// secret itself, except from requests presenting it.
	TokenHash [sha256.Size]byte
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
// every STASIS_* variable from it (os.Unsetenv) so that no agent setting
// leaks to the commands the agent runs. (That does not change the process's
// initial environment, which /proc/1/environ shows: hence only the token's
// hash is ever passed.)
func ConfigFromEnv() (Config, error) {
	tokenHash := os.Getenv(EnvTokenSHA256)
	_, plainToken := os.LookupEnv(EnvPlainToken)
	cfg := Config{
		DefaultUser:    os.Getenv(EnvDefaultUser),
		DefaultWorkdir: os.Getenv(EnvDefaultWorkdir),
		Listen:         os.Getenv(EnvListen),
	}
	memLimit, vcpu := os.Getenv(EnvMemoryLimit), os.Getenv(EnvVCPU)
	if os.Getenv(EnvOwnProcs) != "" {
		os.Unsetenv("GOMAXPROCS")
	}
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
	if plainToken {
		return cfg, errors.New(EnvPlainToken + " is refused: code in the sandbox could read it; pass its SHA-256 in " + EnvTokenSHA256)
	}
	if tokenHash == "" {
		return cfg, errors.New(EnvTokenSHA256 + " is not set")
	}
	h, err := hex.DecodeString(tokenHash)
	if err != nil || len(h) != sha256.Size {
		return cfg, fmt.Errorf("%s must be %d hex digits", EnvTokenSHA256, 2*sha256.Size)
	}
	copy(cfg.TokenHash[:], h)
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
