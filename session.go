package stasis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Exec WebSocket protocol constants (/exec/connect).
const (
	execSubprotocol = "superserve.exec.v1"
	tokenPrefix     = "token."

	chanStdin  = 0
	chanStdout = 1
	chanStderr = 2

	// stdinChunk keeps stdin frames well under the 32 KiB default message
	// limit of common WebSocket servers.
	stdinChunk = 16 << 10
	// wsReadLimit bounds one incoming WebSocket message.
	wsReadLimit = 16 << 20
)

// PTYSize is a terminal size in character cells.
type PTYSize struct {
	Cols int `json:"cols"`
	Rows int `json:"rows"`
}

// SpawnOptions configures Commands.Spawn.
type SpawnOptions struct {
	// Dir is the working directory.
	Dir string
	// Env adds environment variables for this command.
	Env map[string]string
	// Timeout kills the command after this long (whole seconds).
	Timeout time.Duration
	// OnStdout and OnStderr receive output as it arrives, from the
	// session's reader goroutine, in order. With PTY set, all output
	// arrives on OnStdout. A callback must not block for long: it holds up
	// the session.
	OnStdout func(p []byte)
	OnStderr func(p []byte)
	// PTY runs the command on a pseudo-terminal of this size (a stasis
	// extension to the exec protocol). Resize changes the size later.
	PTY *PTYSize
	// MaxOutputBytes caps the output collected into Wait's Result
	// (default: the client's, 10 MiB); callbacks still see everything.
	MaxOutputBytes int64
}

// Session is a running process started by Commands.Spawn: write to its
// standard input, signal it, resize its terminal, and Wait for it. Always
// finish with Wait or Close to release the connection. Its methods are
// safe for concurrent use.
type Session struct {
	// Stdin is the process's standard input. Close sends end-of-file.
	Stdin io.WriteCloser

	conn   *websocket.Conn
	parent context.Context // the context given to Spawn
	// aborted: the command was killed because parent ended (or Close); the
	// agent's answer to the kill is then not the command's result.
	aborted atomic.Bool
	ctx     context.Context // lives as long as the session
	cancel  context.CancelFunc

	done   chan struct{} // closed when the reader goroutine ends
	result *Result
	err    error

	closeOnce sync.Once
}

// Spawn starts command and returns a live Session while it runs. ctx
// governs the whole session, like exec.CommandContext: when it is done
// before the command finishes, the process is killed and Wait reports the
// context's error. A paused sandbox is resumed transparently. opts may be
// nil.
func (c *Commands) Spawn(ctx context.Context, command string, opts *SpawnOptions) (*Session, error) {
	if opts == nil {
		opts = &SpawnOptions{}
	}
	if opts.Timeout < 0 {
		return nil, errorf(ErrValidation, "negative timeout")
	}
	if opts.PTY != nil && (opts.PTY.Cols <= 0 || opts.PTY.Rows <= 0) {
		return nil, errorf(ErrValidation, "PTY size must be positive")
	}
	start := execRequest{Command: command, WorkingDir: opts.Dir, Env: opts.Env, PTY: opts.PTY}
	if opts.Timeout > 0 {
		start.TimeoutS = seconds(opts.Timeout)
	}
	startMsg, err := json.Marshal(start)
	if err != nil {
		return nil, err
	}
	var conn *websocket.Conn
	err = c.s.withToken(ctx, func(token string) error {
		var err error
		conn, err = c.dial(ctx, token)
		return err
	})
	if err != nil {
		return nil, err
	}
	conn.SetReadLimit(wsReadLimit)
	if err := conn.Write(ctx, websocket.MessageText, startMsg); err != nil {
		conn.CloseNow()
		return nil, ctxError("exec/connect: sending start", err, ctx, nil)
	}
	limit := opts.MaxOutputBytes
	if limit <= 0 {
		limit = c.s.c.maxOutput
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Session{conn: conn, parent: ctx, ctx: sctx, cancel: cancel, done: make(chan struct{})}
	s.Stdin = stdinWriter{s}
	go s.read(opts, limit)
	go func() {
		select {
		case <-ctx.Done():
			s.abort()
		case <-s.done:
		}
	}()
	return s, nil
}

func (c *Commands) dial(ctx context.Context, token string) (*websocket.Conn, error) {
	u := c.s.c.baseURL + "/exec/connect"
	switch {
	case strings.HasPrefix(u, "https://"):
		u = "wss://" + strings.TrimPrefix(u, "https://")
	case strings.HasPrefix(u, "http://"):
		u = "ws://" + strings.TrimPrefix(u, "http://")
	}
	dctx, cancel := context.WithTimeout(ctx, c.s.c.requestTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(dctx, u, &websocket.DialOptions{
		HTTPClient: c.s.c.hc,
		HTTPHeader: http.Header{
			"User-Agent":              {c.s.c.userAgent},
			"X-Superserve-Sandbox-Id": {c.s.ID},
			"X-Access-Token":          {token},
		},
		Subprotocols: []string{execSubprotocol, tokenPrefix + token},
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols && resp.StatusCode >= 300 {
			var body []byte
			if resp.Body != nil {
				body, _ = io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
			}
			return nil, apiErrorFromBody(resp.StatusCode, resp.Header, body)
		}
		if ctx.Err() != nil || dctx.Err() != nil {
			return nil, ctxError("exec/connect", err, ctx, dctx.Err())
		}
		return nil, fmt.Errorf("stasis: exec/connect: %w", err)
	}
	return conn, nil
}

type lifecycleMsg struct {
	Finished bool   `json:"finished"`
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error"`
}

func (s *Session) read(opts *SpawnOptions, limit int64) {
	defer close(s.done)
	out, errOut := newCapped(limit), newCapped(limit)
	finish := func(res *Result, err error) {
		if res != nil {
			res.Stdout, res.Stderr = out.String(), errOut.String()
			res.Truncated = out.truncated || errOut.truncated
		}
		s.result, s.err = res, err
	}
	for {
		typ, msg, err := s.conn.Read(s.ctx)
		if err != nil {
			switch {
			case s.ctx.Err() != nil:
				finish(nil, errSessionClosed)
			case websocket.CloseStatus(err) == websocket.StatusMessageTooBig:
				finish(nil, fmt.Errorf("stasis: exec/connect: a message exceeded the size limit: %w", err))
			default:
				finish(nil, fmt.Errorf("stasis: exec/connect: connection closed before the command finished: %w", err))
			}
			s.conn.CloseNow()
			return
		}
		if typ == websocket.MessageBinary {
			if len(msg) == 0 {
				continue
			}
			p := msg[1:]
			switch msg[0] {
			case chanStdout:
				out.addBytes(p)
				if opts.OnStdout != nil && len(p) > 0 {
					opts.OnStdout(p)
				}
			case chanStderr:
				errOut.addBytes(p)
				if opts.OnStderr != nil && len(p) > 0 {
					opts.OnStderr(p)
				}
			}
			continue
		}
		var ev lifecycleMsg
		if json.Unmarshal(msg, &ev) != nil || !ev.Finished {
			continue
		}
		finish(&Result{ExitCode: ev.ExitCode, Error: ev.Error}, nil)
		// Orderly close; do not wait long for the server's close frame.
		go func() {
			s.conn.Close(websocket.StatusNormalClosure, "")
		}()
		return
	}
}

var errSessionClosed = errors.New("stasis: session closed before the command finished")

// Wait blocks until the command finishes and returns its result. A
// non-zero exit code is not an error. If the session's context ended or
// Close was called first, the error reports that. Cancelling ctx stops
// waiting but leaves the process running.
func (s *Session) Wait(ctx context.Context) (*Result, error) {
	select {
	case <-s.done:
	case <-ctx.Done():
		return nil, ctxError("waiting for command", ctx.Err(), ctx, nil)
	}
	return s.outcome()
}

func (s *Session) outcome() (*Result, error) {
	if s.aborted.Load() && s.parent.Err() != nil {
		return nil, ctxError("command session", s.parent.Err(), s.parent, nil)
	}
	if s.result != nil {
		return s.result, nil
	}
	if s.err == errSessionClosed && s.parent.Err() != nil {
		return nil, ctxError("command session", s.parent.Err(), s.parent, nil)
	}
	return nil, s.err
}

// Done is closed when the session has ended (the command finished or the
// connection was lost or closed).
func (s *Session) Done() <-chan struct{} { return s.done }

func (s *Session) send(ctx context.Context, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.write(ctx, websocket.MessageText, b)
}

func (s *Session) write(ctx context.Context, typ websocket.MessageType, b []byte) error {
	select {
	case <-s.done:
		return fmt.Errorf("stasis: session has ended: %w", io.ErrClosedPipe)
	default:
	}
	if err := s.conn.Write(ctx, typ, b); err != nil {
		select {
		case <-s.done:
			return fmt.Errorf("stasis: session has ended: %w", io.ErrClosedPipe)
		default:
		}
		return fmt.Errorf("stasis: exec/connect: %w", err)
	}
	return nil
}

// Signal sends a signal to the process (its process group), by name:
// "SIGTERM", "SIGINT", "SIGKILL", "SIGHUP", ... ("TERM" is accepted too).
func (s *Session) Signal(ctx context.Context, name string) error {
	name = strings.ToUpper(strings.TrimSpace(name))
	if name == "" {
		return errorf(ErrValidation, "empty signal name")
	}
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	return s.send(ctx, map[string]string{"type": "signal", "name": name})
}

// Resize changes the size of the session's pseudo-terminal (PTY sessions
// only; a stasis extension).
func (s *Session) Resize(ctx context.Context, cols, rows int) error {
	if cols <= 0 || rows <= 0 {
		return errorf(ErrValidation, "terminal size must be positive")
	}
	return s.send(ctx, map[string]any{"type": "resize", "cols": cols, "rows": rows})
}

// CloseStdin sends end-of-file on the process's standard input.
func (s *Session) CloseStdin(ctx context.Context) error {
	return s.send(ctx, map[string]string{"type": "stdin_close"})
}

// WriteStdin writes p to the process's standard input.
func (s *Session) WriteStdin(ctx context.Context, p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), stdinChunk)]
		frame := make([]byte, 1+len(chunk))
		frame[0] = chanStdin
		copy(frame[1:], chunk)
		if err := s.write(ctx, websocket.MessageBinary, frame); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// Close kills the process if it is still running and releases the
// connection. It is safe to call more than once and after Wait.
func (s *Session) Close() error {
	s.abort()
	<-s.done
	return nil
}

// abort kills a still-running process and tears the connection down.
func (s *Session) abort() {
	s.closeOnce.Do(func() {
		select {
		case <-s.done:
			return
		default:
		}
		s.aborted.Store(true)
		ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
		_ = s.send(ctx, map[string]string{"type": "signal", "name": "SIGKILL"})
		cancel()
		s.cancel()
		s.conn.CloseNow()
	})
}

type stdinWriter struct{ s *Session }

func (w stdinWriter) Write(p []byte) (int, error) { return w.s.WriteStdin(w.s.ctx, p) }
func (w stdinWriter) Close() error                { return w.s.CloseStdin(w.s.ctx) }
