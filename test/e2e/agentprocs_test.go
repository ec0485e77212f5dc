package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// The agent runs with one P per vCPU (GOMAXPROCS in its environment: less
// runtime memory in every checkpoint), and commands do not inherit it; a
// sandbox that sets GOMAXPROCS itself keeps its value, for commands and
// agent alike.
func TestAgentProcs(t *testing.T) {
	srv := testenv.StartServer(t)
	agentEnv := func(id string) []string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(srv.DataDir(), "sandboxes", id, "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct {
			Process struct{ Env []string } `json:"process"`
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		return cfg.Process.Env
	}

	c, sb := create(t, srv, map[string]any{"from_template": "stasis/minimal"})
	if env := agentEnv(sb.ID); !slices.Contains(env, "GOMAXPROCS=1") {
		t.Errorf("the agent's environment has no GOMAXPROCS=1: %q", env)
	}
	if got := c.sh("echo ${GOMAXPROCS-unset}"); got != "unset" {
		t.Errorf("a command sees GOMAXPROCS=%s", got)
	}

	c, sb = create(t, srv, map[string]any{"from_template": "stasis/minimal", "env_vars": map[string]string{"GOMAXPROCS": "4"}})
	if env := agentEnv(sb.ID); slices.Contains(env, "GOMAXPROCS=1") || !slices.Contains(env, "GOMAXPROCS=4") {
		t.Errorf("the sandbox's own GOMAXPROCS=4: agent's environment %q", env)
	}
	if got := c.sh("echo ${GOMAXPROCS-unset}"); got != "4" {
		t.Errorf("a command sees GOMAXPROCS=%s, want the sandbox's 4", got)
	}
}
