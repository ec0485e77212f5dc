package agent_test

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// TestHostOnlyRefusesLoopback: behind HostOnly, a real agent answers nothing
// over loopback, not even a request with the right token; a token rotation
// sent that way changes nothing.
func TestHostOnlyRefusesLoopback(t *testing.T) {
	srv, err := agent.New(agent.Config{TokenHash: agentproto.TokenHash(testToken)}, reaper, log.New(testWriter{t}, "agent: ", 0))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(agent.HostOnly(ln, log.New(testWriter{t}, "agent: ", 0))) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	})
	addr := ln.Addr().String()
	ctx := testCtx(t)

	c := agentclient.New(addr, testToken)
	defer c.CloseIdleConnections()
	for range 3 { // refused every time, the listener goes on
		var ae *agentclient.Error
		if err := c.RotateToken(ctx, "evil"); err == nil || errors.As(err, &ae) {
			t.Fatalf("rotation over loopback: %v, want a connection error", err)
		}
		if err := c.Health(ctx); err == nil {
			t.Fatal("health over loopback answered")
		}
	}
	// A raw request: the connection ends (or is reset even before the dial
	// returns) without an answer.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer conn.Close()
	io.WriteString(conn, "GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+testToken+"\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(conn); len(b) != 0 || isTimeout(err) {
		t.Fatalf("raw request over loopback: read %q, %v", b, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
