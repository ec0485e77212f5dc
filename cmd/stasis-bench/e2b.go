package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"connectrpc.com/connect"

	pb "github.com/stasis-sandbox/stasis/internal/e2b/envdpb/process"
	"github.com/stasis-sandbox/stasis/internal/e2b/envdpb/process/processconnect"
)

// The e2b phase: the same work through E2B's protocol (stasisd's
// --e2b-listen) and through the Superserve API of the same stasisd,
// alternating, one row each, the Superserve figure in the baseline column.
// The harness speaks E2B's wire protocol itself, as the e2b SDK 2.51.0 sends
// it: the REST control plane, and envd's Connect-RPC Process.Start over
// HTTP/1.1 with the JSON codec, the headers the SDK sets and the command
// line commands.run builds (/bin/bash -l -c <cmd>).

// e2bRunCmd is what the SDK's commands.run("true") asks envd to run.
var e2bRunCmd = []string{"-l", "-c", "true"}

// e2bBox is a sandbox created through the E2B API.
type e2bBox struct {
	s     *server
	ID    string
	token string // envdAccessToken
	proc  processconnect.ProcessClient
}

type e2bSandboxJSON struct {
	SandboxID       string `json:"sandboxID"`
	EnvdAccessToken string `json:"envdAccessToken"`
}

// e2bDo sends an E2B control-plane request and decodes the answer into out.
func (s *server) e2bDo(ctx context.Context, method, path string, body any, wantStatus int, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.E2BURL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", s.apiKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		return fmt.Errorf("e2b %s %s: %d %s (want %d)", method, path, resp.StatusCode, data, wantStatus)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// e2bHeaders adds what the SDK sends with every envd request.
type e2bHeaders struct {
	id, token string
	next      http.RoundTripper
}

func (h e2bHeaders) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("E2b-Sandbox-Id", h.id)
	r.Header.Set("E2b-Sandbox-Port", "49983")
	r.Header.Set("X-Access-Token", h.token)
	return h.next.RoundTrip(r)
}

func (s *server) e2bCreate(ctx context.Context) (*e2bBox, error) {
	var sb e2bSandboxJSON
	if err := s.e2bDo(ctx, "POST", "/v2/sandboxes", map[string]any{"templateID": "base", "timeout": 600}, http.StatusCreated, &sb); err != nil {
		return nil, err
	}
	return s.e2bBox(sb), nil
}

func (s *server) e2bBox(sb e2bSandboxJSON) *e2bBox {
	hc := &http.Client{Transport: e2bHeaders{id: sb.SandboxID, token: sb.EnvdAccessToken, next: s.http.Transport}}
	return &e2bBox{s: s, ID: sb.SandboxID, token: sb.EnvdAccessToken,
		proc: processconnect.NewProcessClient(hc, s.E2BURL, connect.WithProtoJSON())}
}

func (b *e2bBox) kill(ctx context.Context) error {
	return b.s.e2bDo(ctx, "DELETE", "/sandboxes/"+b.ID, nil, http.StatusNoContent, nil)
}

func (b *e2bBox) pause(ctx context.Context) error {
	return b.s.e2bDo(ctx, "POST", "/sandboxes/"+b.ID+"/pause", map[string]any{}, http.StatusNoContent, nil)
}

// connect resumes the paused sandbox, as Sandbox.connect does (201: resumed).
func (b *e2bBox) connect(ctx context.Context) error {
	var sb e2bSandboxJSON
	if err := b.s.e2bDo(ctx, "POST", "/v2/sandboxes/"+b.ID+"/connect", map[string]any{"timeout": 600}, http.StatusCreated, &sb); err != nil {
		return err
	}
	*b = *b.s.e2bBox(sb)
	return nil
}

// run is commands.run(cmd): Process.Start, then the events to the end; it
// fails unless the command exits 0.
func (b *e2bBox) run(ctx context.Context, args []string) error {
	f := false
	req := connect.NewRequest(&pb.StartRequest{
		Process: &pb.ProcessConfig{Cmd: "/bin/bash", Args: args, Envs: map[string]string{}},
		Stdin:   &f,
	})
	req.Header().Set("Connect-Timeout-Ms", "60000")
	req.Header().Set("Keepalive-Ping-Interval", "50")
	stream, err := b.proc.Start(ctx, req)
	if err != nil {
		return err
	}
	defer stream.Close()
	for stream.Receive() {
		if end := stream.Msg().GetEvent().GetEnd(); end != nil {
			if end.GetExitCode() != 0 {
				return fmt.Errorf("e2b run %v: exit %d %s", args, end.GetExitCode(), end.GetError())
			}
			return nil
		}
	}
	if err := stream.Err(); err != nil {
		return err
	}
	return fmt.Errorf("e2b run %v: stream ended without an end event", args)
}

// e2bRows are the phase's rows, for "not available" reporting.
var e2bRows = []string{
	"E2B commands.run(\"true\")",
	"E2B create (base)",
	"E2B pause",
	"E2B connect-resume",
}

func (b *bench) benchE2B(ctx context.Context) error {
	if b.srv.E2BURL == "" {
		for _, n := range e2bRows {
			b.add(Row{Group: "e2b", Name: n, Status: "not_available", Note: "this stasisd has no --e2b-listen"})
		}
		return nil
	}
	if err := b.e2bRun(ctx); err != nil {
		return err
	}
	return b.e2bLifecycle(ctx)
}

// e2bRun times commands.run("true") against POST /exec of the same
// command line, in sandboxes of the same template, alternating.
func (b *bench) e2bRun(ctx context.Context) error {
	eb, err := b.srv.e2bCreate(ctx)
	if err != nil {
		return err
	}
	defer eb.kill(context.WithoutCancel(ctx))
	sb, err := b.srv.create(ctx, b.name("e2b-exec"), tmplBase, 0)
	if err != nil {
		return err
	}
	defer sb.delete(context.WithoutCancel(ctx))
	line := "/bin/bash -l -c true"
	for i := 0; i < 3; i++ { // warm up both paths
		if err := eb.run(ctx, e2bRunCmd); err != nil {
			return err
		}
		if _, err := sb.exec(ctx, line); err != nil {
			return err
		}
	}
	var e, s durations
	for i := 0; i < b.cfg.ExecReps; i++ {
		d, err := timed(func() error { return eb.run(ctx, e2bRunCmd) })
		if err != nil {
			return err
		}
		e.add(d)
		d, err = timed(func() error { _, err := sb.exec(ctx, line); return err })
		if err != nil {
			return err
		}
		s.add(d)
	}
	b.add(Row{Group: "e2b", Name: e2bRows[0],
		Stasis: e.stat(), StasisOp: "envd Process.Start {cmd:/bin/bash, args:[-l,-c,true], stdin:false} (Connect JSON stream) until its end event",
		Raw: s.stat(), RawOp: "Superserve POST /exec {command:\"" + line + "\"}",
		Note: "baseline column: the same command through the Superserve API of the same stasisd; goal ratio ≤ 1.1"})
	return nil
}

// e2bLifecycle times create, pause and connect-resume through E2B's
// control plane against create, pause and resume through the Superserve
// API, alternating within each repetition.
func (b *bench) e2bLifecycle(ctx context.Context) error {
	var eCreate, sCreate, ePause, sPause, eResume, sResume durations
	for i := 0; i < b.cfg.CreateReps; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		var eb *e2bBox
		d, err := timed(func() (err error) { eb, err = b.srv.e2bCreate(ctx); return err })
		if err != nil {
			return err
		}
		eCreate.add(d)
		var sb *box
		d, err = timed(func() (err error) { sb, err = b.srv.create(ctx, b.name("e2b-life"), tmplBase, 0); return err })
		if err != nil {
			eb.kill(context.WithoutCancel(ctx))
			return err
		}
		sCreate.add(d)
		err = func() error {
			for _, step := range []struct {
				e, s   func() error
				de, ds *durations
			}{
				{func() error { return eb.pause(ctx) }, func() error { return sb.pause(ctx) }, &ePause, &sPause},
				{func() error { return eb.connect(ctx) }, func() error { return sb.resume(ctx) }, &eResume, &sResume},
			} {
				d, err := timed(step.e)
				if err != nil {
					return err
				}
				step.de.add(d)
				if d, err = timed(step.s); err != nil {
					return err
				}
				step.ds.add(d)
			}
			return nil
		}()
		eb.kill(context.WithoutCancel(ctx))
		sb.delete(context.WithoutCancel(ctx))
		if err != nil {
			return err
		}
	}
	note := "baseline column: the same through the Superserve API of the same stasisd; goal ratio ≤ 1.05"
	b.add(Row{Group: "e2b", Name: e2bRows[1], Stasis: eCreate.stat(), StasisOp: "POST /v2/sandboxes {templateID:base}",
		Raw: sCreate.stat(), RawOp: "Superserve POST /sandboxes {from_template:" + tmplBase + "}", Note: note})
	b.add(Row{Group: "e2b", Name: e2bRows[2], Stasis: ePause.stat(), StasisOp: "POST /sandboxes/{id}/pause",
		Raw: sPause.stat(), RawOp: "Superserve POST /sandboxes/{id}/pause", Note: note})
	b.add(Row{Group: "e2b", Name: e2bRows[3], Stasis: eResume.stat(), StasisOp: "POST /v2/sandboxes/{id}/connect (resumes: 201)",
		Raw: sResume.stat(), RawOp: "Superserve POST /sandboxes/{id}/resume", Note: note})
	return nil
}
