package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// InstallTrust adds the egress CA (PEM) to the trust store of the file
// system under root ("/" in a sandbox) before the agent answers its first
// request: the CA alone at agentproto.EgressCAPath, and appended to the
// image's system bundle (the first of agentproto.SystemBundles it has),
// which agentproto.TrustBundlePath then holds too. Files are written as
// the file API writes them (owned by user). Done in the sandbox, it costs
// no round trips to stasisd; a sandbox's file system (and every fork,
// snapshot and template made from it) keeps it.
//
// In an image with Debian's local CA directory (localCADir) the CA file is
// kept there and agentproto.EgressCAPath links to it, as
// update-ca-certificates links the CAs it finds there: so the bundle that
// update-ca-certificates rebuilds (a template step adding its own CA) still
// holds the egress CA, and the layout is the one it would leave.
func InstallTrust(root string, ca []byte, user string) error {
	acct, err := lookupAccount(user)
	if err != nil {
		return fmt.Errorf("trust: default user: %w", err)
	}
	return installTrust(root, ca, acct)
}

// PrepareTrust is InstallTrust done from outside the sandbox, on a tree
// that becomes a sandbox's root: user is looked up in root's own
// /etc/passwd. stasisd uses it to give new sandboxes an image root with the
// trust store already in place (sandbox.trustRoots), so that the agent finds
// nothing to write and the 217 KB bundle stays out of the sandbox's
// writable layer, which is sandbox memory in every snapshot.
func PrepareTrust(root string, ca []byte, user string) error {
	// The image's symlinks point into the sandbox's root, not the host's:
	// followed from outside they could lead anywhere.
	for _, p := range append(agentproto.SystemBundles(), agentproto.EgressCAPath, localCAPath, "/etc/passwd") {
		if err := noSymlink(root, p); err != nil {
			return err
		}
	}
	acct, err := rootAccount(root, user)
	if err != nil {
		return fmt.Errorf("trust: default user: %w", err)
	}
	return installTrust(root, ca, acct)
}

// noSymlink fails if p, or a directory on the way to it, is a symlink in
// root; what does not exist is no symlink.
func noSymlink(root, p string) error {
	at := root
	for _, name := range strings.Split(strings.Trim(p, "/"), "/") {
		at = filepath.Join(at, name)
		fi, err := os.Lstat(at)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("trust: %s is a symlink in the image", strings.TrimPrefix(at, root))
		}
	}
	return nil
}

func installTrust(root string, ca []byte, acct *account) error {
	// Each file is written from its parts, not from one joined copy: the
	// agent's peak heap stays in every snapshot as runtime metadata.
	write := func(p string, parts ...[]byte) error {
		rs := make([]io.Reader, len(parts))
		size := 0
		for i, b := range parts {
			rs[i] = bytes.NewReader(b)
			size += len(b)
		}
		if _, err := writeFileAtomic(filepath.Join(root, p), io.MultiReader(rs...), int64(size), acct); err != nil {
			return fmt.Errorf("installing the egress CA at %s: %w", p, err)
		}
		return nil
	}
	if fi, err := os.Stat(filepath.Join(root, localCADir)); err == nil && fi.IsDir() {
		if b, err := readRegular(filepath.Join(root, localCAPath)); err != nil || !bytes.Equal(b, ca) {
			if err := write(localCAPath, ca); err != nil {
				return err
			}
		}
		if err := symlinkAtomic(filepath.Join(root, agentproto.EgressCAPath), localCAPath, acct); err != nil {
			return fmt.Errorf("installing the egress CA at %s: %w", agentproto.EgressCAPath, err)
		}
	} else if err := write(agentproto.EgressCAPath, ca); err != nil {
		return err
	}
	var base []byte
	for _, p := range agentproto.SystemBundles() {
		b, err := readRegular(filepath.Join(root, p))
		if err != nil {
			return fmt.Errorf("trust: reading %s: %w", p, err)
		}
		if len(b) == 0 {
			continue // absent, or not a file: none there
		}
		if !bytes.Contains(b, ca) && p != agentproto.TrustBundlePath {
			if err := write(p, withPEM(b, ca)...); err != nil {
				return err
			}
		}
		base = b
		break
	}
	if !bytes.Contains(base, ca) {
		return write(agentproto.TrustBundlePath, withPEM(base, ca)...)
	}
	return nil
}

// Debian's directory of local CAs (update-ca-certificates adds every
// *.crt there to the bundle) and the egress CA's file in it.
const (
	localCADir  = "/usr/local/share/ca-certificates"
	localCAPath = localCADir + "/stasis-egress-ca.crt"
)

// symlinkAtomic makes p a symlink to target owned by acct, replacing
// whatever file was there in one rename.
func symlinkAtomic(p, target string, acct *account) error {
	if got, err := os.Readlink(p); err == nil && got == target {
		return nil
	}
	if err := mkdirAllOwned(filepath.Dir(p), acct); err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(p), ".stasis-link-"+filepath.Base(p))
	os.Remove(tmp) // a leftover of a crash
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := lchown(tmp, acct); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// readRegular reads p if it is a regular file (after symlinks); anything
// else, or nothing there, reads as empty.
func readRegular(p string) ([]byte, error) {
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || (err == nil && !fi.Mode().IsRegular()) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return os.ReadFile(p)
}

// withPEM is bundle with ca appended, as parts of a file.
func withPEM(bundle, ca []byte) [][]byte {
	if len(bundle) > 0 && bundle[len(bundle)-1] != '\n' {
		return [][]byte{bundle, {'\n'}, ca}
	}
	return [][]byte{bundle, ca}
}

// rootAccount resolves name (a user name or numeric uid; empty means root)
// from root's /etc/passwd, as far as installTrust needs it: the owner of
// the files it writes. An image without the entry still runs as root.
func rootAccount(root, name string) (*account, error) {
	if name == "" {
		name = "root"
	}
	b, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if f := passwdEntry(string(b), name, true); f != nil {
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("user %q: bad uid or gid in %s", name, strings.Join(f, ":"))
		}
		return &account{name: f[0], uid: uint32(uid), gid: uint32(gid)}, nil
	}
	if name == "root" {
		return &account{name: "root"}, nil
	}
	return nil, fmt.Errorf("unknown user %q", name)
}
