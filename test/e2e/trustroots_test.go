package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestRestartPrunesUnusedImageRoots: at start stasisd removes the image
// roots (DATA_DIR/roots/) that no running sandbox runs on and no built-in
// image as now built uses, and any a crash left half-removed. A sandbox
// that outlived the restart keeps its tree although its image's is another
// now (a new egress CA): once it is gone, the next start removes that tree.
func TestRestartPrunesUnusedImageRoots(t *testing.T) {
	srv := testenv.StartServer(t)
	roots := filepath.Join(srv.DataDir(), "roots")
	trees := func() []string {
		t.Helper()
		entries, err := os.ReadDir(roots)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	c, sb := createMinimal(t, srv, "old-root")
	old := trees()
	if len(old) != 1 {
		t.Fatalf("roots after a create: %v, want one tree", old)
	}
	// A tree of an image no longer built, and a crash's half-removed one.
	makeFile := func(p string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	makeFile(filepath.Join(roots, "00000000000000000000", "bin", "sh"))
	makeFile(filepath.Join(roots, "11111111111111111111.gone", "bin", "sh"))
	// A new egress CA: stasis/minimal's tree is another one from now on.
	for _, f := range []string{"egress-ca.pem", "egress-ca.key"} {
		if err := os.Remove(filepath.Join(srv.DataDir(), f)); err != nil {
			t.Fatal(err)
		}
	}
	srv.Restart()
	if got := trees(); !slices.Equal(got, old) {
		t.Fatalf("roots after a restart with the sandbox running: %v, want only its tree %v", got, old)
	}
	if got := c.sh("cat /etc/hostname >/dev/null && echo ok"); got != "ok" {
		t.Fatalf("the sandbox on the kept tree: %q", got)
	}
	createMinimal(t, srv, "new-root")
	if got := trees(); len(got) != 2 {
		t.Fatalf("roots with sandboxes of the old and the new CA: %v, want two trees", got)
	}
	if err := srv.Do("DELETE", "/sandboxes/"+sb.ID, nil, nil); err != nil {
		t.Fatal(err)
	}
	srv.Restart()
	if got := trees(); len(got) != 1 || got[0] == old[0] {
		t.Fatalf("roots after a restart with only the new CA's sandbox: %v, want its tree, not %s", got, old[0])
	}
}

// TestRestartKeepsPulledImageRoots: the tree of an OCI image still in the
// pull cache is kept across a restart with no sandbox on it, so that the
// next sandbox of a template built from it does not wait for it again.
func TestRestartKeepsPulledImageRoots(t *testing.T) {
	host, _ := testenv.StartRegistry(t)
	ref := pushBusyboxImage(t, host)
	srv := testenv.StartServer(t)
	var created struct {
		ID      string
		BuildID string `json:"build_id"`
	}
	if err := srv.Do("POST", "/templates", map[string]any{"name": "pulled", "build_spec": map[string]any{"from": ref}}, &created); err != nil {
		t.Fatalf("create template: %v", err)
	}
	if b := waitBuild(t, srv, created.ID, created.BuildID); b.Status != "ready" {
		t.Fatalf("build %s: %s", b.Status, b.ErrorMessage)
	}
	roots := filepath.Join(srv.DataDir(), "roots")
	before, err := os.ReadDir(roots)
	if err != nil || len(before) != 1 {
		t.Fatalf("roots after the build: %v (%v), want the pulled image's tree", before, err)
	}
	srv.Restart()
	after, err := os.ReadDir(roots)
	if err != nil || len(after) != 1 || after[0].Name() != before[0].Name() {
		t.Fatalf("roots after a restart: %v (%v), want %s kept", after, err, before[0].Name())
	}
}
