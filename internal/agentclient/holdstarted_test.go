package agentclient_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// oldAgent answers each exec connection as agents before hold_started did
// (101, then started at once, then output and exit), and reports the start
// request it received.
func oldAgent(t *testing.T, ln net.Listener, starts chan<- agentproto.StartRequest) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			br := bufio.NewReader(conn)
			if _, err := http.ReadRequest(br); err != nil {
				t.Errorf("old agent: %v", err)
				return
			}
			_, payload, err := agentproto.NewFrameReader(br).ReadFrame()
			if err != nil {
				t.Errorf("old agent: start frame: %v", err)
				return
			}
			var req agentproto.StartRequest
			json.Unmarshal(payload, &req)
			starts <- req
			io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+agentproto.UpgradeProtocol+"\r\n\r\n")
			fw := agentproto.NewFrameWriter(conn)
			fw.WriteFrame(agentproto.FrameStarted, []byte(`{"pid":42}`))
			fw.WriteFrame(agentproto.FrameStdout, []byte("out\n"))
			fw.WriteFrame(agentproto.FrameExit, []byte(`{"exit_code":3}`))
			io.Copy(io.Discard, br) // until the client closes
		}()
	}
}

// Run asks the agent to hold its started frame (a buffered run needs no pid
// before the output), Start does not (a stream needs it at once), and Run
// still works against an agent that ignores the field: a sandbox paused
// with an older agent and resumed under a newer stasisd.
func TestRunAsksToHoldStartedAndWorksWithOldAgents(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	starts := make(chan agentproto.StartRequest, 2)
	go oldAgent(t, ln, starts)
	c := agentclient.New(ln.Addr().String(), token)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var out bytes.Buffer
	st, err := c.Run(ctx, agentclient.ExecRequest{Command: "x"}, &out, io.Discard)
	if err != nil || st.ExitCode != 3 || out.String() != "out\n" {
		t.Fatalf("Run against an old agent: %+v, stdout %q, %v; want exit 3 and \"out\\n\"", st, out.String(), err)
	}
	if req := <-starts; !req.HoldStarted {
		t.Errorf("Run's start request %+v does not ask to hold the started frame", req)
	}

	p, err := c.Start(ctx, agentclient.ExecRequest{Command: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Pid() != 42 {
		t.Errorf("Start: pid %d, want 42", p.Pid())
	}
	if req := <-starts; req.HoldStarted {
		t.Errorf("Start's start request %+v asks to hold the started frame; a stream needs it at once", req)
	}
}
