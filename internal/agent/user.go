package agent

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// account is a resolved sandbox user.
type account struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32
	home   string
	shell  string // the login shell bash would find for uid (see loginShell)
}

// The account database, as os/user reads it with CGO_ENABLED=0.
var accountFiles = []string{"/etc/passwd", "/etc/group"}

// accounts caches lookups: reading and parsing both files costs over a
// millisecond in gVisor, more than the rest of starting a command on a spare
// shell. An entry holds while neither file has changed.
var accounts struct {
	sync.Mutex
	watch   *accountWatch // nil until the first lookup
	entries map[string]*account
}

// lookupAccount resolves name (a user name or numeric uid; empty means root)
// from the sandbox's /etc/passwd. The result must not be modified.
func lookupAccount(name string) (*account, error) {
	if name == "" {
		name = "root"
	}
	accounts.Lock()
	if accounts.watch == nil {
		accounts.watch = newAccountWatch(accountFiles)
	}
	if accounts.watch.changed() {
		accounts.entries = map[string]*account{}
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
	// Kept unless the files changed meanwhile: then a may be of either
	// version, and is looked up again next time.
	if !accounts.watch.changed() {
		accounts.entries[name] = a
	} else {
		accounts.entries = map[string]*account{}
	}
	accounts.Unlock()
	return a, nil
}

// accountWatch tells whether the account files may have changed. It watches
// their directories with inotify, so a command's check is one read that
// finds no event, not a stat of each file (~0.35 ms a command in gVisor,
// measured). Events are queued by the system call that makes the change, so
// a change by one command is seen by the next. Without a usable watch (no
// inotify, a file that is a symlink, a directory removed or moved) it
// compares the files' stat signatures each time instead.
type accountWatch struct {
	files []string
	fd    int    // inotify descriptor, or -1: compare sig
	sig   string // stat signature, when fd is -1
	first bool   // nothing cached yet: the first check reports a change
}

const accountWatchEvents = unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_CLOSE_WRITE | unix.IN_CREATE |
	unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

func newAccountWatch(files []string) *accountWatch {
	w := &accountWatch{files: files, fd: -1, first: true}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return w
	}
	dirs := map[string]bool{}
	for _, f := range files {
		var st unix.Stat_t
		if err := unix.Lstat(f, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			unix.Close(fd) // a change to the target would go unseen
			return w
		}
		dirs[filepath.Dir(f)] = true
	}
	for d := range dirs {
		if _, err := unix.InotifyAddWatch(fd, d, accountWatchEvents|unix.IN_ONLYDIR); err != nil {
			unix.Close(fd)
			return w
		}
	}
	w.fd = fd
	return w
}

// changed reports whether the files may have changed since the last call
// (true on the first).
func (w *accountWatch) changed() bool {
	first := w.first
	w.first = false
	if w.fd < 0 {
		sig := accountFilesSig(w.files)
		changed := sig != w.sig
		w.sig = sig
		return changed || first
	}
	var buf [4096]byte
	changed := first
	for {
		n, err := unix.Read(w.fd, buf[:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return changed
		}
		if err != nil || n <= 0 {
			w.fallBack()
			return true
		}
		changed = true
		// A watch that ends (its directory removed, moved or unmounted,
		// or events lost) sees no more changes: compare stats from now on.
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			if ev.Mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_Q_OVERFLOW|unix.IN_UNMOUNT) != 0 {
				w.fallBack()
				return true
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

func (w *accountWatch) fallBack() {
	unix.Close(w.fd)
	w.fd = -1
	w.sig = accountFilesSig(w.files)
}

// accountFilesSig identifies the current version of files.
func accountFilesSig(files []string) string {
	var b strings.Builder
	for _, f := range files {
		var st unix.Stat_t
		if err := unix.Stat(f, &st); err != nil {
			b.WriteString("-;")
			continue
		}
		fmt.Fprintf(&b, "%d:%d:%d:%d.%d;", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
	}
	return b.String()
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
			return &account{name: "root", home: "/root", shell: loginShell(0)}, nil
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
	a := &account{name: u.Username, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir, shell: loginShell(uint32(uid))}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil && uint32(g) != a.gid {
				a.groups = append(a.groups, uint32(g))
			}
		}
	}
	return a, nil
}

// loginShell is the shell bash sets SHELL to when it starts without one:
// that of the first /etc/passwd entry with uid (getpwuid), or /bin/sh if
// the entry names none or there is no entry.
func loginShell(uid uint32) string {
	b, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return "/bin/sh"
	}
	return passwdShell(string(b), uid)
}

// passwdShell is loginShell with passwd the file's contents.
func passwdShell(passwd string, uid uint32) string {
	f := passwdEntry(passwd, strconv.FormatUint(uint64(uid), 10), false)
	if f == nil || f[6] == "" {
		return "/bin/sh"
	}
	return f[6]
}

// passwdEntry returns the fields of the first entry in passwd (an
// /etc/passwd file's contents) whose uid is key, or with byName whose user
// name or uid is key; nil if there is none. Lines that are not entries
// (fewer fields) are skipped, as glibc does.
func passwdEntry(passwd, key string, byName bool) []string {
	for line := range strings.SplitSeq(passwd, "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 7 && (f[2] == key || byName && f[0] == key) {
			return f
		}
	}
	return nil
}

// credential returns the credential to start a child as a, or nil if the
// agent already runs as that user.
func (a *account) credential() *syscall.Credential {
	if uid, gid := agentIDs(); int(a.uid) == uid && int(a.gid) == gid {
		return nil
	}
	return &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: a.groups}
}

// agentIDs are the agent's uid and gid, asked once: they never change, and
// each is a system call (a round trip in gVisor) on every command's start.
var agentIDs = sync.OnceValues(func() (int, int) { return os.Getuid(), os.Getgid() })

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
