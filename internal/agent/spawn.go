package agent

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// spawn is syscall.ForkExec(argv[0], argv, attr) without Go's fork child,
// with the child's RLIMIT_NPROC set to nproc (if not nil) before its exec.
//
// Go's child resets every signal handler the runtime installed, one
// rt_sigaction each (~56), before it execs, and reports failures through a
// pipe: in gVisor each system call is a round trip to the sentry, and these
// were ~60 of the ~190 a spare shell's start costs (docs/density/NOTES.md,
// "Session 13"). spawn's child is clone3(CLONE_VM|CLONE_VFORK|
// CLONE_CLEAR_SIGHAND), which resets the handlers in the clone itself,
// running a list of system calls prepared by the parent (spawn_amd64.s):
// the same steps as Go's child for the attributes the agent uses, in the
// same order (setsid/setpgid, signal mask, groups/gid/uid, chdir, the
// descriptors, the controlling tty, then nproc and execve). A failing step
// leaves its errno in the shared memory and exits 253, as Go's child does.
//
// It returns errNoSpawn where its child could differ from ForkExec's, for
// the caller to use ForkExec: other SysProcAttr fields, a kernel without
// clone3's CLONE_CLEAR_SIGHAND, an architecture without spawn_*.s, and a
// process whose RLIMIT_NOFILE Go raised at start-up (Go's child restores
// the original, which only the syscall package knows).
func spawn(argv []string, attr *syscall.ProcAttr, nproc *unix.Rlimit) (int, error) {
	if !canSpawn(attr.Sys) {
		return 0, errNoSpawn
	}
	prog, keep, err := spawnProgramFor(argv, attr, nproc)
	if err != nil {
		return 0, err
	}
	syscall.ForkLock.Lock()
	pid, errno := rawSpawn(prog)
	syscall.ForkLock.Unlock()
	runtime.KeepAlive(keep)
	if errno == uintptr(unix.ENOSYS) || errno == uintptr(unix.EINVAL) {
		// No clone3, or one without CLONE_CLEAR_SIGHAND (Linux < 5.5).
		spawnState.ok.Store(false)
		return 0, errNoSpawn
	}
	if errno != 0 {
		return 0, syscall.Errno(errno)
	}
	if prog.failErrno != 0 {
		// The child exited (253) before its exec: reap it, as ForkExec does.
		var ws syscall.WaitStatus
		_, werr := syscall.Wait4(int(pid), &ws, 0, nil)
		for werr == syscall.EINTR {
			_, werr = syscall.Wait4(int(pid), &ws, 0, nil)
		}
		return 0, syscall.Errno(prog.failErrno)
	}
	return int(pid), nil
}

// errNoSpawn is spawn's answer where ForkExec must start the child.
var errNoSpawn = errors.New("spawn: not here")

// spawnState records, at the first spawn, whether spawn may run its own
// child; ok is cleared for good when the kernel refuses clone3.
var spawnState struct {
	once sync.Once
	ok   atomic.Bool
}

// canSpawn reports whether spawn's child does what Go's would for sys.
func canSpawn(sys *syscall.SysProcAttr) bool {
	spawnState.once.Do(func() {
		// Go's syscall package raises a soft RLIMIT_NOFILE below the hard
		// limit to hard-1 at start-up, and its child restores the original
		// (if the limit is still hard-1). Nothing here can read that
		// original; so spawn is used only where Go did not raise it, and
		// then Go's child would not touch the limit either. Checked once:
		// nothing can change the agent's limit before its first command.
		var lim unix.Rlimit
		err := unix.Prlimit(0, unix.RLIMIT_NOFILE, nil, &lim)
		spawnState.ok.Store(spawnSupported && err == nil && !(lim.Max > 0 && lim.Cur == lim.Max-1))
	})
	if !spawnState.ok.Load() {
		return false
	}
	if sys == nil {
		return true
	}
	return sys.Chroot == "" && !sys.Ptrace && !sys.Foreground && !sys.Noctty &&
		sys.Pdeathsig == 0 && sys.Cloneflags == 0 && sys.Unshareflags == 0 &&
		sys.UidMappings == nil && sys.GidMappings == nil && len(sys.AmbientCaps) == 0 &&
		!sys.UseCgroupFD && sys.PidFD == nil
}

// spawnProgram is what rawSpawn reads and writes; its layout is known to
// spawn_amd64.s through go_asm.h.
type spawnProgram struct {
	clone     cloneArgs
	ops       *spawnOp
	nops      uintptr
	failErrno uintptr // set by a child whose step failed
}

// cloneArgs is struct clone_args up to tls (CLONE_ARGS_SIZE_VER0).
type cloneArgs struct {
	flags, pidfd, childTID, parentTID, exitSignal, stack, stackSize, tls uint64
}

// spawnOp is one system call of the child. An error ends the child unless
// ignoreErr is set.
type spawnOp struct {
	nr        uintptr
	a         [6]uintptr
	ignoreErr uintptr
}

// emptySigset is the child's signal mask: nothing blocked. (Go's child
// restores the mask its thread was created with, which is the process's at
// start-up: empty for the agent.)
var emptySigset uint64

// spawnProgramFor prepares the child's steps. keep holds the memory they
// point into, which must stay alive until rawSpawn returns.
func spawnProgramFor(argv []string, attr *syscall.ProcAttr, nproc *unix.Rlimit) (*spawnProgram, []any, error) {
	argv0p, err := syscall.BytePtrFromString(argv[0])
	if err != nil {
		return nil, nil, err
	}
	argvp, err := syscall.SlicePtrFromStrings(argv)
	if err != nil {
		return nil, nil, err
	}
	envvp, err := syscall.SlicePtrFromStrings(attr.Env)
	if err != nil {
		return nil, nil, err
	}
	keep := []any{argv0p, argvp, envvp}
	sys := attr.Sys
	if sys == nil {
		sys = &syscall.SysProcAttr{}
	}
	if sys.Setctty && sys.Ctty >= len(attr.Files) {
		return nil, nil, syscall.EINVAL // ForkExec: "Setctty set but Ctty not valid in child"
	}
	ptr := func(p unsafe.Pointer) uintptr { return uintptr(p) }
	var ops []spawnOp
	op := func(nr uintptr, args ...uintptr) *spawnOp {
		o := spawnOp{nr: nr}
		copy(o.a[:], args)
		ops = append(ops, o)
		return &ops[len(ops)-1]
	}
	if sys.Setsid {
		op(unix.SYS_SETSID)
	}
	if sys.Setpgid {
		op(unix.SYS_SETPGID, 0, uintptr(sys.Pgid))
	}
	op(unix.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, ptr(unsafe.Pointer(&emptySigset)), 0, 8)
	if cred := sys.Credential; cred != nil {
		if !cred.NoSetGroups {
			var groups uintptr
			if len(cred.Groups) > 0 {
				groups = ptr(unsafe.Pointer(&cred.Groups[0]))
				keep = append(keep, cred.Groups)
			}
			op(unix.SYS_SETGROUPS, uintptr(len(cred.Groups)), groups)
		}
		op(unix.SYS_SETGID, uintptr(cred.Gid))
		op(unix.SYS_SETUID, uintptr(cred.Uid))
	}
	if attr.Dir != "" {
		dir, err := syscall.BytePtrFromString(attr.Dir)
		if err != nil {
			return nil, nil, err
		}
		keep = append(keep, dir)
		op(unix.SYS_CHDIR, ptr(unsafe.Pointer(dir)))
	}
	// The descriptors, as Go's child maps them: first those that pass 2
	// would overwrite are moved above all of them, then each is put in
	// place (dup3 clears close-on-exec; one already in place has it
	// cleared by fcntl).
	fd := make([]int, len(attr.Files))
	nextfd := len(attr.Files)
	for i, u := range attr.Files {
		nextfd = max(nextfd, int(u))
		fd[i] = int(u)
	}
	nextfd++
	for i := range fd {
		if fd[i] >= 0 && fd[i] < i {
			op(unix.SYS_DUP3, uintptr(fd[i]), uintptr(nextfd), unix.O_CLOEXEC)
			fd[i] = nextfd
			nextfd++
		}
	}
	for i := range fd {
		switch {
		case fd[i] == -1:
			op(unix.SYS_CLOSE, uintptr(i)).ignoreErr = 1
		case fd[i] == i:
			op(unix.SYS_FCNTL, uintptr(i), unix.F_SETFD, 0)
		default:
			op(unix.SYS_DUP3, uintptr(fd[i]), uintptr(i), 0)
		}
	}
	for i := len(fd); i < 3; i++ {
		op(unix.SYS_CLOSE, uintptr(i)).ignoreErr = 1
	}
	if sys.Setctty {
		op(unix.SYS_IOCTL, uintptr(sys.Ctty), unix.TIOCSCTTY, 1)
	}
	if nproc != nil {
		keep = append(keep, nproc)
		op(unix.SYS_PRLIMIT64, 0, unix.RLIMIT_NPROC, ptr(unsafe.Pointer(nproc)))
	}
	op(unix.SYS_EXECVE, ptr(unsafe.Pointer(argv0p)), ptr(unsafe.Pointer(&argvp[0])), ptr(unsafe.Pointer(&envvp[0])))
	keep = append(keep, ops)
	prog := &spawnProgram{
		clone: cloneArgs{
			flags:      unix.CLONE_VM | unix.CLONE_VFORK | unix.CLONE_CLEAR_SIGHAND,
			exitSignal: uint64(unix.SIGCHLD),
		},
		ops:  &ops[0],
		nops: uintptr(len(ops)),
	}
	return prog, keep, nil
}
