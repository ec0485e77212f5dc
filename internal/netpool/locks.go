package netpool

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/lockfile"
)

// LockDir holds the host-wide lock files on network names (see LockFiles).
const LockDir = "/run/stasis"

// LockFiles are the files a process locks (internal/lockfile) to own a
// pool's names on the host alone: its namespace prefix, and its interface
// prefix (which also names its firewall chain, upper-cased). Pools that
// shared either would learn, and clean up, each other's links.
func LockFiles(prefix, ifPrefix string) (netns, links string) {
	return filepath.Join(LockDir, "netns-"+prefix+".lock"),
		filepath.Join(LockDir, "links-"+strings.ToUpper(ifPrefix)+".lock")
}

// AwaitLinksLock waits (up to 20 minutes, or until ctx ends) for the
// host-wide lock on interface prefix ifPrefix, the one stasisd holds for
// its own: test processes and tools that build links themselves take
// turns on a shared prefix with it. who names the holder for the others.
func AwaitLinksLock(ctx context.Context, ifPrefix, who string) (*lockfile.Lock, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	_, links := LockFiles("", ifPrefix)
	return lockfile.Acquire(ctx, links, lockfile.Holder{Program: who, PID: os.Getpid()})
}

// OverlappingPrefixes lists the namespace prefixes, locked by a running
// process, whose namespaces a pool on prefix would mistake for its own or
// the other way round: one is the other plus "-..." (namespaces are named
// "<prefix>-<id>" and ids may contain '-').
func OverlappingPrefixes(prefix string) map[string]lockfile.Holder {
	ents, _ := os.ReadDir(LockDir)
	out := make(map[string]lockfile.Holder)
	for _, e := range ents {
		q, ok := strings.CutPrefix(e.Name(), "netns-")
		if q, ok = strings.CutSuffix(q, ".lock"); !ok || q == prefix {
			continue
		}
		if !strings.HasPrefix(q, prefix+"-") && !strings.HasPrefix(prefix, q+"-") {
			continue
		}
		if h, held := lockfile.HeldBy(filepath.Join(LockDir, e.Name())); held {
			out[q] = h
		}
	}
	return out
}
