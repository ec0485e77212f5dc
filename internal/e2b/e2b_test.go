package e2b_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/stasis-sandbox/stasis/internal/e2b/envdpb/filesystem"
	"github.com/stasis-sandbox/stasis/internal/e2b/envdpb/filesystem/filesystemconnect"
	"github.com/stasis-sandbox/stasis/internal/e2b/envdpb/process"
	"github.com/stasis-sandbox/stasis/internal/e2b/envdpb/process/processconnect"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// client talks to stasisd's E2B listener as the e2b SDK does.
type client struct {
	t    *testing.T
	base string
	key  string
}

type sandboxJSON struct {
	SandboxID       string `json:"sandboxID"`
	TemplateID      string `json:"templateID"`
	EnvdVersion     string `json:"envdVersion"`
	EnvdAccessToken string `json:"envdAccessToken"`
}

// do sends a control-plane request and returns the status, the body and
// the response headers.
func (c *client) do(method, path string, body any) (int, []byte, http.Header) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.base+path, rd)
	req.Header.Set("X-API-Key", c.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data, resp.Header
}

func (c *client) create(body map[string]any) sandboxJSON {
	c.t.Helper()
	st, data, _ := c.do("POST", "/v2/sandboxes", body)
	if st != http.StatusCreated {
		c.t.Fatalf("create: %d %s", st, data)
	}
	var sb sandboxJSON
	if err := json.Unmarshal(data, &sb); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { c.do("DELETE", "/sandboxes/"+sb.SandboxID, nil) })
	return sb
}

// envdClient returns an HTTP client that adds E2B's routing and auth
// headers, as the SDK does for envd.
func envdClient(sb sandboxJSON, user string) *http.Client {
	return &http.Client{Transport: headerTransport{sb: sb, user: user}}
}

type headerTransport struct {
	sb   sandboxJSON
	user string
}

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("E2b-Sandbox-Id", h.sb.SandboxID)
	r.Header.Set("E2b-Sandbox-Port", "49983")
	if h.sb.EnvdAccessToken != "" {
		r.Header.Set("X-Access-Token", h.sb.EnvdAccessToken)
	}
	if h.user != "" {
		r.SetBasicAuth(h.user, "")
	}
	return http.DefaultTransport.RoundTrip(r)
}

func wantCode(t *testing.T, err error, code connect.Code) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
}

// run starts a command through Process/Start and collects its output.
func run(t *testing.T, pc processconnect.ProcessClient, cmd string, opts ...connect.ClientOption) (stdout, stderr string, exit int32) {
	t.Helper()
	stdinOff := false
	stream, err := pc.Start(context.Background(), connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", cmd}},
		Stdin:   &stdinOff,
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	first := true
	var out, errb strings.Builder
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if first {
			if ev.GetStart() == nil || ev.GetStart().GetPid() == 0 {
				t.Fatalf("first event is %v, want start with a pid", ev)
			}
			first = false
			continue
		}
		out.Write(ev.GetData().GetStdout())
		errb.Write(ev.GetData().GetStderr())
		if end := ev.GetEnd(); end != nil {
			return out.String(), errb.String(), end.GetExitCode()
		}
	}
	t.Fatalf("stream ended without an end event: %v", stream.Err())
	return
}

func TestE2BProtocol(t *testing.T) {
	srv := testenv.StartServer(t)
	c := &client{t: t, base: srv.E2BURL(), key: srv.APIKey}

	t.Run("auth and unknown template", func(t *testing.T) {
		bad := &client{t: t, base: c.base, key: "nope"}
		st, data, _ := bad.do("GET", "/v2/sandboxes", nil)
		if st != 401 || !strings.Contains(string(data), `"code":401`) {
			t.Fatalf("bad key: %d %s", st, data)
		}
		st, data, _ = c.do("POST", "/v2/sandboxes", map[string]any{"templateID": "no-such-template"})
		if st != 404 || !strings.Contains(string(data), `"code":404`) {
			t.Fatalf("unknown template: %d %s", st, data)
		}
		st, data, _ = c.do("POST", "/v2/sandboxes/nosuchsandbox/connect", map[string]any{})
		if st != 404 || !strings.Contains(string(data), `"code":404`) {
			t.Fatalf("connect unknown: %d %s", st, data)
		}
		st, _, _ = c.do("DELETE", "/sandboxes/nosuchsandbox", nil)
		if st != 404 {
			t.Fatalf("kill unknown: %d", st)
		}
		// Network settings become stasis's rules: a bad entry is refused
		// naming it, and settings stasis has no counterpart for are refused.
		st, data, _ = c.do("POST", "/v2/sandboxes", map[string]any{"templateID": "base", "network": map[string]any{"denyOut": []string{"evil.example"}}})
		if st != 400 || !strings.Contains(string(data), "evil.example") {
			t.Fatalf("bad network rule: %d %s, want 400 naming it", st, data)
		}
		st, data, _ = c.do("POST", "/v2/sandboxes", map[string]any{"templateID": "base", "network": map[string]any{"egressProxy": map[string]string{"address": "proxy.example:1080"}}})
		if st != 400 || !strings.Contains(string(data), "egressProxy") {
			t.Fatalf("egress proxy: %d %s, want 400", st, data)
		}
	})

	sb := c.create(map[string]any{"templateID": "base", "metadata": map[string]string{"a b": "c&d"}, "envVars": map[string]string{"GREETING": "hello"}, "timeout": 120})
	if sb.TemplateID != "base" || sb.EnvdVersion == "" || sb.EnvdAccessToken == "" {
		t.Fatalf("create answered %+v", sb)
	}
	hc := envdClient(sb, "")
	pc := processconnect.NewProcessClient(hc, c.base)
	fc := filesystemconnect.NewFilesystemClient(hc, c.base)
	ctx := context.Background()

	t.Run("envd needs the access token", func(t *testing.T) {
		bad := sb
		bad.EnvdAccessToken = "wrong"
		_, err := processconnect.NewProcessClient(envdClient(bad, ""), c.base).List(ctx, connect.NewRequest(&process.ListRequest{}))
		wantCode(t, err, connect.CodeUnauthenticated)
		resp, err := envdClient(bad, "").Get(c.base + "/health")
		if err != nil || resp.StatusCode != 204 {
			t.Fatalf("health: %v %v", resp, err)
		}
	})

	t.Run("commands", func(t *testing.T) {
		out, errOut, code := run(t, pc, "echo out; echo err >&2; echo $GREETING; whoami; pwd; exit 3")
		if out != "out\nhello\nuser\n/home/user\n" || errOut != "err\n" || code != 3 {
			t.Fatalf("got %q %q %d", out, errOut, code)
		}
		// The JSON codec, as the SDK speaks it.
		jc := processconnect.NewProcessClient(hc, c.base, connect.WithProtoJSON())
		out, _, code = run(t, jc, "echo json")
		if out != "json\n" || code != 0 {
			t.Fatalf("json codec: %q %d", out, code)
		}
		root := processconnect.NewProcessClient(envdClient(sb, "root"), c.base)
		out, _, _ = run(t, root, "whoami")
		if out != "root\n" {
			t.Fatalf("as root: %q", out)
		}
	})

	t.Run("background, list, reconnect, stdin, kill", func(t *testing.T) {
		sctx, cancel := context.WithCancel(ctx)
		tag := "counter"
		stream, err := pc.Start(sctx, connect.NewRequest(&process.StartRequest{
			Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-c", "read line; echo got:$line; sleep 600"}},
			Tag:     &tag,
		}))
		if err != nil {
			t.Fatal(err)
		}
		if !stream.Receive() {
			t.Fatal(stream.Err())
		}
		pid := stream.Msg().GetEvent().GetStart().GetPid()
		cancel() // the client goes; the command stays
		stream.Close()

		list, err := pc.List(ctx, connect.NewRequest(&process.ListRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range list.Msg.GetProcesses() {
			found = found || p.GetPid() == pid && p.GetTag() == tag && p.GetConfig().GetCmd() == "/bin/bash"
		}
		if !found {
			t.Fatalf("pid %d not in %v", pid, list.Msg.GetProcesses())
		}
		re, err := pc.Connect(ctx, connect.NewRequest(&process.ConnectRequest{Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Tag{Tag: tag}}}))
		if err != nil {
			t.Fatal(err)
		}
		defer re.Close()
		if !re.Receive() || re.Msg().GetEvent().GetStart().GetPid() != pid {
			t.Fatalf("reconnect: first event %v, err %v", re.Msg(), re.Err())
		}
		sel := &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}}
		if _, err := pc.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{Process: sel, Input: &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: []byte("hi\n")}}})); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		for !strings.Contains(out.String(), "got:hi") && re.Receive() {
			out.Write(re.Msg().GetEvent().GetData().GetStdout())
		}
		if !strings.Contains(out.String(), "got:hi") {
			t.Fatalf("output %q, err %v", out.String(), re.Err())
		}
		if _, err := pc.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{Process: sel, Signal: process.Signal_SIGNAL_SIGKILL})); err != nil {
			t.Fatal(err)
		}
		var end *process.ProcessEvent_EndEvent
		for end == nil && re.Receive() {
			end = re.Msg().GetEvent().GetEnd()
		}
		if end == nil || end.GetExitCode() == 0 {
			t.Fatalf("after SIGKILL: end %v, err %v", end, re.Err())
		}
		_, err = pc.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: 999999}}, Signal: process.Signal_SIGNAL_SIGKILL}))
		wantCode(t, err, connect.CodeNotFound)
	})

	t.Run("keepalives and Connect-Timeout-Ms as the lifetime", func(t *testing.T) {
		req := connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"30"}}})
		req.Header().Set("Keepalive-Ping-Interval", "1")
		tctx, cancel := context.WithTimeout(ctx, 4*time.Second) // sent as Connect-Timeout-Ms
		defer cancel()
		stream, err := pc.Start(tctx, req)
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		keepalives := 0
		var pid uint32
		for keepalives == 0 && stream.Receive() {
			ev := stream.Msg().GetEvent()
			if ev.GetStart() != nil {
				pid = ev.GetStart().GetPid()
			}
			if ev.GetKeepalive() != nil {
				keepalives++
			}
		}
		if keepalives == 0 {
			t.Fatalf("no keepalive on an idle stream: %v", stream.Err())
		}
		// The command dies with its deadline, though no client is attached.
		stream.Close()
		deadline := time.Now().Add(30 * time.Second)
		for {
			list, err := pc.List(ctx, connect.NewRequest(&process.ListRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			alive := false
			for _, p := range list.Msg.GetProcesses() {
				alive = alive || p.GetPid() == pid
			}
			if !alive {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pid %d outlived its Connect-Timeout-Ms", pid)
			}
			time.Sleep(250 * time.Millisecond)
		}
	})

	t.Run("pty", func(t *testing.T) {
		stream, err := pc.Start(ctx, connect.NewRequest(&process.StartRequest{
			Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-c", "read x; stty size; echo pty:$x"}},
			Pty:     &process.PTY{Size: &process.PTY_Size{Cols: 80, Rows: 24}},
		}))
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		if !stream.Receive() {
			t.Fatal(stream.Err())
		}
		sel := &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: stream.Msg().GetEvent().GetStart().GetPid()}}
		if _, err := pc.Update(ctx, connect.NewRequest(&process.UpdateRequest{Process: sel, Pty: &process.PTY{Size: &process.PTY_Size{Cols: 100, Rows: 30}}})); err != nil {
			t.Fatal(err)
		}
		if _, err := pc.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{Process: sel, Input: &process.ProcessInput{Input: &process.ProcessInput_Pty{Pty: []byte("yes\n")}}})); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		for stream.Receive() {
			out.Write(stream.Msg().GetEvent().GetData().GetPty())
		}
		if !strings.Contains(out.String(), "30 100") || !strings.Contains(out.String(), "pty:yes") {
			t.Fatalf("pty output %q", out.String())
		}
	})

	t.Run("files and filesystem", func(t *testing.T) {
		// Multipart with the target paths as filenames, one relative.
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		for name, data := range map[string]string{"/home/user/dir/a.txt": "alpha", "rel/b.txt": "beta"} {
			fw, _ := mw.CreateFormFile("file", name)
			fw.Write([]byte(data))
		}
		mw.Close()
		resp, err := hc.Post(c.base+"/files", mw.FormDataContentType(), &body)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(data), `"/home/user/rel/b.txt"`) {
			t.Fatalf("upload: %d %s", resp.StatusCode, data)
		}
		resp, err = hc.Get(c.base + "/files?path=" + url.QueryEscape("rel/b.txt"))
		if err != nil {
			t.Fatal(err)
		}
		data, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(data) != "beta" {
			t.Fatalf("read: %d %q", resp.StatusCode, data)
		}
		resp, _ = hc.Get(c.base + "/files?path=/home/user/missing")
		data, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 404 || !strings.Contains(string(data), `"code":404`) {
			t.Fatalf("missing file: %d %s", resp.StatusCode, data)
		}

		st, err := fc.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: "/home/user/dir/a.txt"}))
		if err != nil {
			t.Fatal(err)
		}
		e := st.Msg.GetEntry()
		if e.GetName() != "a.txt" || e.GetSize() != 5 || e.GetType() != filesystem.FileType_FILE_TYPE_FILE || e.GetOwner() != "user" || e.GetPermissions() != "-rw-r--r--" {
			t.Fatalf("stat: %v", e)
		}
		_, err = fc.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: "/nope"}))
		wantCode(t, err, connect.CodeNotFound)

		if _, err := fc.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: "/home/user/dir/sub/deep"})); err != nil {
			t.Fatal(err)
		}
		_, err = fc.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: "/home/user/dir/sub/deep"}))
		wantCode(t, err, connect.CodeAlreadyExists)

		ls, err := fc.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: "/home/user/dir", Depth: 1}))
		if err != nil {
			t.Fatal(err)
		}
		if got := names(ls.Msg.GetEntries()); got != "a.txt sub" {
			t.Fatalf("depth 1: %q", got)
		}
		ls, err = fc.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: "/home/user/dir", Depth: 3}))
		if err != nil {
			t.Fatal(err)
		}
		if got := names(ls.Msg.GetEntries()); got != "a.txt deep sub" {
			t.Fatalf("depth 3: %q", got)
		}

		mv, err := fc.Move(ctx, connect.NewRequest(&filesystem.MoveRequest{Source: "/home/user/dir/a.txt", Destination: "/home/user/moved.txt"}))
		if err != nil || mv.Msg.GetEntry().GetPath() != "/home/user/moved.txt" {
			t.Fatalf("move: %v %v", mv, err)
		}
		if _, err := fc.Remove(ctx, connect.NewRequest(&filesystem.RemoveRequest{Path: "/home/user/dir"})); err != nil {
			t.Fatal(err)
		}
		_, err = fc.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: "/home/user/dir"}))
		wantCode(t, err, connect.CodeNotFound)
	})

	t.Run("watch a directory", func(t *testing.T) {
		if _, err := fc.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: "/home/user/watched/sub"})); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := fc.WatchDir(wctx, connect.NewRequest(&filesystem.WatchDirRequest{Path: "/home/user/watched", Recursive: true}))
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		if !stream.Receive() || stream.Msg().GetStart() == nil {
			t.Fatalf("first event %v, err %v", stream.Msg(), stream.Err())
		}
		run(t, pc, "cd /home/user/watched && echo a > new.txt && echo b >> new.txt && mv new.txt sub/moved.txt && rm sub/moved.txt")
		want := []string{"CREATE new.txt", "WRITE new.txt", "RENAME new.txt", "CREATE sub/moved.txt", "REMOVE sub/moved.txt"}
		var got []string
		for len(got) < 20 && stream.Receive() {
			ev := stream.Msg().GetFilesystem()
			if ev == nil {
				continue
			}
			e := strings.TrimPrefix(ev.GetType().String(), "EVENT_TYPE_") + " " + ev.GetName()
			if len(got) == 0 || got[len(got)-1] != e { // repeated writes are one change here
				got = append(got, e)
			}
			if e == "REMOVE sub/moved.txt" {
				break
			}
		}
		if strings.Join(got, ", ") != strings.Join(want, ", ") {
			t.Fatalf("events %q, want %q", got, want)
		}
		// A server stream's error arrives with its first receive.
		missing, err := fc.WatchDir(ctx, connect.NewRequest(&filesystem.WatchDirRequest{Path: "/home/user/nope"}))
		if err == nil {
			if missing.Receive() {
				t.Fatalf("watching a missing directory sent %v", missing.Msg())
			}
			err = missing.Err()
			missing.Close()
		}
		wantCode(t, err, connect.CodeNotFound)
	})

	t.Run("list, info, timeout, pause, connect", func(t *testing.T) {
		q := url.QueryEscape(url.QueryEscape("a b") + "=" + url.QueryEscape("c&d"))
		st, data, _ := c.do("GET", "/v2/sandboxes?state=running,paused&metadata="+url.QueryEscape(q), nil)
		if st != 200 || !strings.Contains(string(data), sb.SandboxID) {
			t.Fatalf("list by metadata: %d %s", st, data)
		}
		st, data, _ = c.do("GET", "/v2/sandboxes?metadata="+url.QueryEscape(url.QueryEscape("a b=other")), nil)
		if st != 200 || strings.Contains(string(data), sb.SandboxID) {
			t.Fatalf("list by other metadata: %d %s", st, data)
		}
		if st, data, _ := c.do("POST", "/sandboxes/"+sb.SandboxID+"/timeout", map[string]int{"timeout": 600}); st != 204 {
			t.Fatalf("timeout: %d %s", st, data)
		}
		var info struct {
			State     string    `json:"state"`
			EndAt     time.Time `json:"endAt"`
			Lifecycle struct {
				OnTimeout string `json:"onTimeout"`
			} `json:"lifecycle"`
		}
		st, data, _ = c.do("GET", "/sandboxes/"+sb.SandboxID, nil)
		json.Unmarshal(data, &info)
		if st != 200 || info.State != "running" || time.Until(info.EndAt) < 500*time.Second || info.Lifecycle.OnTimeout != "kill" {
			t.Fatalf("info: %d %s", st, data)
		}

		// A background command keeps its state across pause and resume...
		run(t, pc, "echo before > /tmp/state")
		if st, data, _ := c.do("POST", "/sandboxes/"+sb.SandboxID+"/pause", nil); st != 204 {
			t.Fatalf("pause: %d %s", st, data)
		}
		if st, data, _ := c.do("POST", "/sandboxes/"+sb.SandboxID+"/pause", nil); st != 409 || !strings.Contains(string(data), `"code":409`) {
			t.Fatalf("second pause: %d %s", st, data)
		}
		st, data, _ = c.do("GET", "/v2/sandboxes?state=paused", nil)
		if !strings.Contains(string(data), sb.SandboxID) {
			t.Fatalf("paused list: %s", data)
		}
		if st, data, _ := c.do("POST", "/v2/sandboxes/"+sb.SandboxID+"/connect", map[string]int{"timeout": 60}); st != 201 {
			t.Fatalf("connect after pause: %d %s", st, data)
		}
		if st, data, _ := c.do("POST", "/v2/sandboxes/"+sb.SandboxID+"/connect", map[string]int{"timeout": 60}); st != 200 {
			t.Fatalf("connect while running: %d %s", st, data)
		}
		// ...and the old access token still works.
		if out, _, _ := run(t, pc, "cat /tmp/state"); out != "before\n" {
			t.Fatalf("after resume: %q", out)
		}
	})

	t.Run("paging", func(t *testing.T) {
		c.create(map[string]any{"templateID": "base"})
		st, data, h := c.do("GET", "/v2/sandboxes?limit=1", nil)
		if st != 200 || h.Get("X-Next-Token") == "" {
			t.Fatalf("first page: %d %s %v", st, data, h)
		}
		var page1, page2 []sandboxJSON
		json.Unmarshal(data, &page1)
		st, data, h = c.do("GET", "/v2/sandboxes?limit=1&nextToken="+h.Get("X-Next-Token"), nil)
		json.Unmarshal(data, &page2)
		if st != 200 || len(page1) != 1 || len(page2) != 1 || page1[0].SandboxID == page2[0].SandboxID || h.Get("X-Next-Token") != "" {
			t.Fatalf("pages %v %v next %q", page1, page2, h.Get("X-Next-Token"))
		}
	})

	t.Run("v1 paths, host routing, gzip files", func(t *testing.T) {
		st, data, _ := c.do("POST", "/sandboxes", map[string]any{"templateID": "base", "timeout": 30})
		var v1 sandboxJSON
		json.Unmarshal(data, &v1)
		if st != 201 || v1.SandboxID == "" {
			t.Fatalf("v1 create: %d %s", st, data)
		}
		if st, _, _ := c.do("DELETE", "/sandboxes/"+v1.SandboxID, nil); st != 204 {
			t.Fatalf("kill the v1 sandbox: %d", st)
		}
		st, data, _ = c.do("POST", "/sandboxes/"+sb.SandboxID+"/connect", map[string]int{"timeout": 60})
		if st != 200 || !strings.Contains(string(data), sb.SandboxID) {
			t.Fatalf("v1 connect: %d %s", st, data)
		}
		// No E2b-Sandbox-Id header: the host names the port and the sandbox.
		req, _ := http.NewRequest("GET", c.base+"/files?path=/home/user/moved.txt", nil)
		req.Host = "49983-" + sb.SandboxID + ".sandbox.test"
		req.Header.Set("X-Access-Token", sb.EnvdAccessToken)
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatalf("gzip answer: %v (%d %s)", err, resp.StatusCode, resp.Header)
		}
		data, _ = io.ReadAll(zr)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(data) != "alpha" {
			t.Fatalf("via host: %d %q", resp.StatusCode, data)
		}
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write([]byte("zipped upload"))
		zw.Close()
		req, _ = http.NewRequest("POST", c.base+"/files?path=/home/user/gz.txt", &gz)
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Encoding", "gzip")
		resp, err = hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("gzip upload: %d", resp.StatusCode)
		}
		if out, _, _ := run(t, pc, "cat /home/user/gz.txt"); out != "zipped upload" {
			t.Fatalf("gzip upload stored %q", out)
		}
	})

	t.Run("kill", func(t *testing.T) {
		if st, data, _ := c.do("DELETE", "/sandboxes/"+sb.SandboxID, nil); st != 204 {
			t.Fatalf("kill: %d %s", st, data)
		}
		resp, err := hc.Get(c.base + "/health")
		if err != nil || resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("health of a killed sandbox: %v %v", resp, err)
		}
		if st, _, _ := c.do("DELETE", "/sandboxes/"+sb.SandboxID, nil); st != 404 {
			t.Fatalf("second kill: %d", st)
		}
	})
}

func names(es []*filesystem.EntryInfo) string {
	var out []string
	for _, e := range es {
		out = append(out, e.GetName())
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}
