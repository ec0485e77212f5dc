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
