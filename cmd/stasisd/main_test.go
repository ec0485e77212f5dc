package main

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestHelpExitsZero: asking for help is not an error, for the server's
// flags as for the images subcommand.
func TestHelpExitsZero(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "stasisd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"serve", "--help"}, {"serve", "-h"}, {"images", "build", "--help"}, {"--help"}} {
		var out bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Errorf("stasisd %q: %v\n%s", args, err, out.String())
		}
		if strings.Contains(out.String(), "help requested") || !strings.Contains(out.String(), "usage") && !strings.Contains(out.String(), "Usage") {
			t.Errorf("stasisd %q printed:\n%s", args, out.String())
		}
	}
	// A wrong flag still fails.
	var ee *exec.ExitError
	if err := exec.Command(bin, "serve", "--no-such-flag").Run(); !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Errorf("serve --no-such-flag: %v", err)
	}
}

// TestNoSimRuntimeInProductionBuild: the simulated runtime (no sandboxes)
// cannot be selected in a normal build; only -tags stasis_sim has --runtime.
func TestNoSimRuntimeInProductionBuild(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "stasisd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "serve", "--runtime", "sim", "--data-dir", t.TempDir()).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("serve --runtime sim in a production build: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "flag provided but not defined: -runtime") {
		t.Errorf("serve --runtime sim printed:\n%s", out)
	}
	help, _ := exec.Command(bin, "serve", "--help").CombinedOutput()
	if strings.Contains(string(help), "-runtime") {
		t.Errorf("a production build's help lists --runtime:\n%s", help)
	}
}
