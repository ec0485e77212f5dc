package stasis

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Commands runs processes in a sandbox. Commands are shell command lines,
// run by the sandbox's shell. A paused sandbox is resumed transparently.
type Commands struct {
	s *Sandbox
}

// RunOptions configures Commands.Run. The zero value runs the command with
// its output buffered.
type RunOptions struct {
	// Dir is the working directory (default: the sandbox's default).
	Dir string
	// Env adds environment variables for this command.
	Env map[string]string
	// Timeout kills the command after this long (rounded up to whole
	// seconds on the wire). The client gives up 5s later with ErrTimeout.
	Timeout time.Duration
	// OnStdout and OnStderr, when either is set, stream the output as it
	// is produced (Server-Sent Events) instead of waiting for the end.
	// They are called from the calling goroutine, in order.
	OnStdout func(p []byte)
	OnStderr func(p []byte)
	// MaxOutputBytes caps the output kept in Result (default: the client's,
	// 10 MiB). A buffered Run over the cap fails with ErrOutputTooLarge; a
	// streamed Run still delivers everything to the callbacks and sets
	// Result.Truncated.
	MaxOutputBytes int64
}

// Result is a finished command.
type Result struct {
	Stdout   string
	Stderr   string
	ExitCode int
	// Error is the server's explanation when the command could not run
	// normally (for example killed by its timeout); empty otherwise.
	Error string
	// Truncated reports that Stdout/Stderr were cut at the output cap.
	Truncated bool
}

type execRequest struct {
	Command    string            `json:"command"`
	WorkingDir string            `json:"working_dir,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	TimeoutS   int               `json:"timeout_s,omitempty"`
	PTY        *PTYSize          `json:"pty,omitempty"`
}

// Run executes command and waits for it to finish. A non-zero exit code
// is not an error: inspect Result.ExitCode. Cancelling ctx abandons the
// command (the server stops it when the connection drops). opts may be nil.
func (c *Commands) Run(ctx context.Context, command string, opts *RunOptions) (*Result, error) {
	if opts == nil {
		opts = &RunOptions{}
	}
	if opts.Timeout < 0 {
		return nil, errorf(ErrValidation, "negative timeout")
	}
	req := execRequest{Command: command, WorkingDir: opts.Dir, Env: opts.Env}
	if opts.Timeout > 0 {
		req.TimeoutS = seconds(opts.Timeout)
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Timeout+execGrace)
		defer cancel()
	}
	limit := opts.MaxOutputBytes
	if limit <= 0 {
		limit = c.s.c.maxOutput
	}
	var res *Result
	err := c.s.withToken(ctx, func(token string) error {
		var err error
		if opts.OnStdout != nil || opts.OnStderr != nil {
			res, err = c.runStream(ctx, token, req, opts, limit)
		} else {
			res, err = c.runBuffered(ctx, token, req, limit)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

func (c *Commands) runBuffered(ctx context.Context, token string, req execRequest, limit int64) (*Result, error) {
	cl := c.s.dataCall(http.MethodPost, "/exec", nil, token)
	cl.json = req
	resp, err := c.s.c.do(ctx, cl)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, ctxError("POST /exec", err, ctx, nil)
	}
	if int64(len(body)) > limit {
		return nil, errorf(ErrOutputTooLarge, "command output exceeds %d bytes (raise MaxOutputBytes or stream with OnStdout/OnStderr)", limit)
	}
	var out struct {
		Stdout   string `json:"stdout"`
		Stderr   string `json:"stderr"`
		ExitCode int    `json:"exit_code"`
		Error    string `json:"error"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("stasis: POST /exec: decoding response: %w", err)
	}
	return &Result{Stdout: out.Stdout, Stderr: out.Stderr, ExitCode: out.ExitCode, Error: out.Error}, nil
}

// execEvent is one Server-Sent Event of /exec/stream.
type execEvent struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	Finished bool   `json:"finished"`
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error"`
}

func (c *Commands) runStream(ctx context.Context, token string, req execRequest, opts *RunOptions, limit int64) (*Result, error) {
	cl := c.s.dataCall(http.MethodPost, "/exec/stream", nil, token)
	cl.json = req
	cl.header.Set("Accept", "text/event-stream")
	resp, err := c.s.c.do(ctx, cl)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := newCapped(limit)
	errOut := newCapped(limit)
	var res *Result
	err = readSSE(resp.Body, func(data []byte) error {
		var ev execEvent
		if json.Unmarshal(data, &ev) != nil {
			return nil // not ours; ignore like other SSE clients do
		}
		if ev.Stdout != "" {
			out.add(ev.Stdout)
			if opts.OnStdout != nil {
				opts.OnStdout([]byte(ev.Stdout))
			}
		}
		if ev.Stderr != "" {
			errOut.add(ev.Stderr)
			if opts.OnStderr != nil {
				opts.OnStderr([]byte(ev.Stderr))
			}
		}
		if ev.Finished {
			res = &Result{ExitCode: ev.ExitCode, Error: ev.Error}
			return errStopSSE
		}
		return nil
	})
	if err != nil {
		return nil, ctxError("POST /exec/stream", err, ctx, nil)
	}
	if res == nil {
		if ctx.Err() != nil {
			return nil, ctxError("POST /exec/stream", ctx.Err(), ctx, nil)
		}
		return nil, errors.New("stasis: POST /exec/stream: stream ended without a finished event (connection lost?)")
	}
	res.Stdout, res.Stderr = out.String(), errOut.String()
	res.Truncated = out.truncated || errOut.truncated
	return res, nil
}

var errStopSSE = errors.New("stop")

// maxSSELine bounds one SSE line so a hostile stream cannot exhaust memory.
const maxSSELine = 64 << 20

// readSSE calls fn with the payload of each `data:` line of an SSE stream,
// until EOF or fn returns errStopSSE. Lines may arrive split across reads
// in any way; \n and \r\n endings are accepted, comments and other fields
// are skipped.
func readSSE(r io.Reader, fn func(data []byte) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if err == bufio.ErrBufferFull {
			if len(line) > maxSSELine {
				return fmt.Errorf("SSE line longer than %d bytes", maxSSELine)
			}
			continue
		}
		if err != nil && err != io.EOF {
			return err
		}
		complete := err == nil
		if complete || len(line) > 0 {
			l := bytes.TrimRight(line, "\r\n")
			if data, ok := bytes.CutPrefix(l, []byte("data:")); ok {
				data = bytes.TrimPrefix(data, []byte(" "))
				if len(data) > 0 && string(data) != "[DONE]" {
					if ferr := fn(data); ferr != nil {
						if ferr == errStopSSE {
							return nil
						}
						return ferr
					}
				}
			}
		}
		line = line[:0]
		if !complete {
			return nil
		}
	}
}

// capped collects text up to a limit, recording whether it cut anything.
type capped struct {
	buf       bytes.Buffer
	limit     int64
	truncated bool
}

func newCapped(limit int64) *capped { return &capped{limit: limit} }

func (c *capped) add(s string) { c.addBytes([]byte(s)) }

func (c *capped) addBytes(p []byte) {
	room := c.limit - int64(c.buf.Len())
	if int64(len(p)) > room {
		p = p[:max(room, 0)]
		c.truncated = true
	}
	c.buf.Write(p)
}

func (c *capped) String() string { return c.buf.String() }
