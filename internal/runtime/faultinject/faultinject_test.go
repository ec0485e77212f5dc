package faultinject

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/snapshot"
)

// recorder stands in for the real driver here (the e2e tests wrap the real
// one): it records which calls reached it.
type recorder struct{ calls []string }

func (r *recorder) Create(_ context.Context, s runtime.Spec) (*runtime.Instance, error) {
	r.calls = append(r.calls, "create "+s.ID)
	return &runtime.Instance{ID: s.ID}, nil
}
func (r *recorder) Checkpoint(_ context.Context, id, dir string) error {
	r.calls = append(r.calls, "checkpoint "+id)
	return os.WriteFile(filepath.Join(dir, "pages.img"), []byte("pages"), 0o600)
}
func (r *recorder) Freeze(_ context.Context, id string) error {
	r.calls = append(r.calls, "freeze "+id)
	return nil
}
func (r *recorder) Thaw(_ context.Context, id string) error {
	r.calls = append(r.calls, "thaw "+id)
	return nil
}
func (r *recorder) Restore(_ context.Context, s runtime.Spec, _ string) (*runtime.Instance, error) {
	r.calls = append(r.calls, "restore "+s.ID)
	return &runtime.Instance{ID: s.ID}, nil
}
func (r *recorder) Destroy(_ context.Context, id string) error {
	r.calls = append(r.calls, "destroy "+id)
	return nil
}
func (r *recorder) LimitCPU(_ context.Context, id string, _ int) error {
	r.calls = append(r.calls, "limit-cpu "+id)
	return nil
}
func (r *recorder) List(context.Context) ([]runtime.Instance, error) {
	r.calls = append(r.calls, "list")
	return []runtime.Instance{{ID: "a"}, {ID: "b"}}, nil
}

func setup(t *testing.T) (*Driver, *recorder, string) {
	rec := &recorder{}
	file := filepath.Join(t.TempDir(), "faults.json")
	return New(rec, file, slog.New(slog.NewTextHandler(io.Discard, nil))), rec, file
}

func TestRulesFireAsArmed(t *testing.T) {
	d, rec, file := setup(t)
	ctx := context.Background()
	if err := d.Freeze(ctx, "a"); err != nil { // nothing armed yet: no file
		t.Fatal(err)
	}
	if err := Arm(file,
		Rule{Op: OpFreeze, ID: "a", Action: Fail, Times: 2},
		Rule{Op: OpThaw, Action: FailAfter},
	); err != nil {
		t.Fatal(err)
	}
	if err := d.Freeze(ctx, "b"); err != nil {
		t.Fatalf("freeze of another sandbox: %v", err)
	}
	for i := range 2 {
		if err := d.Freeze(ctx, "a"); !errors.Is(err, ErrInjected) {
			t.Fatalf("freeze %d: %v, want the injected fault", i, err)
		}
	}
	if err := d.Freeze(ctx, "a"); err != nil {
		t.Fatalf("freeze after the rule ran out: %v", err)
	}
	for range 2 { // no Times: it stays
		if err := d.Thaw(ctx, "b"); !errors.Is(err, ErrInjected) {
			t.Fatalf("thaw: %v, want the injected fault", err)
		}
	}
	want := []string{"freeze a", "freeze b", "freeze a", "thaw b", "thaw b"}
	if !slices.Equal(rec.calls, want) {
		t.Fatalf("calls that reached the driver: %q, want %q", rec.calls, want)
	}
	left, err := Pending(file)
	if err != nil || len(left) != 1 || left[0].Op != OpThaw {
		t.Fatalf("pending: %+v %v, want just the thaw rule", left, err)
	}
}

func TestUnsealableCheckpointFailsTheSeal(t *testing.T) {
	d, _, file := setup(t)
	if err := Arm(file, Rule{Op: OpCheckpoint, Action: Unsealable, Times: 1}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := d.Checkpoint(context.Background(), "a", dir); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	if _, err := snapshot.Seal(dir); err == nil {
		t.Fatal("sealed a checkpoint made unsealable")
	}
}

func TestHangHidesTheFreeze(t *testing.T) {
	d, rec, file := setup(t)
	ctx := context.Background()
	if err := Arm(file, Rule{Op: OpList, ID: "b", Action: Hang, Times: 1}); err != nil {
		t.Fatal(err)
	}
	list, err := d.List(ctx)
	if err != nil || len(list) != 2 || list[1].Frozen {
		t.Fatalf("list: %+v %v", list, err)
	}
	if want := []string{"list", "freeze b"}; !slices.Equal(rec.calls, want) {
		t.Fatalf("calls: %q, want %q", rec.calls, want)
	}
}

func TestArmRefusesBadRules(t *testing.T) {
	_, _, file := setup(t)
	for _, r := range []Rule{
		{Op: "reboot", Action: Fail},
		{Op: OpFreeze, Action: "explode"},
		{Op: OpFreeze, Action: Unsealable},
		{Op: OpFreeze, Action: Delay, Delay: "soon"},
		{Op: OpList, Action: Hang},
		{Op: OpFreeze, Action: Fail, Times: -1},
	} {
		if err := Arm(file, r); err == nil {
			t.Errorf("Arm(%+v) accepted", r)
		}
	}
}

func TestDelayWaitsOrGivesUpWithTheContext(t *testing.T) {
	d, rec, file := setup(t)
	if err := Arm(file, Rule{Op: OpCheckpoint, Action: Delay, Delay: "1h"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Checkpoint(ctx, "a", t.TempDir()); !errors.Is(err, context.Canceled) {
		t.Fatalf("delayed checkpoint with its context over: %v", err)
	}
	if err := Arm(file, Rule{Op: OpCheckpoint, Action: Delay, Delay: "1ms"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Checkpoint(context.Background(), "a", t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if want := []string{"checkpoint a"}; !slices.Equal(rec.calls, want) {
		t.Fatalf("calls: %q, want %q", rec.calls, want)
	}
}
