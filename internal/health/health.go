// Package health checks what stasisd needs to do its job: its store
// answers a query, its runtime binary runs, and the disk holding its data
// dir has room. GET /health reports it to load balancers, and the disk
// check also guards everything that takes new disk space.
package health

import (
	"context"
	"fmt"
	"os/exec"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Config says what to check.
type Config struct {
	Store        func(ctx context.Context) error // a real query
	Runsc        string                          // the runtime binary
	DataDir      string
	MinFreeBytes uint64 // below this, the disk is "full" for new sandboxes
}

// runtimeCheckEvery spaces out executions of the runtime binary: a load
// balancer may ask every second, and the binary does not change often.
const runtimeCheckEvery = 30 * time.Second

// Checker runs the checks. It is safe for concurrent use.
type Checker struct {
	cfg Config

	mu        sync.Mutex
	runtimeAt time.Time
	runtimeOK error
}

// New returns a checker.
func New(cfg Config) *Checker { return &Checker{cfg: cfg} }

// Check is one check's result.
type Check struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// DiskCheck is the disk's result, with the numbers behind it.
type DiskCheck struct {
	Check
	Path         string `json:"path"`
	FreeBytes    uint64 `json:"free_bytes"`
	MinFreeBytes uint64 `json:"min_free_bytes"`
}

// Report is every check's result; Status is "ok" only if all passed.
type Report struct {
	Status  string    `json:"status"` // "ok" or "unhealthy"
	Store   Check     `json:"store"`
	Runtime Check     `json:"runtime"`
	Disk    DiskCheck `json:"disk"`
}

// OK reports whether every check passed.
func (r *Report) OK() bool { return r.Status == "ok" }

// Check runs every check.
func (c *Checker) Check(ctx context.Context) *Report {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r := &Report{Store: result(c.cfg.Store(ctx)), Runtime: result(c.runtime(ctx))}
	r.Disk.Path, r.Disk.MinFreeBytes = c.cfg.DataDir, c.cfg.MinFreeBytes
	var err error
	r.Disk.FreeBytes, err = c.free()
	if err == nil {
		err = c.room(r.Disk.FreeBytes)
	}
	r.Disk.Check = result(err)
	r.Status = "ok"
	if !r.Store.OK || !r.Runtime.OK || !r.Disk.OK {
		r.Status = "unhealthy"
	}
	return r
}

// Room returns an error saying how full the disk is when its free space is
// below the minimum; nil when there is room.
func (c *Checker) Room() error {
	free, err := c.free()
	if err != nil {
		return err
	}
	return c.room(free)
}

func (c *Checker) room(free uint64) error {
	if free < c.cfg.MinFreeBytes {
		return fmt.Errorf("the disk holding %s has %d MiB free, below the %d MiB kept free (--min-free-disk-mib)",
			c.cfg.DataDir, free>>20, c.cfg.MinFreeBytes>>20)
	}
	return nil
}

// free is the space unprivileged writers may still use on the data dir's
// filesystem (what a sandbox's files and snapshots can grow into).
func (c *Checker) free() (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(c.cfg.DataDir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", c.cfg.DataDir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// runtime runs `runsc --version`, at most once per runtimeCheckEvery while
// it succeeds (a failure is re-checked at every call).
func (c *Checker) runtime(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runtimeOK == nil && !c.runtimeAt.IsZero() && time.Since(c.runtimeAt) < runtimeCheckEvery {
		return nil
	}
	out, err := exec.CommandContext(ctx, c.cfg.Runsc, "--version").CombinedOutput()
	if err != nil {
		err = fmt.Errorf("%s --version: %w: %.200s", c.cfg.Runsc, err, out)
	}
	c.runtimeAt, c.runtimeOK = time.Now(), err
	return err
}

func result(err error) Check {
	if err != nil {
		return Check{Error: err.Error()}
	}
	return Check{OK: true}
}
