package agent

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// account is a resolved sandbox user.
type account struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32
	home   string
}

// The account database, as os/user reads it with CGO_ENABLED=0.
var accountFiles = []string{"/etc/passwd", "/etc/group"}

// accounts caches lookups: reading and parsing both files costs over a
// millisecond in gVisor, more than the rest of starting a command on a spare
// shell. An entry holds while neither file has changed (a stat each).
var accounts struct {
	sync.Mutex
	sig     string
	entries map[string]*account
}

// accountFilesSig identifies the current version of the account files.
func accountFilesSig() string {
	var b strings.Builder
	for _, f := range accountFiles {
		var st unix.Stat_t
		if err := unix.Stat(f, &st); err != nil {
			b.WriteString("-;")
			continue
		}
		fmt.Fprintf(&b, "%d:%d:%d:%d.%d;", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
	}
	return b.String()
}

// lookupAccount resolves name (a user name or numeric uid; empty means root)
// from the sandbox's /etc/passwd. The result must not be modified.
func lookupAccount(name string) (*account, error) {
	if name == "" {
		name = "root"
	}
	sig := accountFilesSig()
	accounts.Lock()
	if accounts.sig != sig {
		accounts.sig, accounts.entries = sig, map[string]*account{}
	}
	a, ok := accounts.entries[name]
	accounts.Unlock()
	if ok {
		return a, nil
	}
	a, err := readAccount(name)
	if err != nil {
		return nil, err
	}
	accounts.Lock()
	if accounts.sig == sig {
		accounts.entries[name] = a
	}
	accounts.Unlock()
	return a, nil
}

// readAccount looks name up in the account files.
func readAccount(name string) (*account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if _, numErr := strconv.ParseUint(name, 10, 32); numErr == nil {
			u, err = user.LookupId(name)
		}
	}
	if err != nil {
		if name == "root" {
			// An image without /etc/passwd still runs as root.
			return &account{name: "root", home: "/root"}, nil
		}
		return nil, fmt.Errorf("unknown user %q", name)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: bad uid %q", name, u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: bad gid %q", name, u.Gid)
	}
	a := &account{name: u.Username, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil && uint32(g) != a.gid {
				a.groups = append(a.groups, uint32(g))
			}
		}
	}
	return a, nil
}

// credential returns the credential to start a child as a, or nil if the
// agent already runs as that user.
func (a *account) credential() *syscall.Credential {
	if int(a.uid) == os.Getuid() && int(a.gid) == os.Getgid() {
		return nil
	}
	return &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: a.groups}
}

// workdir is the default working directory for a: dflt if set, else the
// user's home if it is a directory, else /.
func (a *account) workdir(dflt string) string {
	if dflt != "" {
		return dflt
	}
	if a.home != "" && strings.HasPrefix(a.home, "/") {
		if fi, err := os.Stat(a.home); err == nil && fi.IsDir() {
			return a.home
		}
	}
	return "/"
}
