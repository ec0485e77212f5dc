// Package faultinject is for tests only. It wraps a real runtime.Driver and
// makes chosen calls fail, stall, or leave the sandbox unresponsive, so that
// end-to-end tests can drive the sandbox service's failure branches (a pause
// whose freeze fails, a restore that fails, recovery meeting a sandbox that
// does not answer...) with real sandboxes.
//
// stasisd wraps its driver only when the environment variable Env names a
// fault file, and warns loudly when it does; never set it in production. The
// file is a JSON array of Rules, read at every driver call, so a test arms a
// fault (Arm) exactly when it wants it, without restarting stasisd. A rule
// with Times set is removed from the file once it has fired that often, so
// a test can tell (Pending) that its fault really was injected.
package faultinject

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/snapshot"
)

// Env names the fault file; stasisd injects faults only when it is set.
const Env = "STASIS_TEST_FAULTS"

// Driver operations a Rule can target.
const (
	OpCreate     = "create"
	OpCheckpoint = "checkpoint"
	OpFreeze     = "freeze"
	OpThaw       = "thaw"
	OpRestore    = "restore"
	OpDestroy    = "destroy"
	OpList       = "list"
	OpLimitCPU   = "limit-cpu"
)

// What a Rule does to the calls it matches.
const (
	// Fail returns an error without calling the real driver.
	Fail = "fail"
	// FailAfter lets the real driver do the call, then reports it failed
	// (e.g. a restore that started the sandbox, or a freeze that froze it).
	FailAfter = "fail-after"
	// Delay waits Rule.Delay (or until the call's context ends), then calls
	// the real driver.
	Delay = "delay"
	// Hang lets the real driver do the call, then freezes the sandbox behind
	// the caller's back: its processes stay, its agent stops answering, and
	// List keeps reporting it not frozen. On OpList, Rule.ID names the
	// sandbox to hang. A Thaw or Destroy of the sandbox ends the hang.
	Hang = "hang"
	// Unsealable (OpCheckpoint only) lets the real checkpoint succeed, then
	// puts a directory where the snapshot's manifest is to be written, so
	// sealing the snapshot fails as it would on a disk error.
	Unsealable = "unsealable"
	// OtherVersion (OpRestore only) fails the restore as runsc does for a
	// snapshot taken by another runsc version, without calling the driver.
	OtherVersion = "other-version"
)

// Rule is one fault.
type Rule struct {
	Op     string `json:"op"`              // one of the Op constants
	ID     string `json:"id,omitempty"`    // sandbox ID; empty matches every sandbox
	Action string `json:"action"`          // Fail, FailAfter, Delay, Hang, Unsealable or OtherVersion
	Delay  string `json:"delay,omitempty"` // for Delay: a time.ParseDuration string
	// Times is how many matching calls the rule affects before it is
	// removed from the file; 0 means every call, for as long as it is there.
	Times int `json:"times,omitempty"`
}

func (r Rule) validate() error {
	switch r.Op {
	case OpCreate, OpCheckpoint, OpFreeze, OpThaw, OpRestore, OpDestroy, OpList, OpLimitCPU:
	default:
		return fmt.Errorf("faultinject: unknown op %q", r.Op)
	}
	switch r.Action {
	case Fail, FailAfter, Hang:
	case Delay:
		if _, err := time.ParseDuration(r.Delay); err != nil {
			return fmt.Errorf("faultinject: delay %q: %w", r.Delay, err)
		}
	case Unsealable:
		if r.Op != OpCheckpoint {
			return fmt.Errorf("faultinject: %s applies to %s only", Unsealable, OpCheckpoint)
		}
	case OtherVersion:
		if r.Op != OpRestore {
			return fmt.Errorf("faultinject: %s applies to %s only", OtherVersion, OpRestore)
		}
	default:
		return fmt.Errorf("faultinject: unknown action %q", r.Action)
	}
	if r.Action == Hang && r.Op == OpList && r.ID == "" {
		return errors.New("faultinject: a hang on list needs the sandbox's id")
	}
	if r.Times < 0 {
		return fmt.Errorf("faultinject: times %d < 0", r.Times)
	}
	return nil
}

// ErrInjected is wrapped by every error this package makes up.
var ErrInjected = errors.New("injected fault")

// Arm replaces the rules in the fault file with rules (none: disarm).
func Arm(file string, rules ...Rule) error {
	for _, r := range rules {
		if err := r.validate(); err != nil {
			return err
		}
	}
	unlock, err := lock(file)
	if err != nil {
		return err
	}
	defer unlock()
	return write(file, rules)
}

// Pending returns the rules still in the fault file: a rule with Times set
// is gone once it has fired that often.
func Pending(file string) ([]Rule, error) {
	unlock, err := lock(file)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return read(file)
}

// Driver is a runtime.Driver that injects the fault file's faults into
// calls to the real driver it wraps.
type Driver struct {
	inner runtime.Driver
	file  string
	log   *slog.Logger

	mu   sync.Mutex
	hung map[string]bool // frozen by a Hang, unbeknownst to the caller
}

var _ runtime.Driver = (*Driver)(nil)

// New wraps inner with the faults of file (which need not exist yet).
func New(inner runtime.Driver, file string, log *slog.Logger) *Driver {
	return &Driver{inner: inner, file: file, log: log, hung: map[string]bool{}}
}

// take returns the rule that applies to a call of op on sandbox id (empty
// for List), counting the call against the rule's Times.
func (d *Driver) take(op, id string) (Rule, bool) {
	unlock, err := lock(d.file)
	if err != nil {
		d.log.Error("faultinject: lock fault file", "err", err)
		return Rule{}, false
	}
	defer unlock()
	rules, err := read(d.file)
	if err != nil {
		d.log.Error("faultinject: read fault file", "err", err)
		return Rule{}, false
	}
	for i, r := range rules {
		if r.Op != op || (id != "" && r.ID != "" && r.ID != id) {
			continue
		}
		if r.Times > 0 {
			if rules[i].Times--; rules[i].Times == 0 {
				rules = append(rules[:i], rules[i+1:]...)
			}
			if err := write(d.file, rules); err != nil {
				d.log.Error("faultinject: write fault file", "err", err)
			}
		}
		d.log.Warn("faultinject: injecting a fault", "op", op, "sandbox", firstNonEmpty(id, r.ID), "action", r.Action)
		return r, true
	}
	return Rule{}, false
}

// call runs the real operation do of op on sandbox id under the fault
// that applies to it, if any.
func (d *Driver) call(ctx context.Context, op, id string, do func() error) error {
	r, ok := d.take(op, id)
	return d.apply(ctx, r, ok, op, id, do)
}

// apply runs do under rule r (no fault unless ok).
func (d *Driver) apply(ctx context.Context, r Rule, ok bool, op, id string, do func() error) error {
	if !ok {
		return do()
	}
	injected := fmt.Errorf("faultinject: %s %s: %w", op, id, ErrInjected)
	switch r.Action {
	case Fail:
		return injected
	case OtherVersion:
		return fmt.Errorf("%w: %w", &runtime.VersionMismatchError{Snapshot: "stasis-faultinject-other"}, injected)
	case Delay:
		delay, _ := time.ParseDuration(r.Delay)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := do(); err != nil {
		return err
	}
	switch r.Action {
	case FailAfter:
		return injected
	case Hang:
		return d.hang(ctx, firstNonEmpty(id, r.ID))
	}
	return nil
}

// hang freezes sandbox id behind its caller's back.
func (d *Driver) hang(ctx context.Context, id string) error {
	if err := d.inner.Freeze(ctx, id); err != nil {
		return fmt.Errorf("faultinject: hang %s: %w", id, err)
	}
	d.mu.Lock()
	d.hung[id] = true
	d.mu.Unlock()
	return nil
}

func (d *Driver) unhang(id string) {
	d.mu.Lock()
	delete(d.hung, id)
	d.mu.Unlock()
}

func (d *Driver) Create(ctx context.Context, spec runtime.Spec) (inst *runtime.Instance, err error) {
	err = d.call(ctx, OpCreate, spec.ID, func() error {
		inst, err = d.inner.Create(ctx, spec)
		return err
	})
	return inst, err
}

func (d *Driver) Checkpoint(ctx context.Context, id, dir string) error {
	r, ok := d.take(OpCheckpoint, id)
	err := d.apply(ctx, r, ok, OpCheckpoint, id, func() error { return d.inner.Checkpoint(ctx, id, dir) })
	if err == nil && ok && r.Action == Unsealable {
		err = os.Mkdir(filepath.Join(dir, snapshot.ManifestName), 0o700)
	}
	return err
}

func (d *Driver) Freeze(ctx context.Context, id string) error {
	return d.call(ctx, OpFreeze, id, func() error { return d.inner.Freeze(ctx, id) })
}

func (d *Driver) Thaw(ctx context.Context, id string) error {
	return d.call(ctx, OpThaw, id, func() error {
		err := d.inner.Thaw(ctx, id)
		if err == nil {
			d.unhang(id)
		}
		return err
	})
}

func (d *Driver) Restore(ctx context.Context, spec runtime.Spec, dir string) (inst *runtime.Instance, err error) {
	err = d.call(ctx, OpRestore, spec.ID, func() error {
		inst, err = d.inner.Restore(ctx, spec, dir)
		return err
	})
	return inst, err
}

func (d *Driver) LimitCPU(ctx context.Context, id string, vcpu int) error {
	return d.call(ctx, OpLimitCPU, id, func() error { return d.inner.LimitCPU(ctx, id, vcpu) })
}

// LazyFiles passes runtime.LazyRestorer through to the real driver.
func (d *Driver) LazyFiles(dir string) []string {
	if lr, ok := d.inner.(runtime.LazyRestorer); ok {
		return lr.LazyFiles(dir)
	}
	return nil
}

// WaitLoaded passes runtime.LazyRestorer through to the real driver.
func (d *Driver) WaitLoaded(ctx context.Context, id string) error {
	if lr, ok := d.inner.(runtime.LazyRestorer); ok {
		return lr.WaitLoaded(ctx, id)
	}
	return nil
}

func (d *Driver) Destroy(ctx context.Context, id string) error {
	return d.call(ctx, OpDestroy, id, func() error {
		err := d.inner.Destroy(ctx, id)
		d.unhang(id)
		return err
	})
}

func (d *Driver) List(ctx context.Context) (list []runtime.Instance, err error) {
	err = d.call(ctx, OpList, "", func() error {
		list, err = d.inner.List(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range list {
		if d.hung[list[i].ID] {
			list[i].Frozen = false // the caller must not know
		}
	}
	return list, nil
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// lock takes an exclusive flock shared by stasisd and the test, so a rule
// consumed by one is never resurrected by the other's write.
func lock(file string) (func(), error) {
	f, err := os.OpenFile(file+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("faultinject: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("faultinject: lock %s: %w", file, err)
	}
	return func() { f.Close() }, nil
}

func read(file string) ([]Rule, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rules []Rule
	if err := json.Unmarshal(b, &rules); err != nil {
		return nil, fmt.Errorf("faultinject: %s: %w", file, err)
	}
	for _, r := range rules {
		if err := r.validate(); err != nil {
			return nil, err
		}
	}
	return rules, nil
}

// write replaces file atomically, so a reader never sees half a file.
func write(file string, rules []Rule) error {
	b, err := json.Marshal(rules)
	if err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}
