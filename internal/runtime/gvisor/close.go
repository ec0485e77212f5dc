package gvisor

import (
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// nullNetns is the nsfs bind mount runsc leaves in its root dir: an empty
// network namespace it pins for the gofers of sandboxes started later.
const nullNetns = "null-netns"

// Close releases what the driver holds on the host outside its sandboxes:
// the null-netns mount in RootDir (which keeps the data dir from being
// removed). Running sandboxes do not need it: their gofers joined the
// namespace when they started, and the next sandbox started pins a new one.
// runsc stacks one mount per racing cold start, so all are removed.
func (d *Driver) Close() error {
	path := filepath.Join(d.cfg.RootDir, nullNetns)
	for {
		err := unix.Unmount(path, unix.MNT_DETACH)
		if err == nil {
			continue
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // not (or no longer) a mount point
		}
		return fmt.Errorf("gvisor: unmount %s: %w", path, err)
	}
}
