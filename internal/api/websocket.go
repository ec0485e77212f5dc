package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/coder/websocket"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
)

// Superserve's interactive exec protocol over WebSocket.
const (
	execSubprotocol = "superserve.exec.v1"
	tokenPrefix     = "token."
	chStdin         = 0
	chStdout        = 1
	chStderr        = 2
	maxWSMessage    = 1 << 20
)

type wsStart struct {
	Command    string            `json:"command"`
	WorkingDir string            `json:"working_dir"`
	Env        map[string]string `json:"env"`
	TimeoutS   int               `json:"timeout_s"`
	PTY        *struct {
		Cols uint16 `json:"cols"`
		Rows uint16 `json:"rows"`
	} `json:"pty"` // stasis extension: run on a pseudo-terminal
}

type wsControl struct {
	Type string `json:"type"` // stdin_close, signal, resize
	Name string `json:"name"`
	Cols uint16 `json:"cols"`
	Rows uint16 `json:"rows"`
}

// wsToken finds the access token among the offered subprotocols, falling
// back to the X-Access-Token header.
func wsToken(r *http.Request) string {
	for _, h := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(h, ",") {
			if t, ok := strings.CutPrefix(strings.TrimSpace(p), tokenPrefix); ok {
				return t
			}
		}
	}
	return r.Header.Get("X-Access-Token")
}

// execConnect serves GET /exec/connect: authentication happens before the
// upgrade so a bad token is a plain 401 the SDK can react to.
func (s *Server) execConnect(w http.ResponseWriter, r *http.Request) {
	t, ok := s.agentFor(w, r, wsToken(r))
	if !ok {
		return
	}
	c := t.Agent
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols: []string{execSubprotocol},
		// Auth is the token, not cookies, so cross-origin use is harmless.
		InsecureSkipVerify: true,
	})
	if err != nil {
		return // Accept has written the HTTP error
	}
	ws.SetReadLimit(maxWSMessage)
	defer ws.CloseNow()
	// ctx is the socket's life; pctx the process's, which also ends when the
	// sandbox is paused or deleted (cancelling a read closes a coder/websocket
	// connection, so the socket must not share that context).
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	pctx, pcancel := context.WithCancel(ctx)
	defer pcancel()
	stopped := make(chan struct{})
	go func() {
		select {
		case <-t.Done:
			close(stopped)
			pcancel()
		case <-ctx.Done():
		}
	}()

	finish := func(code int, msg string) {
		fin := map[string]any{"finished": true, "exit_code": code}
		if msg != "" {
			fin["error"] = msg
		}
		b, _ := json.Marshal(fin)
		ws.Write(ctx, websocket.MessageText, b)
		ws.Close(websocket.StatusNormalClosure, "")
	}

	typ, data, err := ws.Read(ctx)
	if err != nil {
		return
	}
	var start wsStart
	if typ != websocket.MessageText || json.Unmarshal(data, &start) != nil {
		finish(-1, "first message must be a JSON start frame {\"command\": ...}")
		return
	}
	if err := checkUTF8(data); err != nil {
		finish(-1, err.Error())
		return
	}
	req := execRequest{Command: start.Command, WorkingDir: start.WorkingDir, Env: start.Env, TimeoutS: start.TimeoutS}
	if err := req.validate(); err != nil {
		finish(-1, err.Error())
		return
	}
	ar := req.agentRequest(t.Defaults)
	if start.PTY != nil {
		ar.PTY = &agentclient.PTYSize{Cols: start.PTY.Cols, Rows: start.PTY.Rows}
	}
	// The process lives as long as the socket: closing it cancels ctx,
	// which drops the agent connection and kills the process group.
	p, err := c.Start(pctx, ar)
	if err != nil {
		finish(-1, "could not start command: "+err.Error())
		return
	}
	defer p.Close()

	go func() {
		defer cancel()
		for {
			typ, data, err := ws.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageBinary {
				if len(data) > 1 && data[0] == chStdin {
					if _, err := p.Write(data[1:]); err != nil {
						return
					}
				}
				continue
			}
			var ctl wsControl
			if json.Unmarshal(data, &ctl) != nil {
				continue
			}
			switch ctl.Type {
			case "stdin_close":
				p.CloseStdin()
			case "signal":
				p.Signal(ctl.Name)
			case "resize":
				p.Resize(ctl.Cols, ctl.Rows)
			}
		}
	}()

	for {
		ev, err := p.Next()
		if err != nil {
			select {
			case <-stopped:
				finish(-1, t.EndReason()+"; this session ended")
			default:
				if !errors.Is(ctx.Err(), context.Canceled) {
					finish(-1, "lost connection to the sandbox: "+err.Error())
				}
			}
			return
		}
		switch ev.Kind {
		case agentclient.EventStdout, agentclient.EventStderr:
			ch := byte(chStdout)
			if ev.Kind == agentclient.EventStderr {
				ch = chStderr
			}
			frame := append([]byte{ch}, ev.Data...)
			if ws.Write(ctx, websocket.MessageBinary, frame) != nil {
				return
			}
		case agentclient.EventExit:
			finish(ev.Exit.ExitCode, ev.Exit.Error)
			return
		}
	}
}
