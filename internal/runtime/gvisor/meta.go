package gvisor

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/stasis-sandbox/stasis/internal/runtime"
)

// metaFile is the driver's own file in a checkpoint directory, next to
// runsc's images.
const metaFile = "stasis-gvisor.json"

// checkpointMeta records what a restore must reproduce and runsc does not
// check itself. The agent binary is mapped into the sandbox's memory: a
// restore with a different binary at the mount's source "succeeds" and
// leaves a sandbox whose agent hangs. So the binary's digest is recorded
// and compared.
type checkpointMeta struct {
	AgentSHA256 string `json:"agent_sha256"`
	AgentSize   int64  `json:"agent_size"`
}

func writeMeta(dir string, agent checkpointMeta) error {
	b, err := json.Marshal(agent)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, metaFile), b, 0o644); err != nil {
		return fmt.Errorf("writing checkpoint metadata: %w", err)
	}
	return nil
}

// bundle is what the driver reads back from a sandbox's config.json.
type bundle struct {
	Root struct {
		Path string `json:"path"`
	} `json:"root"`
	Mounts []struct {
		Destination string `json:"destination"`
		Source      string `json:"source"`
	} `json:"mounts"`
}

// readBundle reads id's current bundle.
func (d *Driver) readBundle(id string) (*bundle, error) {
	b, err := os.ReadFile(filepath.Join(d.sandboxDir(id), "config.json"))
	if err != nil {
		return nil, fmt.Errorf("reading bundle: %w", err)
	}
	var spec bundle
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("parsing bundle: %w", err)
	}
	return &spec, nil
}

// bundleAgent digests the agent binary named in id's current bundle.
func (d *Driver) bundleAgent(id string) (checkpointMeta, error) {
	spec, err := d.readBundle(id)
	if err != nil {
		return checkpointMeta{}, err
	}
	for _, m := range spec.Mounts {
		if m.Destination == runtime.AgentMountPath {
			return d.hashes.digest(m.Source)
		}
	}
	return checkpointMeta{}, errors.New("bundle has no agent mount")
}

// checkAgent fails if the checkpoint in dir was taken with a different agent
// binary than the one at agentPath. Checkpoints without metadata pass.
func (d *Driver) checkAgent(dir, agentPath string) error {
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var want checkpointMeta
	if err := json.Unmarshal(b, &want); err != nil {
		return fmt.Errorf("parsing %s: %w", metaFile, err)
	}
	got, err := d.hashes.digest(agentPath)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("agent %s (sha256 %s) is not the binary the sandbox was checkpointed with (sha256 %s): restore needs the same agent binary",
			agentPath, got.AgentSHA256, want.AgentSHA256)
	}
	return nil
}

// hashCache remembers digests by file identity, so an unchanged agent
// binary is hashed once per process.
type hashCache struct {
	mu sync.Mutex
	m  map[fileKey]checkpointMeta
}

type fileKey struct {
	path       string
	dev, ino   uint64
	size, mtim int64
}

func (c *hashCache) digest(path string) (checkpointMeta, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return checkpointMeta{}, fmt.Errorf("agent: %w", err)
	}
	key := fileKey{path: path, size: fi.Size(), mtim: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		key.dev, key.ino = uint64(st.Dev), st.Ino
	}
	c.mu.Lock()
	m, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		return m, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return checkpointMeta{}, fmt.Errorf("agent: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return checkpointMeta{}, fmt.Errorf("hashing agent: %w", err)
	}
	m = checkpointMeta{AgentSHA256: hex.EncodeToString(h.Sum(nil)), AgentSize: n}
	c.mu.Lock()
	if c.m == nil {
		c.m = make(map[fileKey]checkpointMeta)
	}
	c.m[key] = m
	c.mu.Unlock()
	return m, nil
}
