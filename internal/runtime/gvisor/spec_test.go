package gvisor

import (
	"slices"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/runtime"
)

// The agent is told the memory budget, and the host cgroup gets headroom
// above it, so that the agent's watchdog, not the host's OOM killer (which
// would kill the whole sandbox), deals with a command that outgrows it.
func TestSpecMemoryBudgetAndHeadroom(t *testing.T) {
	spec := runtime.Spec{ID: "x", RootFS: "/r", AgentPath: "/a", Env: []string{"A=1"}, MemoryMiB: 256, VCPU: 1}
	s := ociSpec(spec, "/run/netns/x", "stasis/x")
	if !slices.Contains(s.Process.Env, "STASIS_MEMORY_LIMIT_MIB=256") || !slices.Contains(s.Process.Env, "STASIS_VCPU=1") {
		t.Errorf("env %q lacks the memory budget or the CPU limit", s.Process.Env)
	}
	mem := s.Linux.Resources.Memory
	if mem == nil || mem.Limit == nil || *mem.Limit != (256+32+256)<<20 {
		t.Fatalf("memory limit %+v, want %d", mem, (256+32+256)<<20)
	}
	if p := s.Linux.Resources.Pids; p == nil || p.Limit == nil || *p.Limit != 4*256+512 {
		t.Fatalf("pids limit %+v", p)
	}
	for mib, want := range map[int]int64{
		64:    (64 + 8 + 256) << 20,
		1024:  (1024 + 128 + 256) << 20,
		16384: (16384 + 2048 + 256) << 20,
	} {
		if got := hostMemoryLimit(mib); got != want || got < int64(mib)<<20+memoryHeadroomMiB<<20 {
			t.Errorf("hostMemoryLimit(%d) = %d, want %d", mib, got, want)
		}
	}
	if got := hostPidsLimit(16384); got != 4*4096+512 {
		t.Errorf("hostPidsLimit(16384) = %d", got)
	}

	// Without a memory limit there is no budget to tell.
	spec.MemoryMiB = 0
	s = ociSpec(spec, "/run/netns/x", "stasis/x")
	for _, kv := range s.Process.Env {
		if len(kv) > len(memoryLimitEnv) && kv[:len(memoryLimitEnv)+1] == memoryLimitEnv+"=" {
			t.Errorf("env has %q without a memory limit", kv)
		}
	}
	if s.Linux.Resources.Memory != nil {
		t.Errorf("memory limit without MemoryMiB: %+v", s.Linux.Resources.Memory)
	}
}

// The agent runs with one P per vCPU (GOMAXPROCS, marked as its own so it
// hides it from commands), unless the sandbox's environment sets GOMAXPROCS
// itself: then that value is the commands' and the agent's, as before.
func TestSpecAgentProcs(t *testing.T) {
	spec := runtime.Spec{ID: "x", RootFS: "/r", AgentPath: "/a", Env: []string{"A=1"}, MemoryMiB: 256, VCPU: 1}
	env := ociSpec(spec, "/run/netns/x", "stasis/x").Process.Env
	if !slices.Contains(env, "GOMAXPROCS=1") || !slices.Contains(env, agentProcsEnv+"=1") {
		t.Errorf("env %q lacks the agent's GOMAXPROCS", env)
	}
	spec.VCPU = 3
	if env := ociSpec(spec, "/run/netns/x", "stasis/x").Process.Env; !slices.Contains(env, "GOMAXPROCS=3") {
		t.Errorf("3 vCPUs: env %q", env)
	}
	spec.Env = []string{"GOMAXPROCS=8"}
	env = ociSpec(spec, "/run/netns/x", "stasis/x").Process.Env
	if slices.Contains(env, "GOMAXPROCS=3") || slices.Contains(env, agentProcsEnv+"=1") || !slices.Contains(env, "GOMAXPROCS=8") {
		t.Errorf("a sandbox's own GOMAXPROCS: env %q", env)
	}
}
