package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/agentproto"
	http "github.com/stasis-sandbox/stasis/internal/minihttp" // net/http's API, not its weight (see the package)
)

const (
	// outputGrace is how long, once the shell has exited, the agent keeps
	// waiting for more output while its stdout/stderr are idle. Background
	// jobs (`cmd &`) inherit the pipes and may hold them open forever; they
	// keep running, but the exec finishes.
	outputGrace = 100 * time.Millisecond
	// startFrameTimeout bounds the wait for the client's start frame.
	startFrameTimeout = 30 * time.Second
	// drainTimeout bounds how long the agent waits, after the exit frame and
	// a half-close, for the client to close its side. Closing first with
	// unread input would make the kernel reset the connection and could
	// destroy the exit frame in flight.
	drainTimeout = 5 * time.Second
	// shell runs every command as `shell -c <command>`.
	shell = "/bin/sh"
	// defaultPath is used when the agent's own environment has no PATH.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// outputPipeSize is the capacity asked for the stdout and stderr pipes
	// (F_SETPIPE_SZ; 64 KiB by default). A command printing fast then rarely
	// blocks on a full pipe while the agent is busy sending, and the agent
	// finds more to send at each read. A pipe's memory is allocated as it
	// fills, so an idle one costs nothing more.
	outputPipeSize = 1 << 20
	// outputGather is how long, in a buffered run (HoldStarted), the pump
	// waits after a read that found the pipe less than a quarter full
	// before reading again, unless the shell exits first. The answer goes out only at the exit
	// anyway; what it saves is the wake-ups: a command printing in small
	// writes (`yes | head -c 1048576` writes 4 KiB at a time) otherwise
	// wakes the agent for almost every write, and on the sandbox's one vCPU
	// each wake-up and each send through its network stack is taken from
	// the command (measured: ~210 reads and sends per MB become ~20).
	outputGather = 10 * time.Millisecond
	// outputIdleMax bounds how long the pump of a buffered run sleeps
	// while the command prints nothing (the sleep doubles from
	// outputGather): a command that starts printing after a silence finds
	// a pipe of 1 MiB, enough for that long at any speed the sandbox's
	// one vCPU reaches through pipe writes.
	outputIdleMax = 80 * time.Millisecond
)

const upgradeResponse = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " +
	agentproto.UpgradeProtocol + "\r\n\r\n"

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request) {
	if !allowMethods(w, r, http.MethodPost) {
		return
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") ||
		!strings.EqualFold(r.Header.Get("Upgrade"), agentproto.UpgradeProtocol) {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", agentproto.UpgradeProtocol)
		writeError(w, http.StatusUpgradeRequired, agentproto.CodeBadRequest, "exec requires Upgrade: "+agentproto.UpgradeProtocol)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		writeError(w, http.StatusInternalServerError, agentproto.CodeInternal, "connection cannot be upgraded")
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		s.log.Printf("exec: hijack: %v", err)
		return
	}
	conn.SetDeadline(time.Time{})
	// The 101 goes out with the first frame, in one write: every send
	// through gVisor's network stack costs, and the client does not wait
	// for the 101 before sending its start frame (see agentproto).
	conn = &upgradedConn{Conn: conn, pending: []byte(upgradeResponse)}
	e := &execSession{
		s:    s,
		conn: conn,
		br:   brw.Reader,
		fr:   agentproto.NewFrameReader(brw.Reader),
		fw:   agentproto.NewFrameWriter(conn),
	}
	e.run()
}

// upgradedConn is an exec connection whose 101 response has not been sent
// yet: the first Write (or CloseWrite) sends it first, in the same write.
type upgradedConn struct {
	net.Conn
	mu      sync.Mutex
	pending []byte // the 101, until sent
}

func (c *upgradedConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending == nil {
		return c.Conn.Write(b)
	}
	buf := append(c.pending, b...)
	sent := len(c.pending)
	c.pending = nil
	n, err := c.Conn.Write(buf)
	return max(0, n-sent), err
}

// CloseWrite sends the 101 if nothing else did, then half-closes.
func (c *upgradedConn) CloseWrite() error {
	c.mu.Lock()
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	if pending != nil {
		if _, err := c.Conn.Write(pending); err != nil {
			return err
		}
	}
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close() // no half-close: as halfClose does
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// execSession is one upgraded exec connection.
type execSession struct {
	s    *Server
	conn net.Conn
	br   io.Reader
	fr   *agentproto.FrameReader
	fw   *agentproto.FrameWriter

	held *heldWriter // a buffered run's (holdStarted); nil for a stream

	mu      sync.Mutex
	proc    *process
	aborted bool
}

func (e *execSession) run() {
	defer e.conn.Close()
	e.s.track(e, true)
	defer e.s.track(e, false)

	e.conn.SetReadDeadline(time.Now().Add(startFrameTimeout))
	t, payload, err := e.fr.ReadFrame()
	if err != nil {
		return // client went away before asking for anything
	}
	e.conn.SetReadDeadline(time.Time{})

	var req agentproto.StartRequest
	var proc *process
	var exit agentproto.Exit
	switch {
	case t != agentproto.FrameStart:
		exit = startFailed("protocol error: first frame is %v, want start", t)
	case json.Unmarshal(payload, &req) != nil:
		exit = startFailed("protocol error: malformed start frame")
	case req.Keep || req.Attach != 0:
		e.runKept(req) // attach.go
		return
	default:
		proc, exit = e.start(req)
	}
	if proc == nil {
		e.sendJSON(agentproto.FrameExit, exit)
		e.closeOut(nil)
		return
	}

	// "started" must be the first frame: only now may output flow.
	if req.HoldStarted {
		e.holdStarted(proc.pid)
	} else {
		e.sendJSON(agentproto.FrameStarted, agentproto.Started{Pid: proc.pid})
	}
	for _, o := range proc.outputs {
		proc.outWG.Add(1)
		go proc.pump(o)
	}
	go proc.writeStdin()
	inputDone := make(chan struct{})
	go func() {
		defer close(inputDone)
		proc.readInput()
	}()
	exit = proc.wait()
	if e.held != nil {
		e.held.hold(false) // what wait held goes out with the exit
	}
	e.s.refillAround(func() { e.sendJSON(agentproto.FrameExit, exit) })
	proc.closeGathered()
	e.closeOut(inputDone)
}

// closeOut half-closes the connection and waits (bounded) for the client to
// close its side, draining whatever it still sends.
func (e *execSession) closeOut(inputDone <-chan struct{}) {
	if cw, ok := e.conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	e.conn.SetReadDeadline(time.Now().Add(drainTimeout))
	if inputDone != nil {
		<-inputDone // the input reader keeps reading until EOF
		return
	}
	io.Copy(io.Discard, e.br)
}

func (e *execSession) sendJSON(t agentproto.FrameType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return e.fw.WriteFrame(t, b)
}

// holdStarted makes the started frame go out in the same write as the next
// frame (the command's first output or its exit), for a client that asked
// for it (HoldStarted).
func (e *execSession) holdStarted(pid int) {
	var b bytes.Buffer
	payload, _ := json.Marshal(agentproto.Started{Pid: pid})
	agentproto.NewFrameWriter(&b).WriteFrame(agentproto.FrameStarted, payload)
	e.held = &heldWriter{w: e.conn, held: b.Bytes()}
	e.fw = agentproto.NewFrameWriter(e.held)
}

// abort kills the session's command (server shutdown).
func (e *execSession) abort() {
	e.mu.Lock()
	e.aborted = true
	p := e.proc
	e.mu.Unlock()
	if p != nil {
		p.kill(syscall.SIGKILL)
	}
}

func startFailed(format string, args ...any) agentproto.Exit {
	return agentproto.Exit{ExitCode: agentproto.ExitCodeStartFailed, Error: fmt.Sprintf(format, args...)}
}

// start starts req's command. On failure it returns a nil process and the
// exit to report (ExitCodeStartFailed).
func (e *execSession) start(req agentproto.StartRequest) (*process, agentproto.Exit) {
	if strings.TrimSpace(req.Command) == "" {
		return nil, startFailed("empty command")
	}
	if strings.IndexByte(req.Command, 0) >= 0 {
		return nil, startFailed("command contains a NUL byte")
	}
	if req.TimeoutS < 0 {
		return nil, startFailed("negative timeout")
	}
	userName := req.User
	if userName == "" {
		userName = e.s.cfg.DefaultUser
	}
	acct, err := lookupAccount(userName)
	if err != nil {
		return nil, startFailed("%v", err)
	}
	dir := acct.workdir(e.s.cfg.DefaultWorkdir)
	if req.WorkingDir != "" {
		if filepath.IsAbs(req.WorkingDir) {
			dir = filepath.Clean(req.WorkingDir)
		} else {
			dir = filepath.Join(dir, req.WorkingDir)
		}
	}
	if fi, err := os.Stat(dir); err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return nil, startFailed("working directory %s: %v", dir, errno)
		}
		return nil, startFailed("working directory %s: %v", dir, err)
	} else if !fi.IsDir() {
		return nil, startFailed("working directory %s: not a directory", dir)
	}
	env, err := e.s.childEnv(acct, req.Env, req.PTY != nil)
	if err != nil {
		return nil, startFailed("%v", err)
	}

	p := &process{
		e:      e,
		stdinQ: make(chan []byte, 16),
		exitCh: make(chan struct{}),
		gather: req.HoldStarted && !req.Keep, // a kept command may be attached to later: a stream
	}
	if req.TimeoutS > 0 {
		p.timeout = time.Duration(req.TimeoutS) * time.Second
	}
	if req.PTY == nil {
		if sp, script := e.matchingSpare(req, acct, dir); sp != nil {
			return e.startOnSpare(p, sp, script)
		}
	}
	sys := &syscall.SysProcAttr{Credential: acct.credential()}
	var childFDs []int
	var closeChildEnds func()
	if req.PTY != nil {
		ptmx, tty, err := openPTY()
		if err != nil {
			return nil, startFailed("open pty: %v", err)
		}
		cols, rows := req.PTY.Cols, req.PTY.Rows
		if cols == 0 {
			cols = 80
		}
		if rows == 0 {
			rows = 24
		}
		if err := setWinsize(ptmx, cols, rows); err != nil {
			ptmx.Close()
			tty.Close()
			return nil, startFailed("set pty size: %v", err)
		}
		if sys.Credential != nil {
			// Like login(1): the terminal belongs to its user.
			tty.Chown(int(acct.uid), int(acct.gid))
		}
		p.pty = true
		p.stdin = ptmx
		p.outputs = []output{{ptmx, -1, agentproto.FrameStdout}}
		t := int(tty.Fd()) // blocking, as a child expects
		childFDs, closeChildEnds = []int{t, t, t}, func() { tty.Close() }
		// A new session with the pty as controlling terminal; its process
		// group is the shell's pid, like Setpgid.
		sys.Setsid = true
		sys.Setctty = true
		sys.Ctty = 0
	} else {
		stdio, err := newStdioPipes(false)
		if err != nil {
			return nil, startFailed("%v", err)
		}
		p.stdin = stdio.stdin
		p.outputs = stdio.outputs()
		childFDs, closeChildEnds = stdio.child, stdio.closeChildEnds
		sys.Setpgid = true
	}
	attr := procAttr(dir, env, childFDs, sys)
	argv := []string{shell, "-c", req.Command}

	// Register with the session first so that a shutdown racing with the
	// start still kills the command.
	e.mu.Lock()
	if e.aborted {
		e.mu.Unlock()
		p.closeParentEnds()
		closeChildEnds()
		return nil, startFailed("agent is shutting down")
	}
	pid, status, err := e.s.reaper.Start(func() (int, error) {
		return e.s.forkExec(argv, attr)
	})
	if err == nil {
		p.pid, p.status = pid, status
		e.proc = p
	}
	e.mu.Unlock()
	if err == nil {
		e.s.kickWatchdog()
	}
	closeChildEnds()
	if err != nil {
		p.closeParentEnds()
		// spawn's errors come from the child's chdir (e.g. the user may
		// not enter the directory) or exec.
		return nil, startFailed("start %s as %s in %s: %v", shell, acct.name, dir, err)
	}
	return p, agentproto.Exit{}
}

// agentTaskReserve is how far above Config.MaxProcs the agent's own soft
// RLIMIT_NPROC is set while it forks a command; see forkExec.
const agentTaskReserve = 64

// forkExec starts the shell with an RLIMIT_NPROC of Config.MaxProcs, if set.
// It is called with the reaper's lock held, so forks never overlap.
//
// The agent itself must stay unlimited: gVisor checks the creating task's
// limit against its user's task count, and a fork bomb holding root's count
// at the limit must not make the agent's own thread creation fail, which the
// Go runtime treats as fatal. So the limit is set in the child, before its
// exec (spawn): a command of the agent's own user gets exactly MaxProcs,
// soft and hard; one of another user the soft limit MaxProcs+
// agentTaskReserve under the agent's hard limit, as it had when the agent
// could not set it in the child (below; a command can raise its soft limit
// again, which no fork bomb does by accident).
//
// Where spawn cannot run its own child (ForkExec cannot run code between
// fork and exec):
//   - The agent lowers its own soft limit around the fork, and the child
//     inherits it, with no window for a child to start unlimited. That soft
//     limit is MaxProcs+agentTaskReserve, so that root's count, at most
//     MaxProcs plus the agent's threads (a dozen or two), cannot make the
//     agent fail to create a thread meanwhile. (Only a root command that
//     forked before its prlimit below could take root's count that high;
//     the watchdog kills such a bomb before, at MaxProcs processes, and
//     the Go runtime rarely creates a thread once it has idle ones.)
//   - A command of the agent's own user then gets exactly MaxProcs, soft and
//     hard, with prlimit. (Its first processes may have forked already with
//     the inherited limit: measured on a busy host, the shell can run a
//     command before prlimit lands.) For another user prlimit is not allowed
//     (no CAP_SYS_RESOURCE): its hard limit stays unlimited.
//
// The watchdog's process limit backs all this up.
func (s *Server) forkExec(argv []string, attr *syscall.ProcAttr) (int, error) {
	n := uint64(s.cfg.MaxProcs)
	if n == 0 {
		pid, err := spawn(argv, attr, nil)
		if err == errNoSpawn {
			return syscall.ForkExec(argv[0], argv, attr)
		}
		return pid, err
	}
	ownUser := attr.Sys.Credential == nil
	if cred := attr.Sys.Credential; cred != nil {
		uid, _ := agentIDs()
		ownUser = int(cred.Uid) == uid
	}
	// The agent's own limit: another user's command's is derived from it,
	// and the fallback below lowers and restores it. Read once, when needed.
	var old unix.Rlimit
	readOld := func() bool {
		err := unix.Prlimit(0, unix.RLIMIT_NPROC, nil, &old)
		if err != nil {
			s.log.Printf("exec: reading RLIMIT_NPROC: %v", err)
		}
		return err == nil
	}
	if !ownUser && !readOld() {
		return syscall.ForkExec(argv[0], argv, attr)
	}
	lim := unix.Rlimit{Cur: n, Max: n}
	if !ownUser {
		lim = unix.Rlimit{Cur: min(n+agentTaskReserve, old.Max), Max: old.Max}
	}
	pid, err := spawn(argv, attr, &lim)
	if err != errNoSpawn {
		return pid, err
	}

	if ownUser && !readOld() { // another user's was read above
		return syscall.ForkExec(argv[0], argv, attr)
	}
	tmp := unix.Rlimit{Cur: min(n+agentTaskReserve, old.Max), Max: old.Max}
	if err := unix.Prlimit(0, unix.RLIMIT_NPROC, &tmp, nil); err != nil {
		s.log.Printf("exec: lowering RLIMIT_NPROC: %v", err)
		return syscall.ForkExec(argv[0], argv, attr)
	}
	pid, err = syscall.ForkExec(argv[0], argv, attr)
	if rerr := unix.Prlimit(0, unix.RLIMIT_NPROC, &old, nil); rerr != nil {
		s.log.Printf("exec: restoring RLIMIT_NPROC: %v", rerr)
	}
	if errors.Is(err, syscall.EAGAIN) {
		// Root is over the limit (a bomb the watchdog has not killed yet):
		// the agent may still start commands.
		pid, err = syscall.ForkExec(argv[0], argv, attr)
	}
	if err == nil && ownUser {
		if perr := unix.Prlimit(pid, unix.RLIMIT_NPROC, &lim, nil); perr != nil {
			s.log.Printf("exec: limiting the tasks of pid %d: %v", pid, perr)
		}
	}
	return pid, err
}

// childEnv is the environment of a command run as a: the agent's environment,
// HOME/USER/LOGNAME of a, TERM on a pty, then the request's variables.
func (s *Server) childEnv(a *account, extra map[string]string, tty bool) ([]string, error) {
	var keys []string
	vals := make(map[string]string)
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			keys = append(keys, k)
		}
		vals[k] = v
	}
	for _, kv := range s.cfg.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.HasPrefix(k, EnvPrefix) {
			continue
		}
		set(k, v)
	}
	if _, ok := vals["PATH"]; !ok {
		set("PATH", defaultPath)
	}
	if a.home != "" {
		set("HOME", a.home)
	}
	set("USER", a.name)
	set("LOGNAME", a.name)
	if _, ok := vals["TERM"]; tty && !ok {
		set("TERM", "xterm-256color")
	}
	extraKeys := make([]string, 0, len(extra))
	for k := range extra {
		extraKeys = append(extraKeys, k)
	}
	slices.Sort(extraKeys)
	for _, k := range extraKeys {
		v := extra[k]
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.IndexByte(v, 0) >= 0 {
			return nil, fmt.Errorf("invalid environment variable %q", k)
		}
		set(k, v)
	}
	env := make([]string, len(keys))
	for i, k := range keys {
		env[i] = k + "=" + vals[k]
	}
	return env, nil
}

type output struct {
	f  *os.File // nil: fd is the output
	fd int      // with f nil: a non-blocking descriptor in no poller (a spare's, see newStdioPipes)
	t  agentproto.FrameType
}

// process is a running command of an exec session.
type process struct {
	e       *execSession
	pid     int // also the process group id
	status  <-chan syscall.WaitStatus
	pty     bool
	stdin   *os.File // pipe write end, or the pty master
	outputs []output // stdout and stderr pipes, or the pty master
	timeout time.Duration
	gather  bool // a buffered run: see outputGather

	stdinQ chan []byte   // input reader → stdin writer; nil means close stdin
	exitCh chan struct{} // closed when the shell has been reaped
	outWG  sync.WaitGroup
	exited atomic.Bool // mirrors exitCh for the output pumps
	// gathered are the descriptors the gathering pumps read (under mu),
	// closed once the exit has gone out (closeGathered): not before, a
	// close is one more system call between the shell's exit and the
	// exit frame.
	gathered []int

	mu         sync.Mutex
	reaped     bool // under mu: no more signals to the group from us
	timedOut   bool
	killReason string // under mu: why the watchdog killed the group
}

// killFor kills the command's process group with SIGKILL on the watchdog's
// behalf, recording why for the exit frame. It reports false if the shell
// has been reaped already (the group then holds only background jobs).
func (p *process) killFor(reason string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaped {
		return false
	}
	if p.killReason == "" {
		p.killReason = reason
	}
	syscall.Kill(-p.pid, syscall.SIGKILL)
	return true
}

// kill signals the command's process group unless the shell has been reaped
// already: after that, the group holds only background jobs, which must
// survive.
func (p *process) kill(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.reaped {
		syscall.Kill(-p.pid, sig)
	}
}

// wait waits for the shell to exit and for its output to be forwarded, and
// returns the exit to report.
func (p *process) wait() agentproto.Exit {
	var timer *time.Timer
	if p.timeout > 0 {
		timer = time.AfterFunc(p.timeout, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			// A shell that has exited but whose status has not reached
			// us yet finished in time: its group now holds only
			// background jobs, which survive.
			if !p.reaped && !shellExited(p.pid) {
				p.timedOut = true
				syscall.Kill(-p.pid, syscall.SIGKILL)
			}
		})
	}
	ws := <-p.status
	if p.gather && p.e.held != nil {
		// The answer goes out at the exit anyway: the output still in
		// the pipes goes with it (see run).
		p.e.held.hold(true)
	}
	p.mu.Lock()
	p.reaped = true
	timedOut := p.timedOut
	killReason := p.killReason
	p.mu.Unlock()
	if timer != nil {
		timer.Stop()
	}
	p.exited.Store(true)
	close(p.exitCh)
	// Output still buffered is delivered; once an output has been idle for
	// outputGrace the pump stops (see pump).
	for _, o := range p.outputs {
		o.f.SetReadDeadline(time.Now().Add(outputGrace)) // nil, closed: an error, no matter
	}
	p.outWG.Wait()
	p.closeParentEnds()

	return exitFor(ws, killReason, timedOut, p.timeout)
}

// exitFor is the exit to report for a shell's wait status. A kill by the
// watchdog or the timeout is named only if the shell did die of a signal:
// one that exited on its own, even as the deadline passed, finished, and
// reports its own exit code.
func exitFor(ws syscall.WaitStatus, killReason string, timedOut bool, timeout time.Duration) agentproto.Exit {
	var exit agentproto.Exit
	switch {
	case ws.Exited():
		exit.ExitCode = ws.ExitStatus()
	case ws.Signaled():
		exit.ExitCode = 128 + int(ws.Signal())
	default:
		exit.ExitCode = agentproto.ExitCodeStartFailed
		exit.Error = fmt.Sprintf("unexpected wait status %#x", uint32(ws))
	}
	switch {
	case !ws.Signaled():
	case killReason != "":
		exit.Error = killReason
	case timedOut:
		exit.Error = fmt.Sprintf("command timed out after %s", timeout)
	}
	return exit
}

// shellExited reports whether the process pid has exited: it is a zombie
// (its status not yet collected by the reaper) or gone.
func shellExited(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	st, ok := parseStat(b, 0)
	return ok && st.state == 'Z'
}

func (p *process) closeParentEnds() {
	p.stdin.Close()
	for _, o := range p.outputs {
		o.f.Close() // nil for a gathering pump's descriptor: closeGathered
	}
}

// closeGathered closes the descriptors the gathering pumps read, once wait
// has returned (the pumps are done).
func (p *process) closeGathered() {
	for _, fd := range p.gathered {
		unix.Close(fd)
	}
}

// pump forwards one output as frames, as it arrives (a buffered run's:
// see gatherPump). A slow client blocks the frame write, which stops the
// reads and so, once the pipe is full, the command: back-pressure, no
// buffering beyond the pipe. After the shell exits, each read may wait at
// most outputGrace for data.
func (p *process) pump(o output) {
	defer p.outWG.Done()
	if p.gather {
		fd, err := o.fd, error(nil)
		if o.f != nil {
			// The duplicate is not in Go's poller: once the original
			// is closed, a write to the pipe wakes no thread of the
			// agent.
			if fd, err = unpolledDup(o.f); err == nil {
				o.f.Close()
			}
		}
		if err == nil {
			p.mu.Lock()
			p.gathered = append(p.gathered, fd)
			p.mu.Unlock()
			p.gatherPump(fd, o.t)
			return
		}
	}
	buf := make([]byte, agentproto.ChunkSize)
	for {
		if p.exited.Load() {
			o.f.SetReadDeadline(time.Now().Add(outputGrace))
		}
		n, err := o.f.Read(buf)
		if n > 0 {
			// On a write error the client is gone; keep draining so the
			// command does not block until the input side notices and
			// kills it.
			p.e.fw.WriteFrame(o.t, buf[:n])
		}
		if err != nil {
			return // EOF; EIO from a pty with no slave left; deadline
		}
	}
}

// gatherPump is pump for a buffered run, on fd, a non-blocking duplicate of
// the output's pipe that is in no poller: it reads what the pipe holds, and
// when that was little, sleeps outputGather (longer while the command is
// silent) or until the shell exits, instead of waking for every write. The
// wake-ups were the cost: with the pipe in Go's poller each write of the
// command woke the agent, read or not (measured).
func (p *process) gatherPump(fd int, t agentproto.FrameType) {
	buf := make([]byte, agentproto.ChunkSize)
	idle := outputGather
	for {
		n, err := unix.Read(fd, buf)
		switch {
		case n > 0:
			p.e.fw.WriteFrame(t, buf[:n]) // on error keep draining, as pump
			idle = outputGather
			if n == len(buf) && len(buf) < agentproto.MaxPayload {
				// More is waiting: read it in fewer, larger frames.
				buf = make([]byte, min(2*len(buf), agentproto.MaxPayload))
			}
			if n >= outputPipeSize/4 {
				// A command printing that fast is not kept waiting on
				// a pipe that fills while the pump sleeps.
				continue
			}
		case err == nil, err != unix.EAGAIN && err != unix.EINTR:
			return // EOF, or the pipe failed
		default:
			if !p.exited.Load() {
				idle = min(2*idle, outputIdleMax)
			}
		}
		if !p.exited.Load() {
			p.waitGather(idle)
			continue
		}
		// The shell has exited: background jobs may hold the pipe open;
		// stop once it has been idle for outputGrace.
		if !pollIn(fd, outputGrace) {
			return
		}
	}
}

// pollIn waits up to d for fd to be readable (or hung up), and reports
// whether it is.
func pollIn(fd int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(left/time.Millisecond)+1)
		switch {
		case err == unix.EINTR:
		case err != nil:
			return true // let the read report it
		default:
			return n > 0
		}
	}
}

// unpolledDup returns a non-blocking duplicate of f's descriptor, which Go's
// poller does not know. (File.Fd would switch f, and so the duplicate, to
// blocking mode.)
func unpolledDup(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(orig uintptr) { fd, derr = unix.FcntlInt(orig, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// waitGather waits d, or less if the shell exits meanwhile.
func (p *process) waitGather(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-p.exitCh:
	}
}

// readInput handles the client's frames until the connection ends. A
// connection that ends before the shell exits kills the process group.
func (p *process) readInput() {
	defer close(p.stdinQ)
	stdinClosed := false
	for {
		t, payload, err := p.e.fr.ReadFrame()
		if err != nil {
			p.kill(syscall.SIGKILL) // no-op if already reaped
			return
		}
		p.input(t, payload, &stdinClosed)
	}
}

// input handles one frame from the client.
func (p *process) input(t agentproto.FrameType, payload []byte, stdinClosed *bool) {
	switch t {
	case agentproto.FrameStdin:
		if *stdinClosed || len(payload) == 0 {
			return
		}
		select {
		case p.stdinQ <- payload:
		case <-p.exitCh:
		}
	case agentproto.FrameStdinClose:
		if *stdinClosed {
			return
		}
		*stdinClosed = true
		select {
		case p.stdinQ <- nil:
		case <-p.exitCh:
		}
	case agentproto.FrameSignal:
		if sig, err := agentproto.ParseSignal(string(payload)); err == nil {
			p.kill(sig)
		}
	case agentproto.FrameResize:
		var sz agentproto.PTYSize
		if p.pty && json.Unmarshal(payload, &sz) == nil && sz.Cols > 0 && sz.Rows > 0 {
			setWinsize(p.stdin, sz.Cols, sz.Rows)
		}
	}
}

// writeStdin copies queued input to the command. Closing stdin on a pty
// sends ^D (end of file at the start of a line), since the terminal stays.
func (p *process) writeStdin() {
	done := false
	for b := range p.stdinQ {
		if done {
			continue
		}
		switch {
		case b == nil && p.pty:
			p.stdin.Write([]byte{4})
			done = true
		case b == nil:
			p.stdin.Close()
			done = true
		default:
			if _, err := p.stdin.Write(b); err != nil {
				done = true // EPIPE: the command closed stdin; discard the rest
			}
		}
	}
	if !p.pty {
		p.stdin.Close()
	}
}

// openPTY opens a pseudo-terminal. The master is returned in non-blocking
// mode, registered with Go's poller, so that reads can have deadlines:
// pty.Open's ioctls go through File.Fd, which leaves the master blocking, so
// it is replaced by a non-blocking duplicate.
func openPTY() (master, slave *os.File, err error) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	defer ptmx.Close()
	fd, err := unix.FcntlInt(ptmx.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		tty.Close()
		return nil, nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		tty.Close()
		return nil, nil, err
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), tty, nil
}

// setWinsize sets a pty's size. It does what pty.Setsize does, through
// SyscallConn, because pty.Setsize uses File.Fd, which would switch the
// master to blocking mode and break the read deadlines the pump relies on.
func setWinsize(f *os.File, cols, rows uint16) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	err = rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
	if err != nil {
		return err
	}
	return ierr
}

// stdioPipes are the pipes of a shell without a pty: the parent's ends, and
// the child's (its fds 0, 1, 2, and 3 for a spare's script).
type stdioPipes struct {
	stdin  *os.File // write end
	stdout *os.File // read end; nil if in outFDs
	stderr *os.File // read end; nil if in outFDs
	// script is the write end of a spare's script pipe (-1 unless asked
	// for): a blocking descriptor in no poller, so that handing over the
	// script is a write and a close, without a poller deregistration.
	script int
	// child are the child's ends: blocking descriptors in no poller, not
	// *os.Files (os.NewFile asks each for its flags: a system call).
	child []int
	// outFDs are a spare's stdout and stderr read ends as non-blocking
	// descriptors in no poller, ready for a buffered command's gathering
	// pumps, which the spare mostly serves: made ready ahead, so that
	// taking the spare costs no system calls for them (-1: in stdout,
	// stderr).
	outFDs [2]int
}

// newStdioPipes makes a child's pipes (and a spare's script pipe if script).
// Each is a pipe2 with only the agent's end made non-blocking, by one fcntl.
// (os.Pipe made both ends non-blocking and polled, handing the child's ends
// over made them blocking and unpolled again, and a spare's outputs were
// dup'd out of the poller: ~25 more system calls a command, each a round
// trip to gVisor's sentry; docs/density/NOTES.md, "Session 11".)
func newStdioPipes(script bool) (*stdioPipes, error) {
	p := &stdioPipes{script: -1, outFDs: [2]int{-1, -1}}
	var ours [3]int
	fail := func(n int, err error) (*stdioPipes, error) {
		for _, fd := range ours[:n] {
			unix.Close(fd)
		}
		p.closeChildEnds()
		return nil, fmt.Errorf("pipe: %w", err)
	}
	for i := range ours {
		var fds [2]int
		if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
			return fail(i, err)
		}
		theirs := fds[0] // the child reads its stdin, writes its outputs
		ours[i] = fds[1]
		if i > 0 {
			theirs, ours[i] = fds[1], fds[0]
			// Asked on the agent's end; a refusal (a kernel limit) leaves
			// the pipe as it was, which works, only slower.
			unix.FcntlInt(uintptr(ours[i]), unix.F_SETPIPE_SZ, outputPipeSize)
		}
		p.child = append(p.child, theirs)
		// A fresh pipe end has none of the other flags F_SETFL sets.
		if _, err := unix.FcntlInt(uintptr(ours[i]), unix.F_SETFL, unix.O_NONBLOCK); err != nil {
			return fail(i+1, err)
		}
	}
	if script {
		var fds [2]int
		if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
			return fail(len(ours), err)
		}
		p.child = append(p.child, fds[0])
		p.script = fds[1]
		p.outFDs = [2]int{ours[1], ours[2]}
	} else {
		p.stdout, p.stderr = os.NewFile(uintptr(ours[1]), "|0"), os.NewFile(uintptr(ours[2]), "|0")
	}
	p.stdin = os.NewFile(uintptr(ours[0]), "|1") // non-blocking: in the poller
	return p, nil
}

func (p *stdioPipes) outputs() []output {
	return []output{{p.stdout, p.outFDs[0], agentproto.FrameStdout}, {p.stderr, p.outFDs[1], agentproto.FrameStderr}}
}

func (p *stdioPipes) closeChildEnds() {
	for _, fd := range p.child {
		unix.Close(fd)
	}
	p.child = nil
}

func (p *stdioPipes) closeParentEnds() {
	closeAll(p.stdin, p.stdout, p.stderr)
	for _, fd := range p.outFDs {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	if p.script >= 0 {
		unix.Close(p.script)
		p.script = -1
	}
}

// procAttr is how to start a child in dir with env and the blocking
// descriptors fds as its fds 0, 1, ...
func procAttr(dir string, env []string, fds []int, sys *syscall.SysProcAttr) *syscall.ProcAttr {
	files := make([]uintptr, len(fds))
	for i, fd := range fds {
		files[i] = uintptr(fd)
	}
	return &syscall.ProcAttr{Dir: dir, Env: env, Files: files, Sys: sys}
}

func closeAll(files ...*os.File) {
	for _, f := range files {
		f.Close() // a nil *os.File, an output in outFDs, returns an error
	}
}
