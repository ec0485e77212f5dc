// Package runtime defines the interface between the sandbox service and the
// isolation engine that actually runs sandboxes. The default implementation is
// gVisor (package runtime/gvisor); a Firecracker driver can slot in later
// without the API layer noticing.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// AgentPort is the TCP port stasis-agent listens on inside every sandbox.
const AgentPort = 49983

// AgentMountPath is where the agent binary (Spec.AgentPath) appears inside
// every sandbox, read-only; it runs as PID 1. Images must contain an empty
// regular file at this path to serve as the mount point: the engine would
// otherwise create it in the shared image directory.
const AgentMountPath = "/.stasis/agent"

// ErrNotFound is returned when the driver has no sandbox with the given ID.
var ErrNotFound = errors.New("runtime: sandbox not found")

// ErrVersionMismatch is what a Restore fails with (as a *VersionMismatchError)
// when the snapshot was taken by another version of the engine, which will
// not restore it: an upgrade of runsc, or a node on another version. The
// snapshot itself is intact and restores with the version that took it.
var ErrVersionMismatch = errors.New("runtime: snapshot taken by another engine version")

// VersionMismatchError names the two versions of an ErrVersionMismatch.
type VersionMismatchError struct {
	Snapshot, Current string // empty when the engine did not say
}

func (e *VersionMismatchError) Error() string {
	return fmt.Sprintf("the snapshot was taken by runsc %s; this server runs %s", orUnknown(e.Snapshot), orUnknown(e.Current))
}

func (e *VersionMismatchError) Is(target error) bool { return target == ErrVersionMismatch }

func orUnknown(s string) string {
	if s == "" {
		return "(version unknown)"
	}
	return s
}

// Spec describes one sandbox to the driver. The same Spec must be passed to
// Create and to every later Restore of that sandbox: the engine validates that
// a restored sandbox has the configuration it was checkpointed with.
type Spec struct {
	ID        string   // sandbox ID, also used as the engine's container ID
	Hostname  string   // hostname inside the sandbox
	RootFS    string   // host path of the image root; shared read-only, writes go to an overlay
	AgentPath string   // host path of the static stasis-agent binary
	Env       []string // environment of the agent (PID 1), "KEY=VALUE"
	VCPU      int      // CPU limit in cores (0: no limit)
	MemoryMiB int      // memory limit (0: no limit)
	DiskMiB   int      // writable-layer size limit (0: no limit)
	// LazyFiles, for a Restore by a LazyRestorer, are the checkpoint's
	// files that the restore loads after it returns, as LazyFiles named
	// them; none: it loads everything first. Decided once, so that the
	// caller checks exactly the files the restore loads lazily.
	LazyFiles []string
}

// Instance is a running sandbox as the driver sees it.
type Instance struct {
	ID   string
	Addr netip.Addr // sandbox address, reachable from the host
	Pid  int        // engine's sandbox process on the host (0 if unknown)
	// Frozen is true while the sandbox is stopped in memory (see Freeze).
	Frozen bool
	// Setup is how long Create or Restore took before the engine started
	// (network link, bundle), for the caller's step timings.
	Setup time.Duration
	// RootFS is the image root it runs on, as List reports it ("" if the
	// driver cannot tell).
	RootFS string
}

// AgentAddr is the host:port at which the sandbox's agent is reachable.
func (i *Instance) AgentAddr() string {
	return netip.AddrPortFrom(i.Addr, AgentPort).String()
}

// Driver runs sandboxes. All methods are safe for concurrent use on
// different IDs; the caller serialises operations on one ID.
type Driver interface {
	// Create builds the sandbox's network link and starts it; PID 1 is the agent.
	Create(ctx context.Context, spec Spec) (*Instance, error)
	// Checkpoint writes the sandbox's full state (memory, processes, writable
	// filesystem) into dir and leaves the sandbox as it was (running or
	// frozen). dir must exist and be empty. The caller makes the files
	// durable, and stops the sandbox with Destroy once they are.
	Checkpoint(ctx context.Context, id, dir string) error
	// Freeze stops every process where it is, keeping memory; the sandbox
	// uses no CPU. Thaw lets it continue.
	Freeze(ctx context.Context, id string) error
	Thaw(ctx context.Context, id string) error
	// Restore starts the sandbox again from a checkpoint in dir, on a fresh
	// network link (its address may differ from before).
	Restore(ctx context.Context, spec Spec, dir string) (*Instance, error)
	// Destroy stops the sandbox and frees every resource it holds. It is
	// idempotent: destroying an unknown ID returns nil.
	Destroy(ctx context.Context, id string) error
	// List returns the sandboxes the engine is running now, so the service can
	// re-adopt them after its own restart.
	List(ctx context.Context) ([]Instance, error)
	// LimitCPU applies the sandbox's CPU limit (vcpu cores; 0: none) on the
	// host. Create starts a sandbox with the limit lifted, so that the
	// engine's boot is not throttled; the caller applies it once the agent
	// answers, before serving the sandbox's first command. Restore applies it
	// itself before it returns. Idempotent: a restarted service applies it
	// again to the sandboxes it re-adopts.
	LimitCPU(ctx context.Context, id string, vcpu int) error
}

// LazyRestorer is implemented by drivers whose Restore can return before
// the checkpoint's memory is loaded: the sandbox runs while the engine goes
// on reading some of the checkpoint's files (pages loaded in the
// background, and on demand first where the sandbox touches them).
type LazyRestorer interface {
	// LazyFiles decides how a Restore from dir loads it: it names the files
	// of the checkpoint (relative to dir) to go on reading after the
	// restore returns, none to read everything first. The caller passes
	// the answer to Restore in Spec.LazyFiles.
	LazyFiles(dir string) []string
	// WaitLoaded returns once sandbox id, lazily restored, has read all of
	// its lazily loaded files (or is gone), or when ctx ends. A check of
	// those files waits for it rather than compete with the load for the
	// disk.
	WaitLoaded(ctx context.Context, id string) error
}

// ErrLinkGone is returned by LinkChecker.CheckLink when a running sandbox's
// network link was removed underneath the driver: its agent is unreachable
// until the sandbox is restored on a new link.
var ErrLinkGone = errors.New("runtime: the sandbox's network link is gone")

// LivenessChecker is implemented by drivers that can tell whether a running
// sandbox's runtime is still alive without disturbing it (List may wake every
// sandbox). Only a true, nil answer is trusted: anything else is a suspicion
// for List to settle.
type LivenessChecker interface {
	Alive(id string) (bool, error)
}

// LinkChecker is implemented by drivers that can check a running sandbox's
// network link and mend what can be mended in place (repaired reports that
// something was). An error other than ErrLinkGone means it could not tell.
type LinkChecker interface {
	CheckLink(ctx context.Context, id string) (repaired bool, err error)
}
