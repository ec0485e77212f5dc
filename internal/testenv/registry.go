package testenv

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// StartRegistry runs a real OCI registry (Debian's docker-registry, i.e.
// github.com/docker/distribution) on a free loopback port for the test's
// lifetime and returns its host:port and a function that stops it early
// (to test what happens when a registry goes away). Plain HTTP; loopback only.
func StartRegistry(t testing.TB) (host string, stop func()) {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("docker-registry not found (%v): run `make setup`, which installs the docker-registry package", err)
	}
	host = freeAddr(t)
	tmp := t.TempDir()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"+
		"storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n",
		filepath.Join(tmp, "data"), host)
	cfgFile := filepath.Join(tmp, "config.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out := &lockedBuffer{}
	cmd := exec.Command(bin, "serve", cfgFile)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	var once sync.Once
	stop = func() { once.Do(func() { cmd.Process.Kill() }) } // our own child, by its pid
	t.Cleanup(func() {
		stop()
		<-exited
		if t.Failed() {
			t.Logf("docker-registry output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return host, stop
			}
		}
		select {
		case <-exited:
			t.Fatalf("docker-registry exited:\n%s", out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry not ready on %s: %v\n%s", host, err, out.String())
		}
	}
}
