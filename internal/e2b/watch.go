package e2b

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	pb "github.com/stasis-sandbox/stasis/internal/e2b/envdpb/filesystem"
)

// inotifyScript watches a directory inside the sandbox (gVisor implements
// inotify for changes made in the sandbox) and prints its events.
//
//go:embed watch/inotify.py
var inotifyScript string

var watchEvents = map[string]pb.EventType{
	"create": pb.EventType_EVENT_TYPE_CREATE,
	"write":  pb.EventType_EVENT_TYPE_WRITE,
	"remove": pb.EventType_EVENT_TYPE_REMOVE,
	"rename": pb.EventType_EVENT_TYPE_RENAME,
	"chmod":  pb.EventType_EVENT_TYPE_CHMOD,
}

// WatchDir streams the directory's events: start first, then one event per
// change, with keepalives in between, until the client leaves (which ends
// the watcher in the sandbox) or the directory goes. It needs python3 in
// the sandbox's image (stasis/base has it).
func (fsv *filesystemService) WatchDir(ctx context.Context, req *connect.Request[pb.WatchDirRequest], stream *connect.ServerStream[pb.WatchDirResponse]) error {
	c := callFrom(ctx)
	if req.Msg.GetIncludeEntry() {
		return connect.NewError(connect.CodeUnimplemented, errors.New("includeEntry is not supported by stasis"))
	}
	rec := "0"
	if req.Msg.GetRecursive() {
		rec = "1"
	}
	cmd := "exec python3 -c " + shellQuote(inotifyScript) + " " + shellQuote(req.Msg.GetPath()) + " " + rec
	p, err := c.target.Agent.Start(ctx, agentclient.ExecRequest{Command: cmd, User: c.user})
	if err != nil {
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("start watcher: %w", err))
	}
	defer p.Close()
	type result struct {
		ev  agentclient.Event
		err error
	}
	events := make(chan result)
	go func() {
		for {
			ev, err := p.Next()
			select {
			case events <- result{ev, err}:
			case <-ctx.Done():
				return
			}
			if err != nil || ev.Kind == agentclient.EventExit {
				return
			}
		}
	}()
	keepalive := keepaliveInterval(req.Header())
	tick := time.NewTicker(keepalive)
	defer tick.Stop()
	var line, errOut bytes.Buffer
	started := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if started {
				if err := stream.Send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Keepalive{Keepalive: &pb.WatchDirResponse_KeepAlive{}}}); err != nil {
					return err
				}
			}
		case r := <-events:
			if r.err != nil {
				return connect.NewError(connect.CodeUnavailable, fmt.Errorf("watcher: %w", r.err))
			}
			switch r.ev.Kind {
			case agentclient.EventStderr:
				errOut.Write(r.ev.Data)
			case agentclient.EventExit:
				msg := errors.New(strings.TrimSpace(errOut.String()))
				switch {
				case started && r.ev.Exit.ExitCode == 0:
					return nil // the directory was removed
				case r.ev.Exit.ExitCode == exitNotFound:
					return connect.NewError(connect.CodeNotFound, msg)
				case r.ev.Exit.ExitCode == exitNotDir:
					return connect.NewError(connect.CodeInvalidArgument, msg)
				}
				return connect.NewError(connect.CodeInternal, fmt.Errorf("watcher ended (exit %d): %v", r.ev.Exit.ExitCode, msg))
			case agentclient.EventStdout:
				line.Write(r.ev.Data)
				for {
					l, err := line.ReadString('\n')
					if err != nil {
						line.WriteString(l) // incomplete: wait for the rest
						break
					}
					l = strings.TrimSuffix(l, "\n")
					var ev *pb.WatchDirResponse
					if l == "ready" && !started {
						started = true
						ev = &pb.WatchDirResponse{Event: &pb.WatchDirResponse_Start{Start: &pb.WatchDirResponse_StartEvent{}}}
					} else if kind, name, ok := strings.Cut(l, "\t"); ok && watchEvents[kind] != 0 {
						ev = &pb.WatchDirResponse{Event: &pb.WatchDirResponse_Filesystem{Filesystem: &pb.FilesystemEvent{
							Name: path.Clean(name), Type: watchEvents[kind]}}}
					}
					if ev == nil {
						continue
					}
					if err := stream.Send(ev); err != nil {
						return err
					}
					tick.Reset(keepalive)
				}
			}
		}
	}
}
