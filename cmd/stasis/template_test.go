package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
)

func TestParseTemplateFile(t *testing.T) {
	in := `
name: web
from: stasis/minimal
vcpu: 2
memory_mib: 1024
steps:
  - run: |
      mkdir -p /srv
      echo hi > /srv/index.html
  - env: {key: GREETING, value: "hi there"}
  - env: MODE=a=b
  - workdir: /srv
  - user: app
  - user: {name: admin, sudo: true}
start_cmd: httpd -f -p 8080 -h /srv
ready_cmd: wget -q -O - http://127.0.0.1:8080/
`
	spec, err := parseTemplateFile(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := stasis.TemplateSpec{
		Name: "web", From: "stasis/minimal", VCPU: 2, MemoryMiB: 1024,
		Steps: []stasis.BuildStep{
			stasis.RunStep("mkdir -p /srv\necho hi > /srv/index.html"),
			stasis.EnvStep("GREETING", "hi there"),
			stasis.EnvStep("MODE", "a=b"),
			stasis.WorkdirStep("/srv"),
			stasis.UserStep("app", false),
			stasis.UserStep("admin", true),
		},
		StartCmd: "httpd -f -p 8080 -h /srv", ReadyCmd: "wget -q -O - http://127.0.0.1:8080/",
	}
	if !reflect.DeepEqual(spec, want) {
		t.Fatalf("got  %+v\nwant %+v", spec, want)
	}
	// JSON is YAML too.
	spec, err = parseTemplateFile(strings.NewReader(`{"name":"j","from":"stasis/base","steps":[{"run":"true"}]}`))
	if err != nil || spec.Name != "j" || len(spec.Steps) != 1 {
		t.Fatalf("json: %+v %v", spec, err)
	}
}

func TestParseTemplateFileErrors(t *testing.T) {
	cases := map[string]string{
		"name: x\nfrom: stasis/minimal\nstartcmd: y\n":                 `line 3: unknown field "startcmd"; valid fields are: name, from, vcpu, memory_mib, disk_mib, steps, start_cmd, ready_cmd`,
		"name: x\nform: stasis/minimal\n":                              `line 2: unknown field "form"; valid fields are: name, from,`,
		"- name: x\n":                                                  "a template file is a mapping of fields (name, from,",
		"name: x\nsteps: [{run: a}]\n":                                 "\"from\" is required",
		"name: x\nfrom: a\nsteps:\n  - run: a\n    workdir: /b\n":      "line 4: a step must have exactly one",
		"name: x\nfrom: a\nsteps:\n  - workdir: rel\n":                 "absolute path",
		"name: x\nfrom: a\nsteps:\n  - copy: a\n":                      "unknown step \"copy\"",
		"name: x\nfrom: a\nsteps:\n  - env: NOEQUALS\n":                "KEY=VALUE",
		"name: x\nfrom: a\nsteps:\n  - env: {key: A, val: b}\n":        "KEY=VALUE",
		"name: x\nfrom: a\nsteps:\n  - run: [a, b]\n":                  "run must be a string",
		"name: x\nfrom: a\nsteps:\n  - user: {name: u, sudo: maybe}\n": "user wants",
		"name: x\nfrom: a\nmemory_mib: -5\n":                           "negative",
		"   \n":                                                        "empty",
		"name: x\nfrom: a\nsteps:\n  - run: \"\"\n":                    "empty run",
		"name: [x\n": "line 1",
		"name: x\nfrom: a\nsteps:\n  - run: a\n  - workdir: /x\n  - {}\n":            "line 6",
		"name: x\nfrom: a\nvcpu: two\n":                                              "line 3: cannot unmarshal the string `two` into int",
		"name: x\nfrom: a\nsteps:\n  - user: \"\"\n":                                 "empty user",
		"name: x\nfrom: a\nsteps:\n  - env: {key: A, value: b}\n  - run: null\n":     "run must be a string",
		"name: x\nfrom: stasis/minimal\nsteps: {run: a}\n":                           "line 3: cannot unmarshal a mapping into a list of steps",
		"name: x\nfrom: stasis/minimal\nready_cmd: {a: b}\n":                         "line 3: cannot unmarshal a mapping into string",
		"name: x\nfrom: stasis/minimal\nsteps:\n  - run: a\n  - \"workdir: /srv\"\n": "line 5",
	}
	for in, want := range cases {
		_, err := parseTemplateFile(strings.NewReader(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error with %q", in, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "main.") {
			t.Errorf("%q: error names a Go type: %v", in, err)
		}
	}
}

func TestLogPrinter(t *testing.T) {
	var b strings.Builder
	lp := &logPrinter{w: &b}
	for _, ev := range []stasis.BuildLogEvent{
		{Stream: "system", Text: "build started\n"},
		{Stream: "stdout", Text: "partial"},
		{Stream: "system", Text: "two\nlines\n"},
		{Stream: "stderr", Text: "err\n"},
		{Stream: "stdout", Text: "tail"},
	} {
		lp.event(ev)
	}
	lp.endLine()
	want := "==> build started\npartial\n==> two\n    lines\nerr\ntail\n"
	if b.String() != want {
		t.Fatalf("got %q, want %q", b.String(), want)
	}
}

// fakeServer plays stasisd's template and fork endpoints.
type fakeServer struct {
	mu        sync.Mutex
	failWith  string // error_message of the build, "" for success
	buildGets int
	created   map[string]any
}

func (f *fakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	reply := func(status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(v)
	}
	tpl := func(status string) map[string]any {
		return map[string]any{"id": "t-1", "name": "web", "team_id": "x", "status": status, "vcpu": 1,
			"memory_mib": 512, "created_at": "2026-11-29T10:00:00Z", "latest_build_id": "b-1", "size_bytes": 3 << 20}
	}
	final := "ready"
	if f.failWith != "" {
		final = "failed"
	}
	switch {
	case r.Method == "POST" && r.URL.Path == "/templates":
		json.NewDecoder(r.Body).Decode(&f.created)
		t := tpl("pending")
		t["build_id"] = "b-1"
		reply(202, t)
	case r.Method == "GET" && r.URL.Path == "/templates/t-1":
		reply(200, tpl(final))
	case r.Method == "GET" && r.URL.Path == "/templates/t-1/builds/b-1":
		f.buildGets++
		status := "building"
		if f.buildGets > 1 {
			status = final
		}
		reply(200, map[string]any{"id": "b-1", "template_id": "t-1", "status": status, "build_spec_hash": "h",
			"created_at": "2026-11-29T10:00:00Z", "error_message": f.failWith})
	case r.Method == "GET" && r.URL.Path == "/templates/t-1/builds/b-1/logs":
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		ev := func(stream, text string, extra ...any) {
			m := map[string]any{"timestamp": time.Now().UTC(), "stream": stream, "text": text}
			for i := 0; i+1 < len(extra); i += 2 {
				m[extra[i].(string)] = extra[i+1]
			}
			b, _ := json.Marshal(m)
			fmt.Fprintf(w, "data: %s\n\n", b)
			w.(http.Flusher).Flush()
		}
		ev("system", "build b-1 of template web started\n")
		ev("stdout", "step-output-visible\n")
		if f.failWith != "" {
			ev("stderr", f.failWith+"\n")
		}
		ev("system", "build "+final+"\n", "finished", true, "status", final)
	case r.Method == "GET" && r.URL.Path == "/sandboxes":
		var list []any
		for _, id := range []string{"sb-1", "sb-active", "abc-1", "abc-2"} {
			list = append(list, map[string]any{"id": id, "status": "active", "created_at": "2026-11-29T10:00:00Z"})
		}
		reply(200, list)
	case r.Method == "GET" && strings.HasPrefix(r.URL.Path, "/sandboxes/"):
		reply(200, map[string]any{"id": strings.TrimPrefix(r.URL.Path, "/sandboxes/"), "status": "active", "created_at": "2026-11-29T10:00:00Z"})
	case r.Method == "POST" && r.URL.Path == "/sandboxes/sb-1/fork":
		var body struct{ Count int }
		json.NewDecoder(r.Body).Decode(&body)
		var list []any
		for i := range body.Count {
			list = append(list, map[string]any{"id": fmt.Sprintf("fork-%d", i), "status": "active",
				"created_at": "2026-11-29T10:00:00Z", "access_token": "tok"})
		}
		reply(201, map[string]any{"sandboxes": list})
	case r.Method == "POST" && r.URL.Path == "/sandboxes/sb-active/fork":
		reply(409, map[string]any{"error": map[string]any{"code": "invalid_state",
			"message": "sandbox sb-active is active; pause it first, forks start from its snapshot"}})
	default:
		w.WriteHeader(404)
	}
}

// runApp runs the CLI in-process and returns its exit status and output.
func runApp(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	dir := t.TempDir()
	open := func(name string) *os.File {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	in, out, errOut := open("in"), open("out"), open("err")
	io.WriteString(in, stdin)
	in.Seek(0, 0)
	defer in.Close()
	defer out.Close()
	defer errOut.Close()
	a := &app{stdin: in, stdout: out, stderr: errOut}
	code := a.run(args)
	o, _ := os.ReadFile(out.Name())
	e, _ := os.ReadFile(errOut.Name())
	return code, string(o), string(e)
}

const webYAML = `name: web
from: stasis/minimal
steps:
  - run: echo step-output-visible
start_cmd: httpd -f -p 8080 -h /tmp
`

func TestTemplateCreateFollowsLog(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	fs := &fakeServer{}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "template.yaml")
	os.WriteFile(file, []byte(webYAML), 0o644)

	code, out, errOut := runApp(t, "", "--url", srv.URL, "--api-key", "k", "template", "create", "-f", file)
	if code != 0 || out != "t-1\n" {
		t.Fatalf("exit %d, stdout %q, stderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{"==> build b-1 of template web started\n", "step-output-visible\n", "==> build ready\n", "template web is ready; create sandboxes with 'stasis create --template web'"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	spec := fs.created["build_spec"].(map[string]any)
	if fs.created["name"] != "web" || spec["from"] != "stasis/minimal" || spec["start_cmd"] != "httpd -f -p 8080 -h /tmp" {
		t.Errorf("request %v", fs.created)
	}

	// From stdin, with --name, --no-wait and --json.
	code, out, errOut = runApp(t, webYAML, "--url", srv.URL, "--api-key", "k", "template", "create", "-f", "-", "--name", "other", "--no-wait", "--json")
	var tpl map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &tpl) != nil || tpl["latest_build_id"] != "b-1" || fs.created["name"] != "other" {
		t.Fatalf("exit %d, stdout %q, stderr %s, request %v", code, out, errOut, fs.created)
	}
}

func TestTemplateCreateFailure(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	fs := &fakeServer{failWith: "step_failed: step 1 (run) exited with status 7"}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	code, out, errOut := runApp(t, webYAML, "--url", srv.URL, "--api-key", "k", "template", "create", "-f", "-")
	if code != 1 || out != "" || !strings.Contains(errOut, "build b-1 failed: step_failed: step 1 (run) exited with status 7") ||
		!strings.Contains(errOut, "step-output-visible") {
		t.Fatalf("exit %d, stdout %q, stderr:\n%s", code, out, errOut)
	}
	// A bad file fails before any request.
	code, _, errOut = runApp(t, "name: x\n", "--url", srv.URL, "--api-key", "k", "template", "create", "-f", "-")
	if code != 1 || !strings.Contains(errOut, `"from" is required`) {
		t.Fatalf("exit %d, stderr %s", code, errOut)
	}
	if code, _, _ := runApp(t, "", "--url", srv.URL, "--api-key", "k", "template", "create"); code != 2 {
		t.Fatalf("no -f: exit %d", code)
	}
}

func TestForkCommand(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	srv := httptest.NewServer(&fakeServer{})
	defer srv.Close()
	code, out, errOut := runApp(t, "", "--url", srv.URL, "--api-key", "k", "fork", "sb-1", "-n", "3")
	if code != 0 || out != "fork-0\nfork-1\nfork-2\n" {
		t.Fatalf("exit %d, stdout %q, stderr %s", code, out, errOut)
	}
	code, out, errOut = runApp(t, "", "--url", srv.URL, "--api-key", "k", "fork", "--json", "sb-1")
	var list []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0]["id"] != "fork-0" {
		t.Fatalf("exit %d, stdout %q, stderr %s", code, out, errOut)
	}
	code, _, errOut = runApp(t, "", "--url", srv.URL, "--api-key", "k", "fork", "sb-active")
	if code != 1 || !strings.Contains(errOut, "pause it first") || !strings.Contains(errOut, "--pause") {
		t.Fatalf("exit %d, stderr %s", code, errOut)
	}
	if code, _, _ := runApp(t, "", "--url", srv.URL, "--api-key", "k", "fork", "sb-1", "-n", "0"); code != 2 {
		t.Fatalf("-n 0: exit %d", code)
	}
}

func TestHelpForGroups(t *testing.T) {
	code, out, _ := runApp(t, "", "help")
	if code != 0 || !strings.Contains(out, "template ") || !strings.Contains(out, "    create ") || !strings.Contains(out, "fork ") {
		t.Fatalf("help: %d %s", code, out)
	}
	code, out, _ = runApp(t, "", "help", "template")
	if code != 0 || !strings.Contains(out, "stasis template <command>") || !strings.Contains(out, "rebuild") {
		t.Fatalf("help template: %d %s", code, out)
	}
	code, out, _ = runApp(t, "", "help", "template", "create")
	if code != 0 || !strings.Contains(out, "Usage: stasis template create -f FILE") || !strings.Contains(out, "start_cmd:") ||
		!strings.Contains(out, "\n  -f FILE ") || !strings.Contains(out, "\n  --name NAME ") {
		t.Fatalf("help template create: %d %s", code, out)
	}
	if code, _, errOut := runApp(t, "", "template", "nope"); code != 2 || !strings.Contains(errOut, `unknown command "template nope"`) {
		t.Fatalf("unknown sub: %d %s", code, errOut)
	}
	if code, _, _ := runApp(t, "", "template"); code != 2 {
		t.Fatalf("bare group: %d", code)
	}
}

// TestIDPrefixes: a sandbox may be named by a unique prefix of its id; an
// ambiguous prefix lists the candidates, an unknown one is not found.
func TestIDPrefixes(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	srv := httptest.NewServer(&fakeServer{})
	defer srv.Close()
	run := func(args ...string) (int, string, string) {
		return runApp(t, "", append([]string{"--url", srv.URL, "--api-key", "k"}, args...)...)
	}
	if code, out, errOut := run("info", "--json", "sb-a"); code != 0 || !strings.Contains(out, `"id": "sb-active"`) {
		t.Fatalf("unique prefix: %d %s %s", code, out, errOut)
	}
	if code, out, errOut := run("fork", "sb-1"); code != 0 || out != "fork-0\n" {
		t.Fatalf("full id that is also a prefix of nothing else: %d %s %s", code, out, errOut)
	}
	code, _, errOut := run("info", "abc")
	if code != 1 || !strings.Contains(errOut, `sandbox id prefix "abc" is ambiguous: it matches abc-1, abc-2`) {
		t.Fatalf("ambiguous: %d %s", code, errOut)
	}
	if code, _, errOut := run("info", "zzz"); code != 1 || errOut != "stasis: sandbox zzz not found\n" {
		t.Fatalf("unknown: %d %q", code, errOut)
	}
	// Commands taking several ids resolve each and report each failure.
	code, _, errOut = run("kill", "zzz", "abc")
	if code != 1 || !strings.Contains(errOut, "sandbox zzz not found") || !strings.Contains(errOut, "ambiguous") {
		t.Fatalf("kill: %d %s", code, errOut)
	}
}

// TestHelpSpelling: --help goes to stdout and exits 0, and the flag list
// spells flags as the usage line does.
func TestHelpSpelling(t *testing.T) {
	code, out, errOut := runApp(t, "", "create", "--help")
	if code != 0 || errOut != "" {
		t.Fatalf("create --help: %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"Usage: stasis create [--name NAME]", "\n  --name NAME ", "\n  --timeout D ", "active time",
		"\n  --metadata k=v ", "\n  --json ", "Connection flags", "\n  --api-key KEY "} {
		if !strings.Contains(out, want) {
			t.Errorf("create --help lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\n  -name") || strings.Contains(out, "inactivity") {
		t.Errorf("create --help:\n%s", out)
	}
	if code, out, _ := runApp(t, "", "fork", "-h"); code != 0 || !strings.Contains(out, "\n  -n N ") || !strings.Contains(out, "(default 1)") {
		t.Errorf("fork -h: %d\n%s", code, out)
	}
	if code, out, errOut := runApp(t, "", "--help"); code != 0 || !strings.Contains(out, "Commands:") || errOut != "" {
		t.Errorf("stasis --help: %d %q %q", code, out, errOut)
	}
	// A wrong flag is an error: stderr, exit 2.
	if code, out, errOut := runApp(t, "", "create", "--nope"); code != 2 || out != "" || !strings.Contains(errOut, "Usage: stasis create") {
		t.Errorf("create --nope: %d %q %q", code, out, errOut)
	}
}
