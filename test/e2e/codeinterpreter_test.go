package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// ciClient is run inside a stasis/code-interpreter sandbox to call its code
// interpreter server the way E2B's SDK does (through stasisd, the SDK's
// requests reach the same port): it prints the HTTP status on the first
// line, then the body.
const ciClient = `import sys, urllib.request, urllib.error
method, path = sys.argv[1], sys.argv[2]
data = open(sys.argv[3], "rb").read() if len(sys.argv) > 3 else None
req = urllib.request.Request("http://127.0.0.1:49999" + path, data=data, method=method,
                             headers={"Content-Type": "application/json"})
try:
    resp = urllib.request.urlopen(req, timeout=300)
    status, body = resp.status, resp.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
sys.stdout.write("%d\n" % status)
sys.stdout.flush()
sys.stdout.buffer.write(body)
`

// ciSandbox is a stasis/code-interpreter sandbox with ciClient installed.
type ciSandbox struct {
	*client
	calls int
}

func createCodeInterpreter(t *testing.T, srv *testenv.Server) (*ciSandbox, sandboxInfo) {
	t.Helper()
	c, sb := create(t, srv, map[string]any{"name": "ci", "from_template": "stasis/code-interpreter"})
	if sb.Template != "stasis/code-interpreter" {
		t.Fatalf("template = %q", sb.Template)
	}
	c.writeFile("/tmp/ci.py", []byte(ciClient))
	return &ciSandbox{client: c}, sb
}

// call sends one request to the code interpreter server; body (if not nil)
// is sent as JSON.
func (c *ciSandbox) call(method, path string, body any) (int, []byte) {
	c.t.Helper()
	cmd := "python3 /tmp/ci.py " + method + " " + path
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			c.t.Fatal(err)
		}
		c.calls++
		f := fmt.Sprintf("/tmp/req-%d.json", c.calls)
		c.writeFile(f, b)
		cmd += " " + f
	}
	out := c.exec(cmd)
	if out.ExitCode != 0 {
		c.t.Fatalf("%s %s: client exited %d: %s", method, path, out.ExitCode, out.Stderr)
	}
	status, rest, _ := strings.Cut(out.Stdout, "\n")
	var code int
	fmt.Sscan(status, &code)
	return code, []byte(rest)
}

// ciLine is one line of /execute's stream, with the fields the SDK reads.
type ciLine struct {
	Type           string         `json:"type"`
	Text           string         `json:"text"`
	Timestamp      string         `json:"timestamp"`
	HTML           string         `json:"html"`
	PNG            string         `json:"png"`
	Data           map[string]any `json:"data"`
	Extra          map[string]any `json:"extra"`
	IsMainResult   *bool          `json:"is_main_result"`
	Name           string         `json:"name"`
	Value          string         `json:"value"`
	Traceback      *string        `json:"traceback"`
	ExecutionCount int            `json:"execution_count"`
}

// execution is /execute's stream gathered as the SDK's Execution.
type execution struct {
	lines   []ciLine
	stdout  string
	stderr  string
	results []ciLine
	errors  []ciLine
	count   int
}

// main returns the main result's text, as the SDK's Execution.text.
func (e *execution) main() (ciLine, bool) {
	for _, r := range e.results {
		if r.IsMainResult != nil && *r.IsMainResult {
			return r, true
		}
	}
	return ciLine{}, false
}

// run posts code to /execute and checks the stream's framing: JSON lines,
// ending with end_of_execution.
func (c *ciSandbox) run(req map[string]any) *execution {
	c.t.Helper()
	status, body := c.call("POST", "/execute", req)
	if status != 200 {
		c.t.Fatalf("execute %v: HTTP %d: %s", req, status, body)
	}
	e := &execution{}
	for _, raw := range bytes.Split(bytes.TrimRight(body, "\n"), []byte("\n")) {
		var l ciLine
		if err := json.Unmarshal(raw, &l); err != nil {
			c.t.Fatalf("execute %v: line %q is not JSON: %v", req, raw, err)
		}
		e.lines = append(e.lines, l)
		switch l.Type {
		case "stdout":
			e.stdout += l.Text
			if l.Timestamp == "" {
				c.t.Errorf("stdout line without timestamp: %s", raw)
			}
		case "stderr":
			e.stderr += l.Text
		case "result":
			if l.IsMainResult == nil {
				c.t.Errorf("result without is_main_result: %s", raw)
			}
			e.results = append(e.results, l)
		case "error":
			if l.Traceback == nil {
				c.t.Errorf("error without traceback: %s", raw)
			}
			e.errors = append(e.errors, l)
		case "number_of_executions":
			e.count = l.ExecutionCount
		}
	}
	if n := len(e.lines); n == 0 || e.lines[n-1].Type != "end_of_execution" {
		c.t.Fatalf("execute %v: stream does not end with end_of_execution: %s", req, body)
	}
	return e
}

func (c *ciSandbox) code(code string) *execution {
	c.t.Helper()
	return c.run(map[string]any{"code": code})
}

// text runs code that must not fail and returns its main result's text.
func (c *ciSandbox) text(req map[string]any) string {
	c.t.Helper()
	e := c.run(req)
	if len(e.errors) > 0 {
		c.t.Fatalf("%v failed: %+v", req, e.errors[0])
	}
	r, ok := e.main()
	if !ok {
		c.t.Fatalf("%v: no main result in %+v", req, e.lines)
	}
	return r.Text
}

func isNameError(e *execution, name string) bool {
	return len(e.errors) == 1 && e.errors[0].Name == "NameError" && strings.Contains(e.errors[0].Value, "'"+name+"'")
}

// TestCodeInterpreter drives the code interpreter server of a real
// stasis/code-interpreter sandbox with the requests @e2b/code-interpreter
// sends: output, rich results, errors, state across runs, env vars.
func TestCodeInterpreter(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createCodeInterpreter(t, srv)

	if status, body := c.call("GET", "/health", nil); status != 200 || strings.TrimSpace(string(body)) != `"OK"` {
		t.Fatalf("health: %d %s", status, body)
	}

	t.Run("print streams stdout", func(t *testing.T) {
		e := c.code("print('hello from the kernel')\nimport sys; print('to stderr', file=sys.stderr)")
		if e.stdout != "hello from the kernel\n" || e.stderr != "to stderr\n" {
			t.Fatalf("stdout %q stderr %q", e.stdout, e.stderr)
		}
		if len(e.results) != 0 || len(e.errors) != 0 {
			t.Fatalf("print gave results %+v errors %+v", e.results, e.errors)
		}
		if e.count < 1 {
			t.Fatalf("execution_count %d", e.count)
		}
		if e.lines[0].Type != "number_of_executions" {
			t.Fatalf("first line %+v, want number_of_executions", e.lines[0])
		}
	})

	t.Run("variables persist across runs and counts grow", func(t *testing.T) {
		first := c.code("x = 41")
		if len(first.results) != 0 {
			t.Fatalf("an assignment gave results %+v", first.results)
		}
		second := c.run(map[string]any{"code": "x + 1"})
		if r, ok := second.main(); !ok || r.Text != "42" {
			t.Fatalf("x + 1 = %+v", second.results)
		}
		if second.count != first.count+1 {
			t.Fatalf("execution counts %d then %d", first.count, second.count)
		}
		if got := c.text(map[string]any{"code": "'a string'"}); got != "a string" {
			t.Fatalf("a string's text = %q, want it unquoted", got)
		}
	})

	t.Run("a DataFrame is a text, html and data result", func(t *testing.T) {
		e := c.code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
		r, ok := e.main()
		if !ok || len(e.errors) != 0 {
			t.Fatalf("no main result: %+v", e.lines)
		}
		if !strings.Contains(r.HTML, "<table") || !strings.Contains(r.HTML, "<td>x</td>") {
			t.Fatalf("html = %q", r.HTML)
		}
		if !strings.Contains(r.Text, "a  b") {
			t.Fatalf("text = %q", r.Text)
		}
		if got, _ := json.Marshal(r.Data); string(got) != `{"a":[1,2],"b":["x","y"]}` {
			t.Fatalf("data = %s", got)
		}
	})

	t.Run("a matplotlib figure is a png result", func(t *testing.T) {
		e := c.code("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()")
		if len(e.errors) != 0 {
			t.Fatalf("plot failed: %+v", e.errors[0])
		}
		var png []byte
		for _, r := range e.results {
			if r.PNG != "" {
				if *r.IsMainResult {
					t.Errorf("a shown figure is a display, not the main result")
				}
				var err error
				if png, err = base64.StdEncoding.DecodeString(strings.TrimSpace(r.PNG)); err != nil {
					t.Fatalf("png is not base64: %v", err)
				}
			}
		}
		if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 1000 {
			t.Fatalf("no PNG image in %+v", e.results)
		}
	})

	t.Run("an exception is an error with a traceback", func(t *testing.T) {
		e := c.code("def f():\n    return 1 / 0\nprint('before')\nf()")
		if e.stdout != "before\n" {
			t.Fatalf("stdout %q", e.stdout)
		}
		if len(e.errors) != 1 {
			t.Fatalf("errors %+v", e.errors)
		}
		er := e.errors[0]
		if er.Name != "ZeroDivisionError" || er.Value != "division by zero" {
			t.Fatalf("error %s: %s", er.Name, er.Value)
		}
		if !strings.Contains(*er.Traceback, "return 1 / 0") || !strings.Contains(*er.Traceback, "ZeroDivisionError") {
			t.Fatalf("traceback %q", *er.Traceback)
		}
		if strings.Contains(*er.Traceback, "\x1b[") {
			t.Fatalf("traceback has terminal colour codes: %q", *er.Traceback)
		}
		// The kernel carries on.
		if got := c.text(map[string]any{"code": "x"}); got != "41" {
			t.Fatalf("x after an error = %q", got)
		}
	})

	t.Run("env_vars hold for one run", func(t *testing.T) {
		got := c.text(map[string]any{"code": "import os; os.environ.get('CI_GREETING')", "env_vars": map[string]string{"CI_GREETING": "hi"}})
		if got != "hi" {
			t.Fatalf("env var in the run = %q", got)
		}
		if got := c.text(map[string]any{"code": "str(os.environ.get('CI_GREETING'))"}); got != "None" {
			t.Fatalf("env var after the run = %q", got)
		}
	})

	t.Run("a client that goes away interrupts its code", func(t *testing.T) {
		c.writeFile("/tmp/loop.json", []byte(`{"code":"import time\nfor i in range(3000):\n    time.sleep(0.1)\nafter_loop = True"}`))
		// The client gives up after 3 s, as the SDK does at its timeout.
		if r := c.exec("timeout 3 python3 /tmp/ci.py POST /execute /tmp/loop.json"); r.ExitCode != 124 {
			t.Fatalf("client exit %d, want 124 (timed out): %s", r.ExitCode, r.Stderr)
		}
		if got := c.text(map[string]any{"code": "str('after_loop' in globals())"}); got != "False" {
			t.Fatalf("the abandoned loop ran to its end: after_loop in globals = %q", got)
		}
	})

	t.Run("a kernel that dies is an error and comes back", func(t *testing.T) {
		e := c.code("import os\nos._exit(1)")
		if len(e.errors) != 1 || e.errors[0].Name != "DeadKernelError" {
			t.Fatalf("errors %+v", e.errors)
		}
		if got := c.text(map[string]any{"code": "str('x' in globals())"}); got != "False" {
			t.Fatalf("state after the kernel died: x in globals = %q", got)
		}
		c.code("x = 41")
	})

	t.Run("bad requests are refused", func(t *testing.T) {
		for _, tc := range []struct {
			req  any
			want int
		}{
			{map[string]any{}, 400},                                                     // no code
			{map[string]any{"code": 1}, 400},                                            // not a string
			{map[string]any{"code": "1", "language": "cobol"}, 400},                     // unsupported
			{map[string]any{"code": "1", "context_id": "x", "language": "python"}, 400}, // both
			{map[string]any{"code": "1", "env_vars": map[string]any{"A": 1}}, 400},
			{map[string]any{"code": "1", "context_id": "no-such-context"}, 404},
		} {
			status, body := c.call("POST", "/execute", tc.req)
			var eb struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if status != tc.want || json.Unmarshal(body, &eb) != nil || eb.Error.Message == "" {
				t.Errorf("execute %v: %d %s, want %d with an error body", tc.req, status, body, tc.want)
			}
		}
		// Nothing ran: x is unchanged.
		if got := c.text(map[string]any{"code": "x"}); got != "41" {
			t.Fatalf("x = %q", got)
		}
	})
}

type ciContext struct {
	ID       string `json:"id"`
	Language string `json:"language"`
	Cwd      string `json:"cwd"`
}

// TestCodeInterpreterContexts: contexts have their own kernel state, can be
// listed, restarted (state gone) and removed, and all of it survives a pause
// to disk and a resume.
func TestCodeInterpreterContexts(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := createCodeInterpreter(t, srv)

	newContext := func(body map[string]any) ciContext {
		t.Helper()
		status, data := c.call("POST", "/contexts", body)
		var ctx ciContext
		if status != 200 || json.Unmarshal(data, &ctx) != nil || ctx.ID == "" {
			t.Fatalf("create context %v: %d %s", body, status, data)
		}
		return ctx
	}
	a := newContext(map[string]any{})
	if a.Language != "python" || a.Cwd != "/home/user" {
		t.Fatalf("default context fields %+v", a)
	}
	b := newContext(map[string]any{"language": "python", "cwd": "/tmp"})
	if b.Cwd != "/tmp" {
		t.Fatalf("context cwd %+v", b)
	}
	if status, body := c.call("POST", "/contexts", map[string]any{"cwd": "/no/such/dir"}); status != 400 {
		t.Fatalf("context in a missing dir: %d %s", status, body)
	}
	if got := c.text(map[string]any{"code": "import os; os.getcwd()", "context_id": b.ID}); got != "/tmp" {
		t.Fatalf("cwd in context b = %q", got)
	}

	// Separate state: each context sees only its own variables.
	c.run(map[string]any{"code": "shared = 'default'"})
	c.run(map[string]any{"code": "shared = 'a'; only_a = 1", "context_id": a.ID})
	if got := c.text(map[string]any{"code": "shared", "context_id": a.ID}); got != "a" {
		t.Fatalf("shared in a = %q", got)
	}
	if got := c.text(map[string]any{"code": "shared"}); got != "default" {
		t.Fatalf("shared in the default context = %q", got)
	}
	if got := c.text(map[string]any{"code": "shared", "language": "python"}); got != "default" {
		t.Fatalf("language python is not the default context: %q", got)
	}
	if e := c.run(map[string]any{"code": "only_a", "context_id": b.ID}); !isNameError(e, "only_a") {
		t.Fatalf("context b sees a's variable: %+v", e.lines)
	}

	status, data := c.call("GET", "/contexts", nil)
	var list []ciContext
	if status != 200 || json.Unmarshal(data, &list) != nil {
		t.Fatalf("list contexts: %d %s", status, data)
	}
	ids := map[string]bool{}
	for _, ctx := range list {
		ids[ctx.ID] = true
	}
	if len(list) != 3 || !ids[a.ID] || !ids[b.ID] {
		t.Fatalf("contexts %+v, want the default one, %s and %s", list, a.ID, b.ID)
	}

	// Kernel state survives a pause to disk and a resume.
	c.run(map[string]any{"code": "counter = 123", "context_id": b.ID})
	pause(t, srv, sb.ID)
	waitPauseState(t, srv, sb.ID, true, false)
	resume(t, srv, c.client)
	if got := c.text(map[string]any{"code": "counter + 1", "context_id": b.ID}); got != "124" {
		t.Fatalf("counter after resume = %q", got)
	}
	if got := c.text(map[string]any{"code": "shared"}); got != "default" {
		t.Fatalf("default context after resume = %q", got)
	}
	if got := c.text(map[string]any{"code": "shared + str(only_a)", "context_id": a.ID}); got != "a1" {
		t.Fatalf("context a after resume = %q", got)
	}
	// New kernels start after a resume too.
	d := newContext(map[string]any{})
	if got := c.text(map[string]any{"code": "6 * 7", "context_id": d.ID}); got != "42" {
		t.Fatalf("new context after resume = %q", got)
	}

	// Restart: a fresh kernel, same context.
	if status, body := c.call("POST", "/contexts/"+a.ID+"/restart", nil); status/100 != 2 {
		t.Fatalf("restart: %d %s", status, body)
	}
	if e := c.run(map[string]any{"code": "only_a", "context_id": a.ID}); !isNameError(e, "only_a") {
		t.Fatalf("variable survived a restart: %+v", e.lines)
	}
	if status, _ := c.call("POST", "/contexts/no-such-context/restart", nil); status != 404 {
		t.Fatalf("restart of a missing context: %d", status)
	}

	// Remove.
	if status, body := c.call("DELETE", "/contexts/"+b.ID, nil); status/100 != 2 {
		t.Fatalf("remove: %d %s", status, body)
	}
	if status, _ := c.call("DELETE", "/contexts/"+b.ID, nil); status != 404 {
		t.Fatalf("second remove: %d, want 404", status)
	}
	if status, _ := c.call("POST", "/execute", map[string]any{"code": "1", "context_id": b.ID}); status != 404 {
		t.Fatalf("execute in a removed context: %d, want 404", status)
	}
	_, data = c.call("GET", "/contexts", nil)
	list = nil
	json.Unmarshal(data, &list)
	for _, ctx := range list {
		if ctx.ID == b.ID {
			t.Fatalf("removed context still listed: %s", data)
		}
	}
	if len(list) != 3 {
		t.Fatalf("contexts after remove: %s", data)
	}
}
