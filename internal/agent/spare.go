package agent

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// A spare shell is started ahead of the next command, so that the command
// does not wait for a shell to be forked and exec'd: in gVisor that takes
// 15-20 ms (every new address space costs a host stub process), far more
// than the rest of an exec. The spare is `/bin/sh -c '. /proc/self/fd/3'`:
// started with the default user, working directory and environment, in its
// own process group, with its stdio pipes already made, it blocks reading
// its script from a pipe on fd 3. A command that would start exactly such a
// shell (no pty, the default user and directory, environment variables that
// `export` can set) takes it instead: the agent writes
//
//	exec 3<&-; unset SHELL; case ...; export K='v'; ...; <command>
//
// (one line, so that the command's line numbers are those of `sh -c`) and
// closes the pipe. The shell then runs the command as `sh -c` would and
// exits with its status; the visible differences are that the shell keeps
// its script open (close-on-exec, on a descriptor of 10 or more, which its
// children do not inherit) and that its initial environment (in
// /proc/PID/environ) has SHELL. Any other command starts a shell as before. After
// every command the agent starts the next spare, so it costs the sandbox one
// idle shell (visible in ps) and a fork's worth of CPU per command, off the
// command's critical path.
const spareArg = ". /proc/self/fd/3"

// maxSpareScript bounds the script handed to a spare. It must fit in the
// empty pipe (64 KiB in Linux and gVisor) so that writing it never blocks
// while the shell is busy running the start of it.
const maxSpareScript = 32 << 10

// shellManaged are variables the shell itself sets or interprets, which an
// `export` would not give the command the way an initial environment does.
var shellManaged = map[string]bool{
	"ENV": true, "IFS": true, "LINENO": true, "OLDPWD": true, "OPTARG": true,
	"OPTIND": true, "PPID": true, "PS1": true, "PS2": true, "PS4": true, "PWD": true,
}

type spareShell struct {
	key    string // see spareKey: what the shell was started as
	prefix string // the start of its script, before the exports (see startSpare)
	pid    int    // also its process group id
	status <-chan syscall.WaitStatus
	pipes  *stdioPipes // the parent's ends, with the script pipe (fd 3)
}

// spareKey identifies how a shell is started: a spare serves a command only
// if the command's shell would start with the same key.
func spareKey(a *account, dir string, env []string) string {
	var b strings.Builder
	for _, n := range append([]uint32{a.uid, a.gid}, a.groups...) {
		b.WriteString(strconv.FormatUint(uint64(n), 10))
		b.WriteByte(',')
	}
	for _, s := range append([]string{a.name, a.home, dir}, env...) {
		b.WriteByte(0)
		b.WriteString(s)
	}
	return b.String()
}

// spareScript is what a spare runs, after its prefix, for command with the
// extra environment variables, or false if a spare cannot run it like
// `sh -c` would.
func spareScript(command string, extra map[string]string) (string, bool) {
	keys := make([]string, 0, len(extra))
	for k := range extra {
		if !isShellName(k) || shellManaged[k] {
			return "", false
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(" export " + k + "=" + shellQuote(extra[k]) + ";")
	}
	b.WriteByte(' ')
	b.WriteString(command)
	if b.Len() > maxSpareScript {
		return "", false
	}
	return b.String(), true
}

func isShellName(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// shellQuote quotes s for a POSIX shell, in single quotes (a quote in s
// ends the quoting, is escaped, and starts it again).
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// alive reports whether the spare has not exited (someone may kill it while
// it waits: `pkill sh`, the watchdog).
func (sp *spareShell) alive() bool {
	select {
	case <-sp.status:
		return false
	default:
		return true
	}
}

// discard kills the spare and closes its pipes; the reaper reaps it.
func (sp *spareShell) discard() {
	syscall.Kill(sp.pid, syscall.SIGKILL)
	sp.pipes.closeParentEnds()
}

// startSpare starts a spare shell as the default user.
func (s *Server) startSpare() (*spareShell, error) {
	acct, err := lookupAccount(s.cfg.DefaultUser)
	if err != nil {
		return nil, err
	}
	dir := acct.workdir(s.cfg.DefaultWorkdir)
	env, err := s.childEnv(acct, nil, false)
	if err != nil {
		return nil, err
	}
	stdio, err := newStdioPipes(true)
	if err != nil {
		return nil, err
	}
	sys := &syscall.SysProcAttr{Credential: acct.credential(), Setpgid: true}
	if sys.Credential != nil {
		// The shell opens its script as /proc/self/fd/3, which checks the
		// pipe's owner and mode (0600, the agent's) against its user.
		if err := unix.Fchown(stdio.child[3], int(acct.uid), int(acct.gid)); err != nil {
			stdio.closeChildEnds()
			stdio.closeParentEnds()
			return nil, fmt.Errorf("chown script pipe: %w", err)
		}
	}
	// Started without SHELL, bash (/bin/sh in stasis's images) looks the
	// user's login shell up in the account database to set it (not
	// exported): two nscd connects and a read of /etc/passwd, 14 system
	// calls of a spare's ~100 in gVisor (docs/density/NOTES.md, "Session
	// 11"). Given SHELL, it skips that; the script then makes SHELL what
	// the shell would have had: unset, and for bash the login shell again,
	// unexported.
	key, prefix, shellEnv := spareKey(acct, dir, env), "exec 3<&-;", env
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "SHELL=") }) {
		shellEnv = append(env[:len(env):len(env)], "SHELL="+acct.shell)
		prefix += " unset SHELL; case ${BASH_VERSION-} in ?*) SHELL=" + shellQuote(acct.shell) + ";; esac;"
	}
	pid, status, err := s.reaper.Start(func() (int, error) {
		return s.forkExec([]string{shell, "-c", spareArg}, procAttr(dir, shellEnv, stdio.child, sys))
	})
	stdio.closeChildEnds()
	if err != nil {
		stdio.closeParentEnds()
		return nil, err
	}
	return &spareShell{key: key, prefix: prefix, pid: pid, status: status, pipes: stdio}, nil
}

// refillAfter claims the start of the next spare now, unless a spare
// exists, is being started, or spares are off, and starts it once sent is
// closed (the command's exit has gone out: the spare does not compete with
// it) or after refillGrace (a client that does not read its exit must not
// hold up the next command). A command claims it before sending its exit,
// so that the next command, which cannot come sooner, finds the spare being
// started and waits for it instead of forking a shell of its own beside it:
// on the sandbox's one vCPU two forks at once take as long as one after the
// other. Claimed after the exit instead, the next request could come first:
// seen with the agent on a host (TestBackToBackCommandsRunOnSpares, 1 run
// in 3); in gVisor stasisd's round trip has been the longer so far.
func (s *Server) refillAfter(sent <-chan struct{}) {
	s.spareMu.Lock()
	if s.cfg.NoSpareShell || s.spareClosed || s.spare != nil || s.spareFilling != nil {
		s.spareMu.Unlock()
		return
	}
	done := make(chan struct{})
	s.spareFilling = done
	s.spareMu.Unlock()
	go func() {
		select {
		case <-sent:
		case <-time.After(refillGrace):
		}
		s.fillSpare(done)
	}()
}

// refillAround sends a command's exit (send) with the next spare claimed
// before it goes out and started after it (refillAfter).
func (s *Server) refillAround(send func()) {
	sent := make(chan struct{})
	s.refillAfter(sent)
	send()
	close(sent)
}

// refillGrace bounds how long refillAfter waits for a command's exit to be
// sent.
const refillGrace = 100 * time.Millisecond

// fillSpare starts the spare claimed by refillAfter and closes done once
// it is ready (or failed).
func (s *Server) fillSpare(done chan struct{}) {
	sp, err := s.startSpare()
	if err != nil {
		s.log.Printf("exec: starting a spare shell: %v", err)
	}
	s.spareMu.Lock()
	s.spareFilling = nil
	if s.spareClosed && sp != nil {
		sp.discard()
		sp = nil
	}
	s.spare = sp
	s.spareMu.Unlock()
	close(done)
}

// takeSpare hands out the spare if it was started with key and is alive. A
// spare being started is waited for: that is sooner than starting another.
func (s *Server) takeSpare(key string) *spareShell {
	s.spareMu.Lock()
	if ch := s.spareFilling; ch != nil {
		s.spareMu.Unlock()
		<-ch
		s.spareMu.Lock()
	}
	sp := s.spare
	if sp == nil || sp.key != key {
		s.spareMu.Unlock()
		return nil
	}
	s.spare = nil
	s.spareMu.Unlock()
	if !sp.alive() {
		sp.discard()
		return nil
	}
	return sp
}

// dropSpare discards the spare and waits (briefly) until it is gone; none is
// started again until the next command ran. Called before a checkpoint: each
// process costs gVisor a host process and state to restore (about 18 ms of
// a small sandbox's restore for one idle shell), and the next command can
// start its shell itself.
func (s *Server) dropSpare() {
	s.spareMu.Lock()
	if ch := s.spareFilling; ch != nil {
		s.spareMu.Unlock()
		<-ch
		s.spareMu.Lock()
	}
	sp := s.spare
	s.spare = nil
	s.spareMu.Unlock()
	if sp != nil {
		sp.discard()
		select {
		case <-sp.status:
		case <-time.After(time.Second):
		}
	}
}

// closeSpare discards the spare and starts no more (server shutdown).
func (s *Server) closeSpare() {
	s.spareMu.Lock()
	s.spareClosed = true
	sp := s.spare
	s.spare = nil
	s.spareMu.Unlock()
	if sp != nil {
		sp.discard()
	}
}

// matchingSpare takes the spare if it can run req's command exactly as a
// new shell of acct in dir would, and returns it with the script to hand it;
// else it returns nil.
func (e *execSession) matchingSpare(req agentproto.StartRequest, acct *account, dir string) (*spareShell, string) {
	if e.s.cfg.NoSpareShell {
		return nil, ""
	}
	script, ok := spareScript(req.Command, req.Env)
	if !ok {
		return nil, ""
	}
	env, err := e.s.childEnv(acct, nil, false)
	if err != nil {
		return nil, ""
	}
	return e.s.takeSpare(spareKey(acct, dir, env)), script
}

// startOnSpare runs p's command on sp by handing it script.
func (e *execSession) startOnSpare(p *process, sp *spareShell, script string) (*process, agentproto.Exit) {
	p.pid, p.status = sp.pid, sp.status
	p.stdin = sp.pipes.stdin
	p.outputs = sp.pipes.outputs()
	if !p.gather {
		// A stream reads its outputs through Go's poller, with deadlines.
		for i, o := range p.outputs {
			if o.f == nil {
				p.outputs[i].f = os.NewFile(uintptr(o.fd), "pipe")
			}
		}
	}
	// Registered first, as in start, so that a shutdown kills it.
	e.mu.Lock()
	if e.aborted {
		e.mu.Unlock()
		sp.discard()
		return nil, startFailed("agent is shutting down")
	}
	e.proc = p
	e.mu.Unlock()
	if err := writeAll(sp.pipes.script, sp.prefix+script); err != nil {
		// The shell died since takeSpare looked; wait reports how.
		e.s.log.Printf("exec: handing a command to spare shell %d: %v", sp.pid, err)
	}
	unix.Close(sp.pipes.script)
	sp.pipes.script = -1
	e.s.kickWatchdog()
	return p, agentproto.Exit{}
}

// writeAll writes s to the blocking descriptor fd.
func writeAll(fd int, s string) error {
	b := []byte(s)
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
