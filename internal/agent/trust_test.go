package agent_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

const testCA = "-----BEGIN CERTIFICATE-----\nTESTCA\n-----END CERTIFICATE-----\n"

func writeAt(t *testing.T, root, p, content string) {
	t.Helper()
	full := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, root, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// An image with no CA bundle at all gets the CA alone, in both places.
func TestInstallTrustNoBundle(t *testing.T) {
	root := t.TempDir()
	if err := agent.InstallTrust(root, []byte(testCA), ""); err != nil {
		t.Fatal(err)
	}
	if got := readAt(t, root, agentproto.EgressCAPath); got != testCA {
		t.Errorf("CA file = %q", got)
	}
	if got := readAt(t, root, agentproto.TrustBundlePath); got != testCA {
		t.Errorf("bundle = %q, want the CA alone", got)
	}
}

// Debian's bundle keeps its certificates and gets the CA once, even when
// installed twice (a template build's sandbox, then its snapshot's).
func TestInstallTrustAppendsOnce(t *testing.T) {
	root := t.TempDir()
	writeAt(t, root, agentproto.TrustBundlePath, "-----BEGIN CERTIFICATE-----\nDEBIAN\n-----END CERTIFICATE-----") // no final newline
	for range 2 {
		if err := agent.InstallTrust(root, []byte(testCA), ""); err != nil {
			t.Fatal(err)
		}
	}
	got := readAt(t, root, agentproto.TrustBundlePath)
	if !strings.HasPrefix(got, "-----BEGIN CERTIFICATE-----\nDEBIAN\n-----END CERTIFICATE-----\n") || !strings.HasSuffix(got, testCA) || strings.Count(got, "TESTCA") != 1 {
		t.Errorf("bundle = %q, want Debian's certificate then the CA once", got)
	}
}

// An image that keeps its bundle elsewhere (Red Hat's path) gets the CA
// there, and the Debian path that SSL_CERT_FILE names holds the same.
func TestInstallTrustOtherBundle(t *testing.T) {
	root := t.TempDir()
	const rh = "/etc/pki/tls/certs/ca-bundle.crt"
	writeAt(t, root, rh, "-----BEGIN CERTIFICATE-----\nREDHAT\n-----END CERTIFICATE-----\n")
	if err := agent.InstallTrust(root, []byte(testCA), ""); err != nil {
		t.Fatal(err)
	}
	want := "-----BEGIN CERTIFICATE-----\nREDHAT\n-----END CERTIFICATE-----\n" + testCA
	for _, p := range []string{rh, agentproto.TrustBundlePath} {
		if got := readAt(t, root, p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
}

// A directory where a bundle would be is not a bundle; a file in the way
// of the CA's directory is an error, not a silent skip.
func TestInstallTrustErrors(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "/etc/ssl/cert.pem"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := agent.InstallTrust(root, []byte(testCA), ""); err != nil {
		t.Fatalf("a directory named like a bundle: %v", err)
	}
	blocked := t.TempDir()
	writeAt(t, blocked, "/etc/ssl/certs", "not a directory")
	if err := agent.InstallTrust(blocked, []byte(testCA), ""); err == nil {
		t.Error("no error with /etc/ssl/certs a file")
	}
	if got, _ := os.ReadFile(filepath.Join(blocked, "/etc/ssl/certs")); !bytes.Equal(got, []byte("not a directory")) {
		t.Errorf("/etc/ssl/certs changed to %q", got)
	}
}

// With Debian's local CA directory the CA file is kept there, where
// update-ca-certificates finds it when it rebuilds the bundle, and the
// CA's path links to it (replacing the file an older agent wrote).
func TestInstallTrustLocalCADir(t *testing.T) {
	root := t.TempDir()
	const local = "/usr/local/share/ca-certificates/stasis-egress-ca.crt"
	writeAt(t, root, "/usr/local/share/ca-certificates/.keep", "")
	writeAt(t, root, agentproto.TrustBundlePath, "-----BEGIN CERTIFICATE-----\nDEBIAN\n-----END CERTIFICATE-----\n")
	writeAt(t, root, agentproto.EgressCAPath, "an older agent's copy")
	for range 2 {
		if err := agent.InstallTrust(root, []byte(testCA), ""); err != nil {
			t.Fatal(err)
		}
	}
	if got := readAt(t, root, local); got != testCA {
		t.Errorf("%s = %q", local, got)
	}
	if target, err := os.Readlink(filepath.Join(root, agentproto.EgressCAPath)); err != nil || target != local {
		t.Errorf("%s links to %q (%v), want %s", agentproto.EgressCAPath, target, err, local)
	}
	if got := readAt(t, root, agentproto.TrustBundlePath); strings.Count(got, "TESTCA") != 1 || !strings.Contains(got, "DEBIAN") {
		t.Errorf("bundle = %q, want Debian's certificate and the CA once", got)
	}
	if left, _ := filepath.Glob(filepath.Join(root, "/etc/ssl/certs/.stasis-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// stasisd prepares an image root's trust store from outside the sandbox,
// owned by the image's default user: the agent, finding everything in
// place, writes nothing, so nothing is copied into the sandbox's writable
// layer.
func TestPrepareTrustLeavesAgentNothingToWrite(t *testing.T) {
	root := t.TempDir()
	writeAt(t, root, "/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1001::/home/user:/bin/bash\n")
	writeAt(t, root, "/usr/local/share/ca-certificates/.keep", "")
	writeAt(t, root, agentproto.TrustBundlePath, "-----BEGIN CERTIFICATE-----\nDEBIAN\n-----END CERTIFICATE-----\n")
	if err := agent.PrepareTrust(root, []byte(testCA), "user"); err != nil {
		t.Fatal(err)
	}
	paths := []string{agentproto.TrustBundlePath, agentproto.EgressCAPath, "/usr/local/share/ca-certificates/stasis-egress-ca.crt"}
	before := map[string]os.FileInfo{}
	for _, p := range paths {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && (st.Uid != 1000 || st.Gid != 1001) {
			t.Errorf("%s owned by %d:%d, want the image's user 1000:1001", p, st.Uid, st.Gid)
		}
		before[p] = fi
	}
	if got := readAt(t, root, agentproto.TrustBundlePath); strings.Count(got, "TESTCA") != 1 || !strings.Contains(got, "DEBIAN") {
		t.Errorf("bundle = %q", got)
	}
	if err := agent.InstallTrust(root, []byte(testCA), ""); err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if !os.SameFile(fi, before[p]) {
			t.Errorf("the agent replaced %s", p)
		}
	}
}

// The image's symlinks are the sandbox's: PrepareTrust does not follow one
// out of the root (the agent installs the CA at boot instead).
func TestPrepareTrustRefusesSymlinks(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	target := filepath.Join(outside, "host-file")
	if err := os.WriteFile(target, []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/ssl/certs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(root, agentproto.TrustBundlePath)); err != nil {
		t.Fatal(err)
	}
	if err := agent.PrepareTrust(root, []byte(testCA), ""); err == nil {
		t.Error("PrepareTrust followed a symlink out of the root")
	}
	if b, _ := os.ReadFile(target); string(b) != "host\n" {
		t.Errorf("the file outside the root became %q", b)
	}
}
