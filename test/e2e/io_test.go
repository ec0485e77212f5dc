package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// rawAnswer is a decoded error envelope with its HTTP status and headers.
type rawAnswer struct {
	Status  int
	Header  http.Header
	Code    string
	Message string
}

// sendRaw sends a raw body (bytes as given, valid JSON or not) to the control
// plane, or to c's data plane when c is non-nil, and decodes the answer as
// an error envelope if it is one.
func sendRaw(t *testing.T, srv *testenv.Server, c *client, method, path, body string) (rawAnswer, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if c != nil {
		req.Header.Set("X-Superserve-Sandbox-Id", c.id)
		req.Header.Set("X-Access-Token", c.token)
	} else {
		req.Header.Set("X-API-Key", srv.APIKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	out := rawAnswer{Status: resp.StatusCode, Header: resp.Header}
	var env struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if json.Unmarshal(data, &env) == nil {
		out.Code, out.Message = env.Error.Code, env.Error.Message
	}
	return out, data
}

// wantAPIError checks an answer is the error envelope with this status and
// code and a message containing msg.
func wantAPIError(t *testing.T, what string, got rawAnswer, status int, code, msg string) {
	t.Helper()
	if got.Status != status || got.Code != code || !strings.Contains(got.Message, msg) {
		t.Errorf("%s: HTTP %d %s %q; want %d %s mentioning %q", what, got.Status, got.Code, got.Message, status, code, msg)
	}
}

// TestTemplateCreateValidation: POST /templates takes Superserve's body
// only (build_spec required, unknown fields refused), refuses names that
// look like paths, absurd step counts and over-long fields, and creates
// nothing when it refuses. A team/name template, as the SDK sends it
// (slash encoded), works.
func TestTemplateCreateValidation(t *testing.T) {
	srv := testenv.StartServer(t)
	steps := make([]string, 10000)
	for i := range steps {
		steps[i] = `{"run":"true"}`
	}
	spec := `"build_spec":{"from":"stasis/minimal"}`
	cases := []struct {
		name, body, msg string
	}{
		{"top-level from", `{"name":"x","from":"stasis/minimal"}`, `unknown field "from"`},
		{"no build_spec", `{"name":"x"}`, "build_spec is required"},
		{"null build_spec", `{"name":"x","build_spec":null}`, "build_spec is required"},
		{"unknown field", `{"name":"x",` + spec + `,"colour":"red"}`, `unknown field "colour"`},
		{"unknown step kind", `{"name":"x","build_spec":{"from":"stasis/minimal","steps":[{"copy":"a"}]}}`, `unknown field "copy"`},
		{"no from", `{"name":"x","build_spec":{"steps":[{"run":"true"}]}}`, "build_spec.from is required"},
		{"dotdot name", `{"name":"../../etc",` + spec + `}`, "not valid"},
		{"absolute name", `{"name":"/etc/passwd",` + spec + `}`, "not valid"},
		{"two slashes", `{"name":"a/b/c",` + spec + `}`, "not valid"},
		{"reserved prefix", `{"name":"stasis/mine",` + spec + `}`, "reserved"},
		{"500-char name", `{"name":"` + strings.Repeat("n", 500) + `",` + spec + `}`, "limit is 128"},
		{"10000 steps", `{"name":"x","build_spec":{"from":"stasis/minimal","steps":[` + strings.Join(steps, ",") + `]}}`, "limit is 100"},
		{"two kinds in a step", `{"name":"x","build_spec":{"from":"stasis/minimal","steps":[{"run":"true","workdir":"/a"}]}}`, "steps[0]: a step must have exactly one"},
		{"quote in workdir", `{"name":"x","build_spec":{"from":"stasis/minimal","steps":[{"workdir":"/a'; reboot; '"}]}}`, "steps[0]: workdir"},
		{"shell in user name", `{"name":"x","build_spec":{"from":"stasis/minimal","steps":[{"user":{"name":"app;reboot"}}]}}`, "steps[0]: user name"},
		{"bad env key", `{"name":"x","build_spec":{"from":"stasis/minimal","steps":[{"env":{"key":"A=B","value":"1"}}]}}`, "steps[0]: env"},
		{"long from", `{"name":"x","build_spec":{"from":"` + strings.Repeat("r", 2000) + `"}}`, "limit is 1024"},
		{"invalid UTF-8 name", `{"name":"caf` + "\xe9" + `",` + spec + `}`, "field name is not valid UTF-8"},
		{"invalid UTF-8 step", `{"name":"x","build_spec":{"from":"stasis/minimal","steps":[{"run":"echo ` + "\xff" + `"}]}}`, "build_spec.steps[0].run is not valid UTF-8"},
	}
	for _, tc := range cases {
		got, _ := sendRaw(t, srv, nil, "POST", "/templates", tc.body)
		wantAPIError(t, tc.name, got, http.StatusBadRequest, "invalid_request", tc.msg)
		if len(got.Message) > 400 {
			t.Errorf("%s: message is %d bytes long: the input is echoed whole", tc.name, len(got.Message))
		}
	}
	var list []map[string]any
	if err := srv.Do("GET", "/templates", nil, &list); err != nil || len(list) != 0 {
		t.Fatalf("refused creates left templates behind: %v %v", list, err)
	}

	var created struct {
		ID      string `json:"id"`
		Name    string `json:"name"`
		BuildID string `json:"build_id"`
	}
	if err := srv.Do("POST", "/templates", map[string]any{"name": "acme/tiny",
		"build_spec": map[string]any{"from": "stasis/minimal", "steps": []any{map[string]any{"run": "echo hi > /tmp/hi"}}}}, &created); err != nil {
		t.Fatalf("team/name template: %v", err)
	}
	b := waitBuild(t, srv, created.ID, created.BuildID)
	if b.Status != "ready" {
		t.Fatalf("build of acme/tiny: %+v", b)
	}
	var got map[string]any
	if err := srv.Do("GET", "/templates/"+url.PathEscape("acme/tiny"), nil, &got); err != nil || got["id"] != created.ID {
		t.Fatalf("GET /templates/acme%%2Ftiny = %v, %v", got, err)
	}
}

// TestSnapshotNameValidation: a saved snapshot's name follows the rules of
// sandbox names, and a refused save keeps nothing.
func TestSnapshotNameValidation(t *testing.T) {
	srv := testenv.StartServer(t)
	_, sb := createMinimal(t, srv, "snap-names")
	path := "/sandboxes/" + sb.ID + "/snapshots"
	got, _ := sendRaw(t, srv, nil, "POST", path, `{"name":"`+strings.Repeat("s", 500)+`"}`)
	wantAPIError(t, "500-char snapshot name", got, http.StatusBadRequest, "invalid_request", "limit is 128")
	got, _ = sendRaw(t, srv, nil, "POST", path, `{"name":"bad\u0007bell"}`)
	wantAPIError(t, "control character", got, http.StatusBadRequest, "invalid_request", "control characters")
	got, _ = sendRaw(t, srv, nil, "POST", path, `{"name":"`+"\xff"+`"}`)
	wantAPIError(t, "invalid UTF-8", got, http.StatusBadRequest, "invalid_request", "field name is not valid UTF-8")
	var snaps []map[string]any
	if err := srv.Do("GET", "/snapshots", nil, &snaps); err != nil || len(snaps) != 0 {
		t.Fatalf("refused saves left snapshots: %v %v", snaps, err)
	}
}

// TestInvalidUTF8Refused: names, metadata and commands that are not UTF-8
// are refused with 400 naming the field, instead of being stored rewritten
// to U+FFFD; nothing changes.
func TestInvalidUTF8Refused(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := create(t, srv, map[string]any{"name": "utf8", "from_template": "stasis/minimal", "metadata": map[string]string{"k": "v"}})

	got, _ := sendRaw(t, srv, nil, "POST", "/sandboxes", `{"name":"n`+"\xff"+`","from_template":"stasis/minimal"}`)
	wantAPIError(t, "create name", got, http.StatusBadRequest, "invalid_request", "field name is not valid UTF-8")
	got, _ = sendRaw(t, srv, nil, "POST", "/sandboxes", `{"name":"m","metadata":{"owner":"`+"\xc3\x28"+`"}}`)
	wantAPIError(t, "create metadata", got, http.StatusBadRequest, "invalid_request", "field metadata.owner is not valid UTF-8")
	got, _ = sendRaw(t, srv, nil, "POST", "/sandboxes", `{"name":"e","env_vars":{"A":"\udc00"}}`)
	wantAPIError(t, "create env lone surrogate", got, http.StatusBadRequest, "invalid_request", "field env_vars.A is not valid UTF-8")
	got, _ = sendRaw(t, srv, nil, "PATCH", "/sandboxes/"+sb.ID, `{"metadata":{"k":"`+"\x80"+`"}}`)
	wantAPIError(t, "patch metadata", got, http.StatusBadRequest, "invalid_request", "field metadata.k is not valid UTF-8")
	got, _ = sendRaw(t, srv, c, "POST", "/exec", `{"command":"echo `+"\xfe"+`"}`)
	wantAPIError(t, "exec command", got, http.StatusBadRequest, "invalid_request", "field command is not valid UTF-8")

	var list []sandboxInfo
	if err := srv.Do("GET", "/sandboxes", nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Metadata["k"] != "v" || len(list[0].Metadata) != 1 {
		t.Fatalf("refused requests changed state: %+v", list)
	}
	// Valid UTF-8, including U+FFFD sent on purpose, is stored as sent.
	var upd sandboxInfo
	if err := srv.Do("PATCH", "/sandboxes/"+sb.ID, map[string]any{"metadata": map[string]string{"k": "café ✓ \ufffd"}}, &upd); err != nil || upd.Metadata["k"] != "café ✓ \ufffd" {
		t.Fatalf("valid UTF-8 metadata: %+v %v", upd.Metadata, err)
	}
}

// TestExecOutputBytes: output that is not UTF-8 reaches the client byte
// for byte with output_encoding "base64", buffered and streamed; without it
// the text form replaces such bytes with U+FFFD, as documented.
func TestExecOutputBytes(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "bytes")
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	c.writeFile("/tmp/all", all)

	run := func(body map[string]any) map[string]any {
		t.Helper()
		b, _ := json.Marshal(body)
		status, data := c.raw("POST", "/exec", bytes.NewReader(b))
		if status != http.StatusOK {
			t.Fatalf("exec %v: HTTP %d %s", body, status, data)
		}
		var out map[string]any
		json.Unmarshal(data, &out)
		return out
	}
	decode := func(v any) []byte {
		t.Helper()
		b, err := base64.StdEncoding.DecodeString(v.(string))
		if err != nil {
			t.Fatalf("not base64: %v", v)
		}
		return b
	}

	text := run(map[string]any{"command": `printf '\377\376ok'`})
	if text["stdout"] != "\ufffd\ufffdok" {
		t.Fatalf("text stdout = %q, want U+FFFD for each invalid byte", text["stdout"])
	}
	raw := run(map[string]any{"command": `printf '\377\376ok'; printf '\000\200' >&2; exit 3`, "output_encoding": "base64"})
	if got := decode(raw["stdout"]); !bytes.Equal(got, []byte("\xff\xfeok")) {
		t.Fatalf("base64 stdout = %q", got)
	}
	if got := decode(raw["stderr"]); !bytes.Equal(got, []byte{0, 0x80}) {
		t.Fatalf("base64 stderr = %q", got)
	}
	if raw["exit_code"] != 3.0 || raw["output_encoding"] != "base64" {
		t.Fatalf("base64 response = %v", raw)
	}
	if got := decode(run(map[string]any{"command": "cat /tmp/all", "output_encoding": "base64"})["stdout"]); !bytes.Equal(got, all) {
		t.Fatalf("all 256 byte values: got %v", got)
	}

	// The stream: each event's chunk is base64 on its own.
	b, _ := json.Marshal(map[string]any{"command": "cat /tmp/all; sleep 0.2; cat /tmp/all", "output_encoding": "base64"})
	status, data := c.raw("POST", "/exec/stream", bytes.NewReader(b))
	if status != http.StatusOK {
		t.Fatalf("stream: HTTP %d %s", status, data)
	}
	var streamed []byte
	finished := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		payload, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev map[string]any
		if err := json.Unmarshal([]byte(payload), &ev); err != nil {
			t.Fatalf("event %q: %v", payload, err)
		}
		if s, ok := ev["stdout"]; ok {
			streamed = append(streamed, decode(s)...)
		}
		if ev["finished"] == true {
			finished = ev["exit_code"] == 0.0
		}
	}
	if !finished || !bytes.Equal(streamed, append(append([]byte{}, all...), all...)) {
		t.Fatalf("streamed %d bytes (finished ok %v), want the file twice", len(streamed), finished)
	}

	got, _ := sendRaw(t, srv, c, "POST", "/exec", `{"command":"true","output_encoding":"hex"}`)
	wantAPIError(t, "unknown output_encoding", got, http.StatusBadRequest, "invalid_request", "output_encoding")
}

// TestExecRequestErrors: requests the agent could not run are 400s, as on
// create, not 200 with exit_code -1; the sandbox is unaffected.
func TestExecRequestErrors(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "exec-errors")
	for _, tc := range []struct {
		name, body, code, msg string
	}{
		{"= in env name", `{"command":"true","env":{"A=B":"1"}}`, "invalid_request", "env: name"},
		{"empty env name", `{"command":"true","env":{"":"1"}}`, "invalid_request", "env: a variable name is empty"},
		{"NUL in env value", `{"command":"true","env":{"A":"x\u0000y"}}`, "invalid_request", "NUL"},
		{"NUL in env name", `{"command":"true","env":{"A\u0000":"1"}}`, "invalid_request", "env: name"},
		{"NUL in command", `{"command":"echo a\u0000b"}`, "invalid_request", "command must not contain NUL"},
		{"NUL in working_dir", `{"command":"pwd","working_dir":"/tmp\u0000"}`, "invalid_path", "NUL"},
		{"negative timeout", `{"command":"true","timeout_s":-1}`, "invalid_request", "timeout_s"},
	} {
		got, _ := sendRaw(t, srv, c, "POST", "/exec", tc.body)
		wantAPIError(t, tc.name, got, http.StatusBadRequest, tc.code, tc.msg)
		got, _ = sendRaw(t, srv, c, "POST", "/exec/stream", tc.body)
		wantAPIError(t, tc.name+" (stream)", got, http.StatusBadRequest, tc.code, tc.msg)
	}
	if got := c.sh("echo still-fine"); got != "still-fine" {
		t.Fatalf("sandbox after bad execs: %q", got)
	}
}

// TestExecTimeout: a command the timeout kills reports 137 and says so; one
// that finishes in time reports its own exit code and no error.
func TestExecTimeout(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "timeouts")
	run := func(cmd string, timeout int) map[string]any {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"command": cmd, "timeout_s": timeout})
		status, data := c.raw("POST", "/exec", bytes.NewReader(b))
		if status != http.StatusOK {
			t.Fatalf("exec %q: HTTP %d %s", cmd, status, data)
		}
		var out map[string]any
		json.Unmarshal(data, &out)
		return out
	}
	killed := run("echo before; sleep 30", 1)
	if killed["exit_code"] != 137.0 || !strings.Contains(fmt.Sprint(killed["error"]), "timed out") || !strings.HasPrefix(killed["stdout"].(string), "before") {
		t.Fatalf("killed by the timeout: %v; want exit 137 and a timeout error", killed)
	}
	done := run("echo done; exit 4", 2)
	if done["exit_code"] != 4.0 || done["error"] != nil || done["stdout"] != "done\n" {
		t.Fatalf("finished in time: %v; want exit 4 and no error", done)
	}
	// Close to the deadline either outcome is fair, but the two fields agree.
	edge := run("echo edge; sleep 0.95", 1)
	if code := edge["exit_code"]; !(code == 0.0 && edge["error"] == nil) && !(code == 137.0 && strings.Contains(fmt.Sprint(edge["error"]), "timed out")) {
		t.Fatalf("near the deadline: %v; exit code and error disagree", edge)
	}
}

// TestFileErrors: writing over the agent's own binary (a read-only mount)
// is refused with a 4xx, not a 502 that makes SDKs re-activate and retry;
// an over-long path's error echoes only its start.
func TestFileErrors(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "files")
	got, _ := sendRaw(t, srv, c, "POST", "/files?path="+url.QueryEscape("/.stasis/agent"), "overwrite")
	wantAPIError(t, "write over the agent", got, http.StatusBadRequest, "permission_denied", "/.stasis/agent")
	if got := c.sh("echo alive"); got != "alive" {
		t.Fatalf("agent after the write attempt: %q", got)
	}

	long := "/tmp/" + strings.Repeat("d", 5000)
	for _, method := range []string{"GET", "POST"} {
		got, _ = sendRaw(t, srv, c, method, "/files?path="+url.QueryEscape(long), "x")
		if got.Status != http.StatusBadRequest || got.Code != "invalid_path" || len(got.Message) > 300 || !strings.Contains(got.Message, "…") {
			t.Errorf("%s of a 5000-byte name: HTTP %d %s %q (%d bytes); want 400 invalid_path with the path cut short",
				method, got.Status, got.Code, got.Message, len(got.Message))
		}
	}
	got, _ = sendRaw(t, srv, c, "GET", "/files?path="+url.QueryEscape(strings.Repeat("r", 5000)), "")
	if got.Status != http.StatusBadRequest || len(got.Message) > 300 {
		t.Errorf("relative 5000-byte path: HTTP %d %q", got.Status, got.Message)
	}
}

// TestFileReadLarge: a file many times the sandbox's socket buffers (the
// agent's sendfile waits for room in a blocking socket) reads back
// byte-exact, from the overlay and from a host file (the agent's binary); a
// client that goes away mid-file leaves the agent serving: the next read and
// command work.
func TestFileReadLarge(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "bigread")
	data := make([]byte, 24<<20+3)
	rand.Read(data)
	c.writeFile("/home/user/big.bin", data)
	if got := c.readFile("/home/user/big.bin"); !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, not the %d written", len(got), len(data))
	}
	if got, want := len(c.readFile("/.stasis/agent")), c.sh("wc -c < /.stasis/agent"); fmt.Sprint(got) != want {
		t.Fatalf("the agent's binary: read %d bytes, the sandbox counts %s", got, want)
	}

	req, err := http.NewRequest("GET", srv.URL+"/files?path="+url.QueryEscape("/home/user/big.bin"), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Superserve-Sandbox-Id", c.id)
	req.Header.Set("X-Access-Token", c.token)
	tr := &http.Transport{}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // mid-file: the connection is closed
	tr.CloseIdleConnections()

	if got := c.readFile("/home/user/big.bin"); !bytes.Equal(got, data) {
		t.Fatalf("after an aborted read: read back %d bytes, not the %d written", len(got), len(data))
	}
	if got := c.sh("echo alive"); got != "alive" {
		t.Fatalf("agent after an aborted read: %q", got)
	}
}

// TestRoutingErrors: a wrong method on a known path is 405 with an Allow
// header, in the error envelope; an unknown path is 404; a huge id in the
// path is not echoed whole.
func TestRoutingErrors(t *testing.T) {
	srv := testenv.StartServer(t)
	for _, tc := range []struct {
		method, path string
		allow        []string
	}{
		{"DELETE", "/sandboxes", []string{"GET", "POST"}},
		{"PUT", "/sandboxes/some-id", []string{"GET", "PATCH", "DELETE"}},
		{"GET", "/exec", []string{"POST"}},
		{"POST", "/usage", []string{"GET"}},
		{"PATCH", "/templates/x/builds", []string{"GET", "POST"}},
	} {
		got, _ := sendRaw(t, srv, nil, tc.method, tc.path, "")
		wantAPIError(t, tc.method+" "+tc.path, got, http.StatusMethodNotAllowed, "method_not_allowed", tc.method)
		allow := got.Header.Get("Allow")
		for _, m := range tc.allow {
			if !strings.Contains(allow, m) {
				t.Errorf("%s %s: Allow %q lacks %s", tc.method, tc.path, allow, m)
			}
		}
	}
	got, _ := sendRaw(t, srv, nil, "GET", "/no/such/route", "")
	wantAPIError(t, "unknown path", got, http.StatusNotFound, "not_found", "/no/such/route")

	long := strings.Repeat("i", 5000)
	for _, path := range []string{"/sandboxes/" + long, "/templates/" + long, "/templates/x/builds/" + long, "/no/" + long} {
		got, _ := sendRaw(t, srv, nil, "GET", path, "")
		if got.Status != http.StatusNotFound || got.Code != "not_found" || len(got.Message) > 200 || strings.Contains(got.Message, long[:100]) {
			t.Errorf("GET %.30s…: HTTP %d %s %q (%d bytes); want 404 with the id cut short", path, got.Status, got.Code, got.Message, len(got.Message))
		}
	}
}

// TestUsageMetering: /usage counts saved snapshots in snapshot_bytes, and
// keeps a deleted sandbox's paused time as it keeps its active time.
func TestUsageMetering(t *testing.T) {
	srv := testenv.StartServer(t)
	usage := func() (u struct {
		Active float64 `json:"active_seconds"`
		Paused float64 `json:"paused_seconds"`
		Bytes  int64   `json:"snapshot_bytes"`
	}) {
		t.Helper()
		if err := srv.Do("GET", "/usage", nil, &u); err != nil {
			t.Fatal(err)
		}
		return u
	}
	start := time.Now()
	_, sb := createMinimal(t, srv, "metered")
	time.Sleep(time.Second)
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	var snap struct {
		ID        string `json:"id"`
		SizeBytes int64  `json:"size_bytes"`
	}
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/snapshots", map[string]string{"name": "kept"}, &snap); err != nil {
		t.Fatal(err)
	}
	var paused struct {
		Usage struct {
			Bytes int64 `json:"snapshot_bytes"`
		} `json:"usage"`
	}
	if err := srv.Do("GET", "/sandboxes/"+sb.ID, nil, &paused); err != nil {
		t.Fatal(err)
	}
	if u := usage(); snap.SizeBytes <= 0 || paused.Usage.Bytes <= 0 || u.Bytes != paused.Usage.Bytes+snap.SizeBytes {
		t.Fatalf("snapshot_bytes %d with a paused sandbox of %d bytes and a saved snapshot of %d", u.Bytes, paused.Usage.Bytes, snap.SizeBytes)
	}
	time.Sleep(2 * time.Second)
	if err := srv.Do("DELETE", "/sandboxes/"+sb.ID, nil, nil); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start).Seconds()
	u := usage()
	if u.Active < 1 || u.Paused < 2 || u.Active+u.Paused > elapsed {
		t.Fatalf("after delete: active %.3fs paused %.3fs (of %.1fs); want at least 1s and 2s", u.Active, u.Paused, elapsed)
	}
	if u.Bytes != snap.SizeBytes {
		t.Fatalf("snapshot_bytes %d after deleting the sandbox; want the saved snapshot's %d", u.Bytes, snap.SizeBytes)
	}
	if err := srv.Do("DELETE", "/snapshots/"+snap.ID, nil, nil); err != nil {
		t.Fatal(err)
	}
	if u := usage(); u.Bytes != 0 {
		t.Fatalf("snapshot_bytes %d with nothing kept", u.Bytes)
	}
}
