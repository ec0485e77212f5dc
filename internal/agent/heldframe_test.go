package agent_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// rawExec opens an exec connection by hand and sends the start frame for
// req right behind the upgrade request.
func rawExec(t *testing.T, addr string, req agentproto.StartRequest) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(30 * time.Second)) // a hang fails, not a timing check
	payload, _ := json.Marshal(req)
	var b bytes.Buffer
	b.WriteString("POST " + agentproto.PathExec + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testToken +
		"\r\nConnection: Upgrade\r\nUpgrade: " + agentproto.UpgradeProtocol + "\r\nContent-Length: 0\r\n\r\n")
	agentproto.NewFrameWriter(&b).WriteFrame(agentproto.FrameStart, payload)
	if _, err := conn.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	return conn
}

type rawFrame struct {
	t    agentproto.FrameType
	data string
}

// firstSend reads what the agent sent first (one read: on loopback one
// write of a few bytes arrives whole) and returns its frames after the 101.
func firstSend(t *testing.T, conn net.Conn) []rawFrame {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	br := bufio.NewReader(bytes.NewReader(buf[:n]))
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("first send %q: not a 101 (%v)", buf[:n], err)
	}
	var frames []rawFrame
	fr := agentproto.NewFrameReader(br)
	for {
		ft, data, err := fr.ReadFrame()
		if errors.Is(err, io.EOF) {
			return frames
		}
		if err != nil {
			t.Fatalf("first send %q: %v", buf[:n], err)
		}
		frames = append(frames, rawFrame{ft, string(data)})
	}
}

// A client that asked for it (a buffered run) gets the started frame in the
// same send as the command's first output; the frames and their order are
// those of any exec.
func TestHeldStartedGoesOutWithFirstOutput(t *testing.T) {
	_, addr := startAgent(t, agent.Config{})
	conn := rawExec(t, addr, agentproto.StartRequest{Command: "echo hi; read x", HoldStarted: true})
	frames := firstSend(t, conn)
	if len(frames) < 2 || frames[0].t != agentproto.FrameStarted || frames[1] != (rawFrame{agentproto.FrameStdout, "hi\n"}) {
		t.Fatalf("first send had frames %+v; want started, then stdout \"hi\\n\"", frames)
	}
	var st agentproto.Started
	if err := json.Unmarshal([]byte(frames[0].data), &st); err != nil || st.Pid <= 0 {
		t.Fatalf("started frame %q: pid %d, %v", frames[0].data, st.Pid, err)
	}
	// The command still waits for its input, and exits once it ends.
	agentproto.NewFrameWriter(conn).WriteFrame(agentproto.FrameStdinClose, nil)
	fr := agentproto.NewFrameReader(conn)
	for {
		ft, data, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no exit frame: %v", err)
		}
		if ft == agentproto.FrameExit {
			var ex agentproto.Exit
			if json.Unmarshal(data, &ex); ex.ExitCode != 1 { // read's end of file
				t.Fatalf("exit %s; want exit code 1", data)
			}
			return
		}
	}
}

// Without HoldStarted (streams, terminals) the started frame goes out at
// once, before the command has printed anything.
func TestStartedSentAtOnceByDefault(t *testing.T) {
	_, addr := startAgent(t, agent.Config{})
	conn := rawExec(t, addr, agentproto.StartRequest{Command: "read x; echo $x"})
	frames := firstSend(t, conn)
	if len(frames) != 1 || frames[0].t != agentproto.FrameStarted {
		t.Fatalf("first send had frames %+v; want the started frame alone", frames)
	}
}

// A buffered run's output that the agent finds once the shell has exited
// waits to go out with the exit frame (up to a bound): all of it still
// comes, before the exit frame, which is the last; small and large.
func TestOutputAfterTheExitComesBeforeTheExitFrame(t *testing.T) {
	_, addr := startAgent(t, agent.Config{})
	for _, n := range []int{3, 100000} {
		conn := rawExec(t, addr, agentproto.StartRequest{
			Command:     fmt.Sprintf("head -c %d /dev/zero | tr '\\0' o; echo err >&2; exit 7", n),
			HoldStarted: true,
		})
		agentproto.NewFrameWriter(conn).WriteFrame(agentproto.FrameStdinClose, nil)
		br := bufio.NewReader(conn)
		if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost}); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("not a 101: %v", err)
		}
		fr := agentproto.NewFrameReader(br)
		var out, errOut strings.Builder
		var types []agentproto.FrameType
		for {
			ft, data, err := fr.ReadFrame()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%d bytes: %v after frames %v", n, err, types)
			}
			types = append(types, ft)
			switch ft {
			case agentproto.FrameStdout:
				out.Write(data)
			case agentproto.FrameStderr:
				errOut.Write(data)
			case agentproto.FrameExit:
				var ex agentproto.Exit
				if json.Unmarshal(data, &ex); ex.ExitCode != 7 {
					t.Errorf("%d bytes: exit %s; want exit code 7", n, data)
				}
			}
		}
		if len(types) < 3 || types[0] != agentproto.FrameStarted || types[len(types)-1] != agentproto.FrameExit {
			t.Errorf("%d bytes: frames %v; want started first and exit last", n, types)
		}
		if out.String() != strings.Repeat("o", n) || errOut.String() != "err\n" {
			t.Errorf("%d bytes: got %d bytes of stdout, stderr %q", n, out.Len(), errOut.String())
		}
	}
}
