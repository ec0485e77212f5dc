package agent

import (
	"errors"
	"fmt"
	"os"
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
	if cfg.DefaultWorkdir != "" && !strings.HasPrefix(cfg.DefaultWorkdir, "/") {
		return cfg, fmt.Errorf("%s must be absolute, got %q", EnvDefaultWorkdir, cfg.DefaultWorkdir)
	}
	return cfg, nil
}
