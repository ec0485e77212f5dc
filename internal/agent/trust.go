package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
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
		if err := write(localCAPath, ca); err != nil {
			return err
		}
		if err := symlinkAtomic(filepath.Join(root, agentproto.EgressCAPath), filepath.Join(root, localCAPath), acct); err != nil {
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
