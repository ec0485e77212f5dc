package gvisor

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/runtime"
)

// A restore that runsc refuses for the checkpoint's version is told apart
// from other failures, with both versions; runsc's own words (its stderr,
// as runWithConsole keeps it) are what it is recognised by.
func TestVersionMismatchFromRunscRestore(t *testing.T) {
	exitErr := &exec.ExitError{}
	refused := &runscError{args: []string{"restore", "--detach", "sb1"}, err: exitErr,
		stderr: `starting container: restoring container "sb1": runsc version does not match across checkpoint restore, checkpoint: stasis-20260905-160fafc42237-p3 current: stasis-20260905-160fafc42237-p4`}
	err := versionMismatch(refused)
	var vm *runtime.VersionMismatchError
	if !errors.Is(err, runtime.ErrVersionMismatch) || !errors.As(err, &vm) {
		t.Fatalf("versionMismatch(%v) = %v, want a runtime.VersionMismatchError", refused, err)
	}
	if vm.Snapshot != "stasis-20260905-160fafc42237-p3" || vm.Current != "stasis-20260905-160fafc42237-p4" {
		t.Fatalf("versions: snapshot %q, current %q", vm.Snapshot, vm.Current)
	}
	if !errors.Is(err, exitErr) || !strings.Contains(err.Error(), "runsc restore") {
		t.Fatalf("the runsc failure is lost: %v", err)
	}

	other := &runscError{args: []string{"restore"}, err: exitErr, stderr: "restoring container: checkpoint file is corrupt"}
	if err := versionMismatch(other); err != other {
		t.Fatalf("another restore failure became %v", err)
	}
	plain := errors.New("opening console log: denied")
	if err := versionMismatch(plain); err != plain {
		t.Fatalf("a failure before runsc ran became %v", err)
	}
}
