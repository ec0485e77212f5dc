package e2b

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	pb "github.com/stasis-sandbox/stasis/internal/e2b/envdpb/process"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
)

// keepaliveDefault is the keepalive interval when the client names none
// (Keepalive-Ping-Interval, seconds), as envd's.
const keepaliveDefault = 90 * time.Second

// exitRetention is how long an exited command stays known, so a late
// Connect still gets its end event.
const exitRetention = time.Minute

// procTable holds the envd commands of one sandbox that stasisd runs.
type procTable struct {
	mu    sync.Mutex
	procs map[uint32]*proc
}

// proc is one command: stasisd holds its agent exec stream and fans its
// events out to every connected client. The agent keeps the command
// (ExecRequest.Keep): when the sandbox is paused the stream ends but the
// command does not, and after the resume stasisd attaches to it again by
// pid (reattach).
type proc struct {
	pid    uint32
	tag    string
	config *pb.ProcessConfig
	pty    bool

	mu       sync.Mutex
	p        *agentclient.Process // the current exec stream; nil while detached
	detached bool                 // the sandbox was paused: attach again after the resume
	subs     map[chan *pb.ProcessEvent]struct{}
	end      *pb.ProcessEvent // set once the command has ended
	done     chan struct{}    // closed with end set
}

// stream returns the command's current exec stream.
func (p *proc) stream() (*agentclient.Process, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p == nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("process %d is not attached (the sandbox is paused)", p.pid))
	}
	return p.p, nil
}

func (s *Server) table(id string) *procTable {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.procs[id]
	if t == nil {
		t = &procTable{procs: map[uint32]*proc{}}
		s.procs[id] = t
	}
	return t
}

// dropProcs forgets a deleted sandbox's commands.
func (s *Server) dropProcs(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.procs, id)
}

func (t *procTable) find(sel *pb.ProcessSelector) (*proc, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch v := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		if p := t.procs[v.Pid]; p != nil {
			return p, nil
		}
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with pid %d not found", v.Pid))
	case *pb.ProcessSelector_Tag:
		for _, p := range t.procs {
			if p.tag == v.Tag {
				return p, nil
			}
		}
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with tag %q not found", v.Tag))
	}
	return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("process selector (pid or tag) is required"))
}

// subscribe returns a channel of the command's events from now on; if the
// command has already ended, the end event is the only one.
func (p *proc) subscribe() chan *pb.ProcessEvent {
	ch := make(chan *pb.ProcessEvent, 64)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.end != nil {
		ch <- p.end
		close(ch)
		return ch
	}
	p.subs[ch] = struct{}{}
	return ch
}

func (p *proc) unsubscribe(ch chan *pb.ProcessEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.subs[ch]; ok {
		delete(p.subs, ch)
		close(ch)
	}
}

// publish sends ev to every subscriber. A subscriber that has fallen 64
// events behind is dropped: its client is too slow or gone, and the
// command must not wait for it.
func (p *proc) publish(ev *pb.ProcessEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ch := range p.subs {
		select {
		case ch <- ev:
		default:
			delete(p.subs, ch)
			close(ch)
		}
	}
}

// follow relays ap's events until the command ends, or until the
// sandbox's run ends (done: a pause), when the command is detached to be
// attached again after the resume. onEnd runs once the command has ended.
func (p *proc) follow(ap *agentclient.Process, done <-chan struct{}, onEnd func()) {
	p.mu.Lock()
	p.p, p.detached = ap, false
	p.mu.Unlock()
	go func() {
		select {
		case <-done: // sandbox paused or deleted: its exec streams are gone
			ap.Close()
		case <-p.done:
		}
	}()
	go func() {
		if p.pump(ap, done) {
			onEnd()
		}
	}()
}

// detach marks the command as waiting for the sandbox's resume; its
// clients' streams end (they reconnect by pid).
func (p *proc) detach() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.p, p.detached = nil, true
	for ch := range p.subs {
		delete(p.subs, ch)
		close(ch)
	}
}

// pump reads the command's events until it ends (true) or its stream is
// cut by the end of the sandbox's run (false: detached).
func (p *proc) pump(ap *agentclient.Process, done <-chan struct{}) bool {
	for {
		ev, err := ap.Next()
		if err != nil {
			select {
			case <-done:
				p.detach()
				return false
			default:
			}
			p.finish(ap, -1, err.Error())
			return true
		}
		switch ev.Kind {
		case agentclient.EventStdout:
			d := &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stdout{Stdout: ev.Data}}
			if p.pty {
				d.Output = &pb.ProcessEvent_DataEvent_Pty{Pty: ev.Data}
			}
			p.publish(&pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: d}})
		case agentclient.EventStderr:
			p.publish(&pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: &pb.ProcessEvent_DataEvent{
				Output: &pb.ProcessEvent_DataEvent_Stderr{Stderr: ev.Data}}}})
		case agentclient.EventExit:
			p.finish(ap, ev.Exit.ExitCode, ev.Exit.Error)
			return true
		}
	}
}

func (p *proc) finish(ap *agentclient.Process, code int, errText string) {
	end := &pb.ProcessEvent_EndEvent{ExitCode: int32(code), Exited: code >= 0, Status: "exit status " + strconv.Itoa(code)}
	if errText != "" {
		end.Error = &errText
		if code < 0 {
			end.Status = errText
		}
	}
	ev := &pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: end}}
	p.mu.Lock()
	p.end = ev
	for ch := range p.subs {
		select {
		case ch <- ev:
		default:
		}
		close(ch)
	}
	p.subs = nil
	p.p, p.detached = nil, false
	p.mu.Unlock()
	close(p.done)
	ap.Close()
}

// reattach attaches again, by pid, to the commands of sandbox id that its
// pause detached; t is the resumed sandbox. A command the agent no longer
// has ends with the agent's reason.
func (s *Server) reattach(id string, t *sandbox.Target) {
	s.mu.Lock()
	table := s.procs[id]
	s.mu.Unlock()
	if table == nil {
		return
	}
	table.mu.Lock()
	var detached []*proc
	for _, p := range table.procs {
		p.mu.Lock()
		if p.detached {
			p.detached = false // claimed by this call
			detached = append(detached, p)
		}
		p.mu.Unlock()
	}
	table.mu.Unlock()
	for _, p := range detached {
		ctx, cancel := context.WithCancel(context.Background())
		ap, err := t.Agent.Attach(ctx, int(p.pid))
		if err != nil {
			cancel()
			p.mu.Lock()
			p.detached = true // try again on the next request
			p.mu.Unlock()
			s.log.Warn("e2b: re-attaching to a command after a resume", "sandbox", id, "pid", p.pid, "err", err)
			continue
		}
		p.follow(ap, t.Done, func() { cancel(); table.forgetLater(p) })
	}
}

// forgetLater drops an ended command after exitRetention, so that a late
// Connect still gets its end event.
func (t *procTable) forgetLater(p *proc) {
	time.AfterFunc(exitRetention, func() {
		t.mu.Lock()
		if t.procs[p.pid] == p {
			delete(t.procs, p.pid)
		}
		t.mu.Unlock()
	})
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// commandLine is the shell command that runs cmd with args (the agent runs
// every command as /bin/sh -c <line>).
func commandLine(cfg *pb.ProcessConfig) string {
	parts := []string{"exec", shellQuote(cfg.GetCmd())}
	for _, a := range cfg.GetArgs() {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

type processService struct{ s *Server }

// lifetime reads Connect-Timeout-Ms, which envd takes as the command's
// lifetime (whole seconds for the agent, rounded up; 0: no limit).
func lifetime(h interface{ Get(string) string }) int {
	ms, err := strconv.ParseInt(h.Get("Connect-Timeout-Ms"), 10, 64)
	if err != nil || ms <= 0 {
		return 0
	}
	return int((ms + 999) / 1000)
}

func keepaliveInterval(h interface{ Get(string) string }) time.Duration {
	if n, err := strconv.Atoi(h.Get("Keepalive-Ping-Interval")); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return keepaliveDefault
}

func (ps *processService) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	c := callFrom(ctx)
	cfg := req.Msg.GetProcess()
	if cfg.GetCmd() == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is required"))
	}
	er := agentclient.ExecRequest{
		Command:    commandLine(cfg),
		WorkingDir: cfg.GetCwd(),
		User:       c.user,
		Env:        cfg.GetEnvs(),
		TimeoutS:   lifetime(req.Header()),
		Keep:       true, // it outlives this stream and the sandbox's pauses
	}
	isPTY := req.Msg.Pty != nil
	if isPTY {
		size := req.Msg.GetPty().GetSize()
		er.PTY = &agentclient.PTYSize{Cols: uint16(size.GetCols()), Rows: uint16(size.GetRows())}
	}
	// The command belongs to the sandbox, not to this request: it keeps
	// running when the client goes, until it exits or the sandbox stops.
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ap, err := c.target.Agent.Start(pctx, er)
	if err != nil {
		cancel()
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("start command: %w", err))
	}
	if !isPTY && req.Msg.Stdin != nil && !req.Msg.GetStdin() { // absent: stdin stays open, as envd's
		ap.CloseStdin()
	}
	p := &proc{pid: uint32(ap.Pid()), tag: req.Msg.GetTag(), config: cfg, pty: isPTY,
		subs: map[chan *pb.ProcessEvent]struct{}{}, done: make(chan struct{})}
	t := ps.s.table(c.id)
	t.mu.Lock()
	t.procs[p.pid] = p
	t.mu.Unlock()
	ch := p.subscribe()
	p.follow(ap, c.target.Done, func() { cancel(); t.forgetLater(p) })
	return relay(ctx, p, ch, keepaliveInterval(req.Header()), func(ev *pb.ProcessEvent) error {
		return stream.Send(&pb.StartResponse{Event: ev})
	})
}

// relay sends the start event, then the command's events with keepalives
// in the idle gaps, until the end event or the client leaves.
func relay(ctx context.Context, p *proc, ch chan *pb.ProcessEvent, keepalive time.Duration, send func(*pb.ProcessEvent) error) error {
	defer p.unsubscribe(ch)
	if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: p.pid}}}); err != nil {
		return err
	}
	tick := time.NewTicker(keepalive)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
		case ev, ok := <-ch:
			if !ok {
				return connect.NewError(connect.CodeUnavailable, fmt.Errorf("the stream of process %d ended before it did (the sandbox was paused, or this client fell behind): connect to it again by pid", p.pid))
			}
			if err := send(ev); err != nil {
				return err
			}
			if ev.GetEnd() != nil {
				return nil
			}
			tick.Reset(keepalive)
		}
	}
}

func (ps *processService) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	c := callFrom(ctx)
	p, err := ps.s.table(c.id).find(req.Msg.GetProcess())
	if err != nil {
		return err
	}
	return relay(ctx, p, p.subscribe(), keepaliveInterval(req.Header()), func(ev *pb.ProcessEvent) error {
		return stream.Send(&pb.ConnectResponse{Event: ev})
	})
}

func (ps *processService) List(ctx context.Context, req *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	t := ps.s.table(callFrom(ctx).id)
	t.mu.Lock()
	defer t.mu.Unlock()
	out := &pb.ListResponse{}
	for _, p := range t.procs {
		select {
		case <-p.done:
			continue
		default:
		}
		info := &pb.ProcessInfo{Config: p.config, Pid: p.pid}
		if p.tag != "" {
			info.Tag = &p.tag
		}
		out.Processes = append(out.Processes, info)
	}
	return connect.NewResponse(out), nil
}

func (ps *processService) running(ctx context.Context, sel *pb.ProcessSelector) (*proc, error) {
	p, err := ps.s.table(callFrom(ctx).id).find(sel)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process %d has exited", p.pid))
	default:
	}
	return p, nil
}

func (ps *processService) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	p, err := ps.running(ctx, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	data := req.Msg.GetInput().GetStdin()
	if data == nil {
		data = req.Msg.GetInput().GetPty()
	}
	ap, err := p.stream()
	if err != nil {
		return nil, err
	}
	if _, err := ap.Write(data); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("send input: %w", err))
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

func (ps *processService) SendSignal(ctx context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	p, err := ps.running(ctx, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	sig := "KILL"
	switch req.Msg.GetSignal() {
	case pb.Signal_SIGNAL_SIGTERM:
		sig = "TERM"
	case pb.Signal_SIGNAL_SIGKILL:
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL"))
	}
	ap, err := p.stream()
	if err != nil {
		return nil, err
	}
	if err := ap.Signal(sig); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("signal: %w", err))
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

func (ps *processService) CloseStdin(ctx context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	p, err := ps.running(ctx, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if p.pty {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("a PTY has no stdin to close; send ^D as input"))
	}
	ap, err := p.stream()
	if err != nil {
		return nil, err
	}
	if err := ap.CloseStdin(); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("close stdin: %w", err))
	}
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

func (ps *processService) Update(ctx context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	p, err := ps.running(ctx, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if size := req.Msg.GetPty().GetSize(); size != nil {
		if !p.pty {
			return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the process has no PTY to resize"))
		}
		ap, err := p.stream()
		if err != nil {
			return nil, err
		}
		if err := ap.Resize(uint16(size.GetCols()), uint16(size.GetRows())); err != nil {
			return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("resize: %w", err))
		}
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}

func (ps *processService) StreamInput(ctx context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("StreamInput (client streaming) is not supported; use SendInput"))
}
