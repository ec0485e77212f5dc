package agentclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// ExecRequest describes a command to run in the sandbox as /bin/sh -c Command.
type ExecRequest struct {
	Command    string
	WorkingDir string            // default: the agent's default (user's home, or /)
	User       string            // default: the sandbox's default user
	Env        map[string]string // added to the agent's environment
	TimeoutS   int               // 0: none; on expiry the process group is killed
	PTY        *PTYSize          // run on a pseudo-terminal (stdout carries its output)
	// Keep makes the command outlive the Process: closing it (or losing
	// the connection, as across a pause) leaves the command running, and
	// Attach reconnects to it by pid.
	Keep bool
}

// PTYSize is a terminal size.
type PTYSize struct {
	Cols, Rows uint16
}

// ExitStatus is how a command ended. ExitCode is 128+n if it was killed by
// signal n (also on timeout, with Error "command timed out after ..."), and
// agentproto.ExitCodeStartFailed (-1) if it could not be started, with Error
// saying why.
type ExitStatus struct {
	ExitCode int
	Error    string
}

// EventKind says what an Event carries.
type EventKind int

// Event kinds.
const (
	EventStdout EventKind = iota + 1
	EventStderr
	EventExit
)

// Short names for the event kinds.
const (
	Stdout = EventStdout
	Stderr = EventStderr
	Exit   = EventExit
)

func (k EventKind) String() string {
	switch k {
	case EventStdout:
		return "stdout"
	case EventStderr:
		return "stderr"
	case EventExit:
		return "exit"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one piece of a command's output, or its end.
type Event struct {
	Kind EventKind
	Data []byte      // Stdout, Stderr: owned by the caller
	Exit *ExitStatus // Exit
}

// ErrProcessClosed is returned by a Process's methods after Close.
var ErrProcessClosed = errors.New("agent exec: process closed")

// Process is a command started by Client.Start. Write, CloseStdin, Signal and
// Resize may be called concurrently with each other and with Next; Next
// itself must be called from one goroutine at a time.
type Process struct {
	ctx  context.Context
	c    *Client
	conn io.ReadWriteCloser
	fr   *agentproto.FrameReader
	fw   *agentproto.FrameWriter
	pid  int

	pending *Event      // an exit that arrived instead of "started"
	done    bool        // the exit event has been returned
	exited  atomic.Bool // done, for Close from any goroutine

	closeOnce sync.Once
	closed    chan struct{}
	stopCtx   func() bool
}

// Start starts a command and returns once the agent has started it (or
// failed to: then Pid is 0 and the first Next returns the Exit event with
// ExitCodeStartFailed). Cancelling ctx, or Close, drops the connection,
// which makes the agent kill the command's process group unless it has
// already exited.
func (c *Client) Start(ctx context.Context, req ExecRequest) (*Process, error) {
	return c.start(ctx, req, false)
}

// start is Start, with stdin closed from the outset if noStdin. Only Run
// closes it so; Run needs no pid before the output, so the agent may hold
// its started frame until the first output or the exit (one send through
// the sandbox's network stack instead of two).
func (c *Client) start(ctx context.Context, req ExecRequest, noStdin bool) (*Process, error) {
	start := agentproto.StartRequest{
		Command:     req.Command,
		WorkingDir:  req.WorkingDir,
		Env:         req.Env,
		TimeoutS:    req.TimeoutS,
		User:        req.User,
		Keep:        req.Keep,
		HoldStarted: noStdin,
	}
	if req.PTY != nil {
		start.PTY = &agentproto.PTYSize{Cols: req.PTY.Cols, Rows: req.PTY.Rows}
	}
	return c.open(ctx, start, noStdin)
}

// Attach reconnects to a command started with Keep, by pid: the Process
// gets the output held since the last connection ended, then the live
// output and the exit, and its Write, Signal, ... reach the command. If the
// agent knows no such command, the first Next returns an Exit event with
// ExitCodeStartFailed.
func (c *Client) Attach(ctx context.Context, pid int) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("agent exec: attach: invalid pid %d", pid)
	}
	return c.open(ctx, agentproto.StartRequest{Attach: pid}, false)
}

// open sends start on a new exec connection, with a FrameStdinClose right
// behind it if noStdin, and reads the agent's answer.
func (c *Client) open(ctx context.Context, start agentproto.StartRequest, noStdin bool) (*Process, error) {
	payload, err := json.Marshal(start)
	if err != nil {
		return nil, err
	}

	conn, br, err := c.upgradeExec(ctx, payload, noStdin)
	if err != nil {
		return nil, err
	}
	p := &Process{
		ctx:    ctx,
		c:      c,
		conn:   conn,
		fr:     agentproto.NewFrameReader(br),
		fw:     agentproto.NewFrameWriter(conn),
		closed: make(chan struct{}),
	}
	p.stopCtx = context.AfterFunc(ctx, func() { p.Close() })
	t, data, err := p.fr.ReadFrame()
	if err != nil {
		p.Close()
		return nil, p.connErr("read started", err)
	}
	switch t {
	case agentproto.FrameStarted:
		var st agentproto.Started
		if err := json.Unmarshal(data, &st); err != nil {
			p.Close()
			return nil, fmt.Errorf("agent exec: bad started frame: %w", err)
		}
		p.pid = st.Pid
	case agentproto.FrameExit:
		ev, err := exitEvent(data)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.pending = &ev
	default:
		p.Close()
		return nil, fmt.Errorf("agent exec: unexpected %v frame before started", t)
	}
	return p, nil
}

// upgradeExec takes a fresh connection (an upgraded connection is never
// reused, so the keep-alive pool has nothing to offer: one dialed ahead, see
// warmConns, or a new one) and sends the upgrade
// request with the start frame right behind it, saving the round trip of
// waiting for "101 Switching Protocols" first; the agent finds the frame
// already buffered after the hijack. It returns the connection and a reader
// positioned after the 101 response.
func (c *Client) upgradeExec(ctx context.Context, start []byte, noStdin bool) (net.Conn, *bufio.Reader, error) {
	addr, token := *c.addr.Load(), *c.token.Load()
	if strings.ContainsAny(token, "\r\n") {
		return nil, nil, errors.New("agent exec: invalid token")
	}
	conn := c.warm.take(ctx, addr)
	if conn == nil {
		var err error
		if conn, err = c.dialer.DialContext(ctx, "tcp", addr); err != nil {
			return nil, nil, fmt.Errorf("agent exec: %w", err)
		}
	}
	// Until the upgrade is done, cancelling ctx aborts it.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	br, err := func() (*bufio.Reader, error) {
		var b bytes.Buffer
		b.Grow(256 + len(start))
		fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
			"Connection: Upgrade\r\nUpgrade: %s\r\nContent-Length: 0\r\n\r\n",
			agentproto.PathExec, addr, token, agentproto.UpgradeProtocol)
		fw := agentproto.NewFrameWriter(&b)
		fw.WriteFrame(agentproto.FrameStart, start)
		if noStdin {
			fw.WriteFrame(agentproto.FrameStdinClose, nil)
		}
		if _, err := conn.Write(b.Bytes()); err != nil {
			return nil, fmt.Errorf("agent exec: send request: %w", err)
		}
		br := bufio.NewReaderSize(conn, 64<<10)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
		if err != nil {
			return nil, fmt.Errorf("agent exec: read response: %w", err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			defer resp.Body.Close()
			return nil, decodeError(resp)
		}
		return br, nil
	}()
	if !stop() { // ctx is done and conn closed, or closing
		err = fmt.Errorf("agent exec: %w", ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, br, nil
}

func exitEvent(data []byte) (Event, error) {
	var ex agentproto.Exit
	if err := json.Unmarshal(data, &ex); err != nil {
		return Event{}, fmt.Errorf("agent exec: bad exit frame: %w", err)
	}
	return Event{Kind: EventExit, Exit: &ExitStatus{ExitCode: ex.ExitCode, Error: ex.Error}}, nil
}

// connErr explains an I/O error on the exec connection.
func (p *Process) connErr(what string, err error) error {
	if cerr := p.ctx.Err(); cerr != nil {
		return fmt.Errorf("agent exec: %s: %w", what, cerr)
	}
	select {
	case <-p.closed:
		return ErrProcessClosed
	default:
	}
	return fmt.Errorf("agent exec: %s: %w", what, err)
}

// Pid is the command's pid in the sandbox (also its process group id), or 0
// if it failed to start.
func (p *Process) Pid() int { return p.pid }

// Write sends b to the command's stdin.
func (p *Process) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		chunk := b[:min(len(b), agentproto.ChunkSize)]
		if err := p.fw.WriteFrame(agentproto.FrameStdin, chunk); err != nil {
			return n, p.connErr("write stdin", err)
		}
		n += len(chunk)
		b = b[len(chunk):]
	}
	return n, nil
}

// CloseStdin closes the command's stdin (on a PTY it sends ^D).
func (p *Process) CloseStdin() error {
	if err := p.fw.WriteFrame(agentproto.FrameStdinClose, nil); err != nil {
		return p.connErr("close stdin", err)
	}
	return nil
}

// Signal sends a signal ("SIGTERM", "KILL", "2", ...) to the command's
// process group.
func (p *Process) Signal(name string) error {
	if _, err := agentproto.ParseSignal(name); err != nil {
		return fmt.Errorf("agent exec: %w", err)
	}
	if err := p.fw.WriteFrame(agentproto.FrameSignal, []byte(name)); err != nil {
		return p.connErr("signal", err)
	}
	return nil
}

// Resize changes the size of the command's PTY (ignored without one).
func (p *Process) Resize(cols, rows uint16) error {
	b, _ := json.Marshal(agentproto.PTYSize{Cols: cols, Rows: rows})
	if err := p.fw.WriteFrame(agentproto.FrameResize, b); err != nil {
		return p.connErr("resize", err)
	}
	return nil
}

// Next returns the next piece of output, or the Exit event, as the agent
// sends them; after Exit it returns io.EOF. If the connection is lost before
// the exit, it returns an error (ctx.Err() if Start's context was cancelled).
func (p *Process) Next() (Event, error) {
	if p.pending != nil {
		ev := *p.pending
		p.pending = nil
		p.done = true
		p.exited.Store(true)
		p.Close()
		return ev, nil
	}
	if p.done {
		return Event{}, io.EOF
	}
	for {
		t, data, err := p.fr.ReadFrame()
		if err != nil {
			return Event{}, p.connErr("connection lost before exit", err)
		}
		switch t {
		case agentproto.FrameStdout:
			return Event{Kind: EventStdout, Data: data}, nil
		case agentproto.FrameStderr:
			return Event{Kind: EventStderr, Data: data}, nil
		case agentproto.FrameExit:
			ev, err := exitEvent(data)
			if err != nil {
				return Event{}, err
			}
			p.done = true
			p.exited.Store(true)
			p.Close()
			return ev, nil
		}
		// Unknown frame types are skipped: room for additions.
	}
}

// Close drops the connection. Unless the command has exited already, the
// agent kills its process group.
func (p *Process) Close() error {
	var err error
	p.closeOnce.Do(func() {
		close(p.closed)
		if p.stopCtx != nil {
			p.stopCtx()
		}
		if p.exited.Load() {
			// The exit frame ends the exchange; the agent has
			// half-closed or is about to (see resetOnClose).
			resetOnClose(p.conn)
		}
		err = p.conn.Close()
		if p.exited.Load() {
			// The agent answers and the next command is likely
			// soon: have its connection ready.
			p.c.warm.fill(p.c.dialer, *p.c.addr.Load())
		}
	})
	return err
}

// Run runs a command with stdin closed, copying its output to stdout and
// stderr (nil: discarded) as it arrives, and returns how it ended. A failing
// writer stops the command and its error is returned.
func (c *Client) Run(ctx context.Context, req ExecRequest, stdout, stderr io.Writer) (ExitStatus, error) {
	// Stdin is closed in the request itself: one send into the sandbox
	// instead of two.
	p, err := c.start(ctx, req, true)
	if err != nil {
		return ExitStatus{}, err
	}
	defer p.Close()
	for {
		ev, err := p.Next()
		if err != nil {
			return ExitStatus{}, err
		}
		var w io.Writer
		switch ev.Kind {
		case EventStdout:
			w = stdout
		case EventStderr:
			w = stderr
		case EventExit:
			return *ev.Exit, nil
		}
		if w != nil {
			if _, err := w.Write(ev.Data); err != nil {
				return ExitStatus{}, fmt.Errorf("agent exec: copying %v: %w", ev.Kind, err)
			}
		}
	}
}
