package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/stasis-sandbox/stasis/internal/lockfile"
	"github.com/stasis-sandbox/stasis/internal/netpool"
)

// claimed is what a server owns alone while it runs.
type claimed struct {
	ln    net.Listener
	locks []*lockfile.Lock
}

func (c *claimed) release() {
	for _, l := range c.locks {
		l.Release()
	}
}

// claim takes, before anything is recovered or cleaned up, everything this
// server must own alone: its data dir, its network names and its listening
// socket. A second server on the same data dir or prefix (or port) fails
// here, naming the first, without having touched its sandboxes.
func claim(dataDir, listen, netnsPrefix string) (_ *claimed, err error) {
	if netnsPrefix == "" || strings.ContainsAny(netnsPrefix, "/\x00") || netnsPrefix == "." || netnsPrefix == ".." {
		return nil, fmt.Errorf("--netns-prefix %q: must be a non-empty name without '/'", netnsPrefix)
	}
	me := lockfile.Holder{PID: os.Getpid(), DataDir: dataDir, Listen: listen}
	c := &claimed{}
	defer func() {
		if err != nil {
			c.release()
		}
	}()
	// Two servers on one host must never share a netns prefix, an
	// interface prefix or the firewall chain named after it, whatever
	// their data dirs.
	ifp := ifPrefix(netnsPrefix)
	netnsLock, linksLock := netpool.LockFiles(netnsPrefix, ifp)
	for _, want := range []struct{ path, what string }{
		{filepath.Join(dataDir, "lock"), "data dir " + dataDir},
		{netnsLock, fmt.Sprintf("netns prefix %q", netnsPrefix)},
		{linksLock, fmt.Sprintf("interface prefix %q (and firewall chain STASIS-%s, from --netns-prefix %q)", ifp, strings.ToUpper(ifp), netnsPrefix)},
	} {
		l, err := lockfile.TryAcquire(want.path, me)
		var held *lockfile.HeldError
		if errors.As(err, &held) {
			return nil, fmt.Errorf("%s is in use by %s; stop it first, or give this server its own --data-dir, --netns-prefix and --subnet", want.what, held.Holder)
		}
		if err != nil {
			return nil, err
		}
		c.locks = append(c.locks, l)
	}
	// Checked after taking our own prefix, so of two servers starting at
	// once at least one sees the other.
	for q, h := range netpool.OverlappingPrefixes(netnsPrefix) {
		return nil, fmt.Errorf("netns prefix %q overlaps prefix %q of %s: each would take the other's namespaces for its own; choose a --netns-prefix that neither extends nor is extended by a running server's", netnsPrefix, q, h)
	}
	if c.ln, err = net.Listen("tcp", listen); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", listen, err)
	}
	return c, nil
}
