package stasis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func templateJSONFor(id, name, status string) map[string]any {
	return map[string]any{
		"id": id, "name": name, "team_id": "team-1", "status": status, "vcpu": 1, "memory_mib": 512,
		"disk_mib": 0, "created_at": "2026-11-29T10:00:00Z", "latest_build_id": "b-latest",
	}
}

func buildJSONFor(id, status, errMsg string) map[string]any {
	b := map[string]any{
		"id": id, "template_id": "t-1", "status": status, "build_spec_hash": "abc",
		"created_at": "2026-11-29T10:00:00Z",
	}
	if errMsg != "" {
		b["error_message"] = errMsg
	}
	return b
}

func TestCreateTemplateWire(t *testing.T) {
	var got map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/templates" || r.Header.Get("X-API-Key") != "test-key" {
			t.Errorf("%s %s", r.Method, r.URL.Path)
		}
		json.NewDecoder(r.Body).Decode(&got)
		resp := templateJSONFor("t-1", "web", "pending")
		delete(resp, "latest_build_id")
		resp["build_id"] = "b-1"
		writeJSON(w, http.StatusAccepted, resp)
	}))
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	tpl, err := c.CreateTemplate(context.Background(), TemplateSpec{
		Name: "web", From: "stasis/minimal", MemoryMiB: 1024,
		Steps: []BuildStep{
			RunStep("echo hi"), EnvStep("K", "v"), WorkdirStep("/srv"), UserStep("app", true),
			{User: &StepUser{Name: "plain"}},
		},
		StartCmd: "httpd -f", ReadyCmd: "wget -q -O - http://127.0.0.1:8080/",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"name":       "web",
		"memory_mib": 1024.0,
		"build_spec": map[string]any{
			"from": "stasis/minimal",
			"steps": []any{
				map[string]any{"run": "echo hi"},
				map[string]any{"env": map[string]any{"key": "K", "value": "v"}},
				map[string]any{"workdir": "/srv"},
				map[string]any{"user": map[string]any{"name": "app", "sudo": true}},
				map[string]any{"user": map[string]any{"name": "plain"}},
			},
			"start_cmd": "httpd -f",
			"ready_cmd": "wget -q -O - http://127.0.0.1:8080/",
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("body:\n got %v\nwant %v", got, want)
	}
	if tpl.ID != "t-1" || tpl.Name != "web" || tpl.Status != TemplatePending || tpl.LatestBuildID != "b-1" ||
		tpl.TeamID != "team-1" || tpl.MemoryMiB != 512 || !tpl.BuiltAt.IsZero() {
		t.Errorf("template %+v", tpl)
	}
	// The Template marshals to the wire shape.
	b, _ := json.Marshal(tpl)
	if s := string(b); !strings.Contains(s, `"latest_build_id":"b-1"`) || strings.Contains(s, "built_at") {
		t.Errorf("json %s", s)
	}
}

func TestCreateTemplateValidates(t *testing.T) {
	c, _ := newTestClient(t, "http://127.0.0.1:1")
	ctx := context.Background()
	for _, spec := range []TemplateSpec{
		{From: "stasis/minimal"},
		{Name: "x"},
		{Name: "x", From: "stasis/minimal", Steps: []BuildStep{{}}},
		{Name: "x", From: "stasis/minimal", Steps: []BuildStep{{Run: "a", Workdir: "/b"}}},
		{Name: "x", From: "stasis/minimal", VCPU: -1},
	} {
		if _, err := c.CreateTemplate(ctx, spec); !errors.Is(err, ErrValidation) {
			t.Errorf("%+v: %v", spec, err)
		}
	}
}

func TestBuildStepJSONRoundTrip(t *testing.T) {
	steps := []BuildStep{RunStep("make"), EnvStep("A", ""), WorkdirStep("/w"), UserStep("u", false)}
	b, err := json.Marshal(steps)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `[{"run":"make"},{"env":{"key":"A","value":""}},{"workdir":"/w"},{"user":{"name":"u"}}]` {
		t.Fatalf("%s", b)
	}
	var back []BuildStep
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, steps) {
		t.Fatalf("%+v %v", back, err)
	}
}

func TestParseBuildError(t *testing.T) {
	cases := []struct{ in, code, msg string }{
		{"step_failed: step 2 (run) exited with status 7", "step_failed", "step 2 (run) exited with status 7"},
		{"image_pull_failed:   no such image\nsecond line", "image_pull_failed", "no such image\nsecond line"},
		{"something odd happened", "build_failed", "something odd happened"},
		{"ready_cmd_failed:", "build_failed", "ready_cmd_failed:"},
		{"", "build_failed", "template build failed"},
		{"not a code: x", "build_failed", "not a code: x"},
	}
	for _, tc := range cases {
		code, msg := ParseBuildError(tc.in)
		if code != tc.code || msg != tc.msg {
			t.Errorf("%q: got %q %q, want %q %q", tc.in, code, msg, tc.code, tc.msg)
		}
	}
}

// buildServer plays a template whose build goes through statuses, with a
// log served as SSE.
type buildServer struct {
	t        *testing.T
	mu       sync.Mutex
	statuses []string // returned by successive GET build calls; the last repeats
	errMsg   string
	log      []string // SSE chunks
	polls    int
}

func (s *buildServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case r.Method == "GET" && r.URL.Path == "/templates/t-1":
		status := "building"
		if last := s.statuses[len(s.statuses)-1]; last == "ready" && s.polls >= len(s.statuses) {
			status = "ready"
		}
		writeJSON(w, 200, templateJSONFor("t-1", "web", status))
	case r.Method == "GET" && r.URL.Path == "/templates/t-1/builds/b-latest":
		st := s.statuses[min(s.polls, len(s.statuses)-1)]
		s.polls++
		msg := ""
		if st == "failed" {
			msg = s.errMsg
		}
		writeJSON(w, 200, buildJSONFor("b-latest", st, msg))
	case r.Method == "GET" && r.URL.Path == "/templates/t-1/builds/b-latest/logs":
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		chunks := s.log
		s.mu.Unlock()
		for _, c := range chunks {
			io.WriteString(w, c)
			w.(http.Flusher).Flush()
			time.Sleep(5 * time.Millisecond)
		}
		s.mu.Lock()
	default:
		s.t.Errorf("unexpected %s %s", r.Method, r.URL)
		w.WriteHeader(404)
	}
}

func sseEvent(ev map[string]any) string {
	b, _ := json.Marshal(ev)
	return "data: " + string(b) + "\n\n"
}

func TestWaitUntilReadyBuildError(t *testing.T) {
	bs := &buildServer{t: t, statuses: []string{"pending", "building", "failed"},
		errMsg: "step_failed: step 1 (run: exit 7) exited with status 7"}
	srv := httptest.NewServer(bs)
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	tpl := &Template{ID: "t-1", Name: "web", LatestBuildID: "stale", c: c}
	_, err := tpl.WaitUntilReady(context.Background(), &WaitOptions{PollInterval: time.Millisecond})
	var be *BuildError
	if !errors.As(err, &be) || !errors.Is(err, ErrBuildFailed) {
		t.Fatalf("err = %v", err)
	}
	want := BuildError{Code: "step_failed", Message: "step 1 (run: exit 7) exited with status 7", BuildID: "b-latest", TemplateID: "t-1"}
	if *be != want {
		t.Fatalf("got %+v, want %+v", *be, want)
	}
	if !strings.Contains(err.Error(), "step_failed") {
		t.Errorf("message %q", err)
	}
	if bs.polls != 3 {
		t.Errorf("polled %d times", bs.polls)
	}
}

func TestWaitUntilReadyCancelled(t *testing.T) {
	bs := &buildServer{t: t, statuses: []string{"cancelled"}}
	srv := httptest.NewServer(bs)
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	tpl := &Template{ID: "t-1", c: c}
	_, err := tpl.WaitUntilReady(context.Background(), &WaitOptions{BuildID: "b-latest"})
	var be *BuildError
	if !errors.As(err, &be) || be.Code != BuildCodeCancelled {
		t.Fatalf("err = %v", err)
	}
}

func TestWaitUntilReadyStreamsLog(t *testing.T) {
	bs := &buildServer{t: t, statuses: []string{"building", "ready"}}
	ts := "2026-11-29T10:00:00Z"
	full := sseEvent(map[string]any{"timestamp": ts, "stream": "system", "text": "build started\n"}) +
		sseEvent(map[string]any{"timestamp": ts, "stream": "stdout", "text": "hello "}) +
		sseEvent(map[string]any{"timestamp": ts, "stream": "stderr", "text": "warn\n"}) +
		": keep-alive comment\n\n" +
		sseEvent(map[string]any{"timestamp": ts, "stream": "stdout", "text": "world\n"}) +
		sseEvent(map[string]any{"timestamp": ts, "stream": "system", "text": "build ready\n", "finished": true, "status": "ready"})
	// Split the stream at awkward places.
	for i := 0; i < len(full); i += 7 {
		bs.log = append(bs.log, full[i:min(i+7, len(full))])
	}
	srv := httptest.NewServer(bs)
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	tpl := &Template{ID: "t-1", c: c}
	var events []BuildLogEvent
	fresh, err := tpl.WaitUntilReady(context.Background(), &WaitOptions{
		PollInterval: time.Hour, // only the log's end may wake the poll
		OnLog:        func(ev BuildLogEvent) { events = append(events, ev) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Status != TemplateReady || fresh.c != c {
		t.Errorf("fresh template %+v", fresh)
	}
	var text strings.Builder
	for _, ev := range events {
		text.WriteString(ev.Stream + ":" + ev.Text)
	}
	if got := text.String(); got != "system:build started\nstdout:hello stderr:warn\nstdout:world\nsystem:build ready\n" {
		t.Errorf("log %q", got)
	}
	if last := events[len(events)-1]; !last.Finished || last.Status != BuildReady || last.Timestamp.IsZero() {
		t.Errorf("last event %+v", last)
	}
}

func TestFollowLogsEndsEarly(t *testing.T) {
	bs := &buildServer{t: t, statuses: []string{"building"},
		log: []string{sseEvent(map[string]any{"timestamp": "2026-11-29T10:00:00Z", "stream": "stdout", "text": "x"})}}
	srv := httptest.NewServer(bs)
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	tpl := &Template{ID: "t-1", c: c}
	n := 0
	err := tpl.FollowLogs(context.Background(), "", func(BuildLogEvent) { n++ })
	if err == nil || !strings.Contains(err.Error(), "ended before the build finished") || n != 1 {
		t.Fatalf("err %v, %d events", err, n)
	}
}

func TestTemplateCallsWire(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.RequestURI())
		mu.Unlock()
		switch {
		case r.Method == "GET" && r.URL.Path == "/templates":
			writeJSON(w, 200, []any{templateJSONFor("t-1", "web", "ready"), templateJSONFor("t-2", "web2", "failed")})
		case r.Method == "DELETE" && strings.Contains(r.URL.Path, "gone"):
			writeErr(w, 404, "not_found", "template gone not found")
		case r.Method == "DELETE" && r.URL.Path == "/templates/t-1/builds/b-9":
			writeErr(w, 404, "not_found", "no build")
		case r.Method == "DELETE":
			w.WriteHeader(204)
		case r.Method == "POST" && r.URL.Path == "/templates/t-1/builds":
			writeJSON(w, 202, buildJSONFor("b-2", "pending", ""))
		case r.Method == "GET" && r.URL.Path == "/templates/t-1/builds":
			writeJSON(w, 200, []any{buildJSONFor("b-2", "failed", "snapshot_failed: disk full")})
		case r.Method == "GET" && r.URL.Path == "/templates/t-1/builds/b-2":
			writeJSON(w, 200, buildJSONFor("b-2", "ready", ""))
		case r.Method == "GET" && r.URL.Path == "/templates/missing":
			writeErr(w, 404, "not_found", "template missing not found")
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL)
		}
	}))
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	ctx := context.Background()
	list, err := c.ListTemplates(ctx, "we b")
	if err != nil || len(list) != 2 || list[1].Status != TemplateFailed {
		t.Fatalf("list %+v %v", list, err)
	}
	tpl := list[0]
	if err := c.DeleteTemplate(ctx, "gone"); err != nil {
		t.Errorf("delete 404: %v", err)
	}
	if err := tpl.Delete(ctx); err != nil {
		t.Error(err)
	}
	b, err := tpl.Rebuild(ctx)
	if err != nil || b.ID != "b-2" || b.Status != BuildPending || b.Status.Done() || b.SpecHash != "abc" {
		t.Fatalf("rebuild %+v %v", b, err)
	}
	builds, err := tpl.Builds(ctx, 1)
	if err != nil || len(builds) != 1 {
		t.Fatalf("builds %+v %v", builds, err)
	}
	var be *BuildError
	if !errors.As(builds[0].Err(), &be) || be.Code != "snapshot_failed" || be.Message != "disk full" {
		t.Errorf("build err %v", builds[0].Err())
	}
	if b, err := tpl.Build(ctx, "b-2"); err != nil || b.Status != BuildReady || b.Err() != nil {
		t.Errorf("build %+v %v", b, err)
	}
	if err := tpl.CancelBuild(ctx, "b-2"); err != nil {
		t.Error(err)
	}
	if err := tpl.CancelBuild(ctx, "b-9"); err != nil {
		t.Errorf("cancel 404: %v", err)
	}
	if _, err := c.GetTemplate(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("get missing: %v", err)
	}
	want := []string{
		"GET /templates?name_prefix=we+b", "DELETE /templates/gone", "DELETE /templates/t-1",
		"POST /templates/t-1/builds", "GET /templates/t-1/builds?limit=1", "GET /templates/t-1/builds/b-2",
		"DELETE /templates/t-1/builds/b-2", "DELETE /templates/t-1/builds/b-9", "GET /templates/missing",
	}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("requests:\n got %q\nwant %q", seen, want)
	}
}

func TestForkWire(t *testing.T) {
	partial := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/sandboxes/sb-1/fork" {
			t.Errorf("%s %s", r.Method, r.URL)
		}
		var body map[string]any
		json.NewDecoder(r.Body).Decode(&body)
		n := int(body["count"].(float64))
		if len(body) != 1 {
			t.Errorf("body %v", body)
		}
		out := map[string]any{}
		var list []any
		made := n
		if partial {
			made = 1
			out["error"] = "out of addresses"
		}
		for i := range made {
			list = append(list, sandboxJSON(fmt.Sprintf("f-%d", i), fmt.Sprintf("tok-%d", i)))
		}
		out["sandboxes"] = list
		writeJSON(w, 201, out)
	}))
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	ctx := context.Background()
	forks, err := c.ForkByID(ctx, "sb-1", 3)
	if err != nil || len(forks) != 3 {
		t.Fatalf("%v %v", forks, err)
	}
	for i, f := range forks {
		if f.ID != fmt.Sprintf("f-%d", i) || f.accessToken() != fmt.Sprintf("tok-%d", i) || f.Commands == nil {
			t.Errorf("fork %d: %+v", i, f)
		}
	}
	partial = true
	forks, err = (&Sandbox{ID: "sb-1", c: c}).Fork(ctx, 3)
	var fe *ForkError
	if !errors.As(err, &fe) || len(forks) != 1 || fe.Created != 1 || fe.Requested != 3 || fe.Message != "out of addresses" {
		t.Fatalf("partial: %v %v", forks, err)
	}
	for _, n := range []int{0, -1, MaxForks + 1} {
		if _, err := c.ForkByID(ctx, "sb-1", n); !errors.Is(err, ErrValidation) {
			t.Errorf("n=%d: %v", n, err)
		}
	}
}

func TestSnapshotsWire(t *testing.T) {
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		seen = append(seen, r.Method+" "+r.URL.Path+" "+strings.TrimSpace(string(body)))
		snap := map[string]any{"id": "snap-1", "sandbox_id": "sb-1", "name": "before", "size_bytes": 42, "created_at": "2026-11-29T10:00:00Z"}
		switch {
		case r.Method == "POST":
			writeJSON(w, 201, snap)
		case r.Method == "GET":
			writeJSON(w, 200, []any{snap})
		case r.URL.Path == "/snapshots/gone":
			writeErr(w, 404, "not_found", "no such snapshot")
		default:
			w.WriteHeader(204)
		}
	}))
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	ctx := context.Background()
	s, err := (&Sandbox{ID: "sb-1", c: c}).SaveSnapshot(ctx, "before")
	if err != nil || s.ID != "snap-1" || s.SandboxID != "sb-1" || s.SizeBytes != 42 || s.CreatedAt.IsZero() {
		t.Fatalf("%+v %v", s, err)
	}
	if _, err := c.SaveSnapshotByID(ctx, "sb-1", ""); err != nil {
		t.Fatal(err)
	}
	list, err := c.ListSnapshots(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "before" {
		t.Fatalf("%+v %v", list, err)
	}
	if err := c.DeleteSnapshot(ctx, "snap-1"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSnapshot(ctx, "gone"); err != nil {
		t.Fatalf("delete 404: %v", err)
	}
	want := []string{
		`POST /sandboxes/sb-1/snapshots {"name":"before"}`, `POST /sandboxes/sb-1/snapshots {}`,
		"GET /snapshots ", "DELETE /snapshots/snap-1 ", "DELETE /snapshots/gone ",
	}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("requests:\n got %q\nwant %q", seen, want)
	}
}
