package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRefusesBadClusterFlags: a node whose CPU lacks a pinned feature, or
// with an advertise URL others could not use, stops before it touches its
// data dir, saying why.
func TestRefusesBadClusterFlags(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "stasisd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--cpu-features", "sse2,no_such_cpu_flag"}, "CPU lacks no_such_cpu_flag"},
		{[]string{"--advertise-url", "node-a:8080"}, "want http(s)://HOST:PORT"},
		{[]string{"--advertise-e2b-url", "node-a:3000"}, "--advertise-e2b-url \"node-a:3000\": want http(s)://HOST:PORT"},
		{[]string{"--node-lease", "10ms"}, "at least 1s"},
	} {
		dataDir := filepath.Join(t.TempDir(), "data")
		out, err := exec.Command(bin, append([]string{"serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0"}, c.args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("stasisd serve %q: err %v, output %q; want a failure saying %q", c.args, err, out, c.want)
		}
		if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
			t.Errorf("stasisd serve %q created its data dir before refusing", c.args)
		}
	}
}
