package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// Kept commands (StartRequest.Keep) outlive their exec connection: when it
// ends, because the client went or because the sandbox was checkpointed and
// the restored agent finds its peer gone, the command keeps running, its
// output is held, and a later exec connection with StartRequest.Attach
// takes the stream over. E2B's envd promises this: commands survive their
// client and a pause, and are reconnected to by pid.

// keptRetention is how long an ended kept command stays attachable, so that
// a client that comes back late still gets its output and exit.
const keptRetention = time.Minute

// keptTable is the server's kept commands by pid.
type keptTable struct {
	mu sync.Mutex
	m  map[int]*keptCmd
}

func (t *keptTable) put(pid int, k *keptCmd) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[int]*keptCmd{}
	}
	t.m[pid] = k
}

func (t *keptTable) get(pid int) *keptCmd {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[pid]
}

func (t *keptTable) drop(pid int, k *keptCmd) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m[pid] == k {
		delete(t.m, pid)
	}
}

// keptCmd is a kept command and the connection its output goes to. Its
// frame writer writes whole frames to out (one Write per frame), which
// forwards them to the attached connection or holds them.
type keptCmd struct {
	proc *process

	mu      sync.Mutex
	conn    net.Conn // attached connection; nil while detached
	held    [][]byte // frames written while detached, oldest first
	heldLen int
	ended   bool   // the command has ended: no more frames
	exit    []byte // its exit frame, once ended
	readers sync.WaitGroup
	inputMu sync.Mutex // serializes input from successive connections
	stdinCl bool       // under inputMu: stdin was closed by a client
}

// Write takes one frame: to the attached connection, or held if there is
// none or it fails (the client is gone; a later attach gets the frame). It
// never fails, so the command's output keeps draining.
func (k *keptCmd) Write(b []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.conn != nil {
		if _, err := k.conn.Write(b); err == nil {
			return len(b), nil
		}
		k.conn.Close()
		k.conn = nil
	}
	f := append([]byte(nil), b...)
	k.held = append(k.held, f)
	k.heldLen += len(f)
	for k.heldLen > agentproto.KeptOutputMax && len(k.held) > 1 {
		k.heldLen -= len(k.held[0])
		k.held = k.held[1:]
	}
	return len(b), nil
}

// attach makes conn the command's connection: it gets the started frame,
// the held output, then the live stream. The connection attached before is
// closed (its reader ends). Once the command has ended, conn gets what was
// held, exit included, and its write side is closed.
func (k *keptCmd) attach(conn net.Conn) error {
	started, err := frame(agentproto.FrameStarted, agentproto.Started{Pid: k.proc.pid})
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.conn != nil && k.conn != conn {
		k.conn.Close()
	}
	k.conn = nil
	for _, f := range append([][]byte{started}, k.held...) {
		if _, err := conn.Write(f); err != nil {
			return err
		}
	}
	k.held, k.heldLen = nil, 0
	if k.ended {
		if _, err := conn.Write(k.exit); err != nil {
			return err
		}
		halfClose(conn)
		return nil
	}
	k.conn = conn
	return nil
}

// detach forgets conn if it is still the attached connection.
func (k *keptCmd) detach(conn net.Conn) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.conn == conn {
		k.conn = nil
	}
}

// end sends the exit frame to the attached connection and closes its write
// side; later attaches get the held output and the exit.
func (k *keptCmd) end(exit agentproto.Exit) {
	f, err := frame(agentproto.FrameExit, exit)
	if err != nil {
		f, _ = frame(agentproto.FrameExit, startFailed("%v", err))
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ended, k.exit = true, f
	if k.conn == nil {
		return
	}
	if _, err := k.conn.Write(f); err != nil {
		k.conn.Close() // its reader ends; the exit waits for an attach
		k.conn = nil
		return
	}
	halfClose(k.conn)
	k.conn = nil
}

// readInput hands conn's frames to the command until conn ends. Unlike a
// plain exec, the end of the connection does not kill the command.
func (k *keptCmd) readInput(e *execSession) {
	defer k.readers.Done()
	defer k.detach(e.conn)
	for {
		t, payload, err := e.fr.ReadFrame()
		if err != nil {
			return
		}
		k.inputMu.Lock()
		k.proc.input(t, payload, &k.stdinCl)
		k.inputMu.Unlock()
	}
}

// runKept serves an exec connection that starts a kept command or attaches
// to one.
func (e *execSession) runKept(req agentproto.StartRequest) {
	if req.Attach != 0 {
		e.attachKept(req.Attach)
		return
	}
	k := &keptCmd{}
	e.fw = agentproto.NewFrameWriter(k)
	k.conn = e.conn
	proc, exit := e.start(req)
	if proc == nil {
		e.sendJSON(agentproto.FrameExit, exit)
		e.closeOut(nil)
		return
	}
	k.proc = proc
	e.s.kept.put(proc.pid, k)
	e.sendJSON(agentproto.FrameStarted, agentproto.Started{Pid: proc.pid})
	for _, o := range proc.outputs {
		proc.outWG.Add(1)
		go proc.pump(o)
	}
	go proc.writeStdin()
	k.readers.Add(1)
	go k.readInput(e)
	exit = proc.wait()
	e.s.refillAround(func() { k.end(exit) })
	time.AfterFunc(keptRetention, func() { e.s.kept.drop(proc.pid, k) })
	// Input may still arrive until the attached client closes (bounded by
	// the half-close's deadline); then the stdin queue can close, which
	// ends writeStdin.
	k.readers.Wait()
	close(proc.stdinQ)
}

// attachKept attaches this connection to kept command pid and reads its
// input until the connection ends.
func (e *execSession) attachKept(pid int) {
	k := e.s.kept.get(pid)
	if k == nil {
		e.sendJSON(agentproto.FrameExit, startFailed("no kept command with pid %d", pid))
		e.closeOut(nil)
		return
	}
	k.mu.Lock()
	ended := k.ended
	if !ended {
		k.readers.Add(1)
	}
	k.mu.Unlock()
	if err := k.attach(e.conn); err != nil {
		if !ended {
			k.readers.Done()
		}
		return
	}
	if ended {
		e.closeOut(nil)
		return
	}
	k.readInput(e)
}

// halfClose closes conn's write side and bounds how long its reader waits
// for the client to close its side.
func halfClose(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		conn.Close()
	}
	conn.SetReadDeadline(time.Now().Add(drainTimeout))
}

// frame encodes one frame with a JSON payload.
func frame(t agentproto.FrameType, v any) ([]byte, error) {
	payload, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := agentproto.NewFrameWriter(&b).WriteFrame(t, payload); err != nil {
		return nil, fmt.Errorf("encode %v frame: %w", t, err)
	}
	return b.Bytes(), nil
}
