package stasis

// Protocol tests: the SDK against httptest servers that play stasisd's
// wire protocol. End-to-end tests against a real stasisd are in
// e2e_test.go.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"
)

// sleepRecorder replaces the client's backoff sleep: it records the
// requested delays and returns at once, so retry tests take no time.
type sleepRecorder struct {
	mu     sync.Mutex
	delays []time.Duration
}

func (r *sleepRecorder) sleep(ctx context.Context, d time.Duration) error {
	r.mu.Lock()
	r.delays = append(r.delays, d)
	r.mu.Unlock()
	return ctx.Err()
}

func (r *sleepRecorder) get() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Duration(nil), r.delays...)
}

func newTestClient(t *testing.T, url string, opts ...Option) (*Client, *sleepRecorder) {
	t.Helper()
	t.Setenv("STASIS_URL", "")
	t.Setenv("STASIS_API_KEY", "")
	opts = append([]Option{WithBaseURL(url), WithAPIKey("test-key"), WithCredentialsFile("")}, opts...)
	c, err := NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	rec := &sleepRecorder{}
	c.sleep = rec.sleep
	return c, rec
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":{"code":%q,"message":%q}}`, code, msg)
}

func sandboxJSON(id, token string) map[string]any {
	return map[string]any{
		"id": id, "name": "n-" + id, "status": "active", "vcpu_count": 1, "memory_mib": 512,
		"created_at": "2026-11-29T10:00:00Z", "metadata": map[string]string{}, "access_token": token,
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// ---------------------------------------------------------------------------
// Configuration

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	cred := filepath.Join(dir, "credentials")
	os.WriteFile(cred, []byte("# written by make run\nSTASIS_URL=http://file:1\nexport STASIS_API_KEY=\"file-key\"\n"), 0o600)

	t.Setenv("STASIS_URL", "")
	t.Setenv("STASIS_API_KEY", "")
	c, err := NewClient(WithCredentialsFile(cred))
	if err != nil {
		t.Fatal(err)
	}
	if c.baseURL != "http://file:1" || c.apiKey != "file-key" {
		t.Errorf("file: got %q %q", c.baseURL, c.apiKey)
	}

	t.Setenv("STASIS_URL", "http://env:2/")
	t.Setenv("STASIS_API_KEY", "env-key")
	c, err = NewClient(WithCredentialsFile(cred))
	if err != nil {
		t.Fatal(err)
	}
	if c.baseURL != "http://env:2" || c.apiKey != "env-key" {
		t.Errorf("env: got %q %q", c.baseURL, c.apiKey)
	}

	c, err = NewClient(WithCredentialsFile(cred), WithBaseURL("https://opt:3"), WithAPIKey("opt-key"))
	if err != nil {
		t.Fatal(err)
	}
	if c.baseURL != "https://opt:3" || c.apiKey != "opt-key" {
		t.Errorf("options: got %q %q", c.baseURL, c.apiKey)
	}
}

func TestConfigNoAPIKey(t *testing.T) {
	t.Setenv("STASIS_URL", "")
	t.Setenv("STASIS_API_KEY", "")
	t.Setenv("HOME", t.TempDir())
	_, err := NewClient()
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "no API key") || !strings.Contains(err.Error(), "STASIS_API_KEY") {
		t.Fatalf("got %v", err)
	}
	if _, err := NewClient(WithAPIKey("k"), WithBaseURL("ftp://x")); !errors.Is(err, ErrValidation) {
		t.Fatalf("bad URL: got %v", err)
	}
}

func TestConfigDefaultURL(t *testing.T) {
	t.Setenv("STASIS_URL", "")
	c, err := NewClient(WithAPIKey("k"), WithCredentialsFile(""))
	if err != nil {
		t.Fatal(err)
	}
	if c.BaseURL() != DefaultURL {
		t.Fatalf("got %q", c.BaseURL())
	}
}

// ---------------------------------------------------------------------------
// Errors

func TestErrorMapping(t *testing.T) {
	cases := []struct {
		status int
		want   error
	}{
		{400, ErrValidation}, {401, ErrAuth}, {403, ErrAuth}, {404, ErrNotFound},
		{409, ErrConflict}, {429, ErrRateLimit}, {500, ErrServer}, {507, ErrServer},
	}
	all := []error{ErrValidation, ErrAuth, ErrNotFound, ErrConflict, ErrRateLimit, ErrServer, ErrTimeout}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("X-API-Key") != "test-key" {
					t.Errorf("missing API key header")
				}
				writeErr(w, tc.status, "some_code", "something went wrong")
			}))
			defer srv.Close()
			c, _ := newTestClient(t, srv.URL, WithMaxAttempts(1))
			_, err := c.Get(context.Background(), "abc")
			for _, s := range all {
				if got := errors.Is(err, s); got != (s == tc.want) {
					t.Errorf("errors.Is(%v, %v) = %v", err, s, got)
				}
			}
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("errors.As: %v", err)
			}
			if ae.StatusCode != tc.status || ae.Code != "some_code" || ae.Message != "something went wrong" {
				t.Errorf("got %+v", ae)
			}
		})
	}
}

func TestErrorWithoutEnvelope(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no such route", http.StatusNotFound)
	}))
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	_, err := c.Get(context.Background(), "abc")
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 404 || ae.Message != "no such route" || !errors.Is(err, ErrNotFound) {
		t.Fatalf("got %#v", err)
	}
}

func TestKillByIDIdempotent(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodDelete || r.URL.Path != "/sandboxes/abc" {
			t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
		}
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeErr(w, 404, "not_found", "sandbox abc not found")
	}))
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	for i := 0; i < 2; i++ {
		if err := c.KillByID(context.Background(), "abc"); err != nil {
			t.Fatalf("kill %d: %v", i, err)
		}
	}
}

// ---------------------------------------------------------------------------
// Retries

func TestRetry429HonoursRetryAfter(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.Header().Set("Retry-After", "2")
			writeErr(w, 429, "rate_limited", "slow down")
			return
		}
		writeJSON(w, 200, []any{sandboxJSON("a", "")})
	}))
	defer srv.Close()
	c, rec := newTestClient(t, srv.URL)
	list, err := c.List(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != "a" || calls.Load() != 2 {
		t.Fatalf("list=%v calls=%d", list, calls.Load())
	}
	if d := rec.get(); len(d) != 1 || d[0] != 2*time.Second {
		t.Fatalf("delays %v, want [2s]", d)
	}
}

func TestRetry429HTTPDate(t *testing.T) {
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	d, ok := parseRetryAfter(now.Add(3*time.Second).Format(http.TimeFormat), now)
	if !ok || d != 3*time.Second {
		t.Fatalf("got %v %v", d, ok)
	}
	if d, ok := parseRetryAfter("3600", now); !ok || d != maxBackoff {
		t.Fatalf("cap: got %v %v", d, ok)
	}
	if _, ok := parseRetryAfter("soon", now); ok {
		t.Fatal("garbage accepted")
	}
}

func TestRetry503ForGETButNotPOST(t *testing.T) {
	var gets, posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			if gets.Add(1) < 3 {
				writeErr(w, 503, "unavailable", "busy")
				return
			}
			writeJSON(w, 200, sandboxJSON("a", ""))
		case http.MethodPost:
			posts.Add(1)
			writeErr(w, 503, "unavailable", "busy")
		}
	}))
	defer srv.Close()
	c, rec := newTestClient(t, srv.URL)
	if _, err := c.Get(context.Background(), "a"); err != nil {
		t.Fatalf("GET: %v", err)
	}
	if gets.Load() != 3 {
		t.Fatalf("GET tried %d times, want 3", gets.Load())
	}
	d := rec.get()
	if len(d) != 2 || d[1] <= d[0] {
		t.Fatalf("backoff delays %v: want two, growing", d)
	}
	_, err := c.Create(context.Background(), CreateOptions{Name: "x"})
	if !errors.Is(err, ErrServer) || posts.Load() != 1 {
		t.Fatalf("POST: err=%v tries=%d, want one try", err, posts.Load())
	}
	if _, err := c.PauseByID(context.Background(), "a"); err == nil || posts.Load() != 2 {
		t.Fatalf("pause retried: %d", posts.Load())
	}
}

func TestRetryGivesUp(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		writeErr(w, 429, "rate_limited", "slow down")
	}))
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL, WithMaxAttempts(4))
	err := c.KillByID(context.Background(), "a")
	if !errors.Is(err, ErrRateLimit) || calls.Load() != 4 {
		t.Fatalf("err=%v calls=%d", err, calls.Load())
	}
}

func TestRetryNetworkErrorForGET(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			// Drop the connection without answering.
			hj, _ := w.(http.Hijacker)
			conn, _, _ := hj.Hijack()
			conn.Close()
			return
		}
		writeJSON(w, 200, sandboxJSON("a", ""))
	}))
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	if _, err := c.Get(context.Background(), "a"); err != nil || calls.Load() != 2 {
		t.Fatalf("err=%v calls=%d", err, calls.Load())
	}
}

// ---------------------------------------------------------------------------
// Control-plane request shapes

func TestCreateListUpdateWire(t *testing.T) {
	var createBody, patchBody map[string]any
	var listQuery string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/sandboxes":
			json.NewDecoder(r.Body).Decode(&createBody)
			sb := sandboxJSON("sb1", "tok1")
			sb["timeout_seconds"] = 90
			sb["auto_delete_seconds"] = 3600
			sb["template"] = "stasis/minimal"
			sb["metadata"] = map[string]string{"team": "a"}
			writeJSON(w, 201, sb)
		case r.Method == http.MethodGet && r.URL.Path == "/sandboxes":
			listQuery = r.URL.RawQuery
			writeJSON(w, 200, []any{})
		case r.Method == http.MethodPatch && r.URL.Path == "/sandboxes/sb1":
			json.NewDecoder(r.Body).Decode(&patchBody)
			writeJSON(w, 200, sandboxJSON("sb1", ""))
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL)
		}
	}))
	defer srv.Close()
	c, _ := newTestClient(t, srv.URL)
	ctx := context.Background()
	sb, err := c.Create(ctx, CreateOptions{
		Name: "demo", Template: "stasis/minimal", Timeout: 1500 * time.Millisecond, AutoDelete: time.Hour,
		Metadata: map[string]string{"team": "a"}, EnvVars: map[string]string{"X": "1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"auto_delete_seconds":3600,"env_vars":{"X":"1"},"from_template":"stasis/minimal","metadata":{"team":"a"},"name":"demo","timeout_seconds":2}`
	if got, _ := json.Marshal(createBody); string(got) != want {
		t.Errorf("create body\n got %s\nwant %s", got, want)
	}
	snap := sb.Snapshot()
	if sb.ID != "sb1" || snap.Timeout != 90*time.Second || snap.AutoDelete != time.Hour || snap.Template != "stasis/minimal" || snap.Metadata["team"] != "a" {
		t.Errorf("snapshot %+v", snap)
	}
	if sb.accessToken() != "tok1" {
		t.Errorf("token %q", sb.accessToken())
	}

	if _, err := c.List(ctx, &ListOptions{Metadata: map[string]string{"team": "a b"}}); err != nil {
		t.Fatal(err)
	}
	if listQuery != "metadata.team=a+b" {
		t.Errorf("list query %q", listQuery)
	}

	if err := sb.Update(ctx, UpdateOptions{Metadata: map[string]string{}, ClearTimeout: true, AutoDelete: time.Minute}); err != nil {
		t.Fatal(err)
	}
	want = `{"auto_delete_seconds":60,"metadata":{},"timeout_seconds":null}`
	if got, _ := json.Marshal(patchBody); string(got) != want {
		t.Errorf("patch body\n got %s\nwant %s", got, want)
	}
	if err := c.UpdateByID(ctx, "sb1", UpdateOptions{Timeout: time.Minute, ClearTimeout: true}); !errors.Is(err, ErrValidation) {
		t.Errorf("contradictory update: %v", err)
	}
}

func TestSandboxInfoJSONRoundTrip(t *testing.T) {
	in := `{"id":"x","name":"n","status":"paused","vcpu_count":2,"memory_mib":1024,"created_at":"2026-11-29T10:00:00Z","timeout_seconds":30,"auto_delete_at":"2026-11-30T10:00:00Z","metadata":{"a":"b"},"template":{"id":"t1","name":"stasis/minimal"}}`
	var info SandboxInfo
	if err := json.Unmarshal([]byte(in), &info); err != nil {
		t.Fatal(err)
	}
	if info.Status != StatusPaused || info.Timeout != 30*time.Second || info.AutoDelete != 0 || info.Template != "stasis/minimal" || info.AutoDeleteAt.IsZero() {
		t.Fatalf("%+v", info)
	}
	out, _ := json.Marshal(info)
	want := `{"id":"x","name":"n","status":"paused","vcpu_count":2,"memory_mib":1024,"created_at":"2026-11-29T10:00:00Z","timeout_seconds":30,"auto_delete_at":"2026-11-30T10:00:00Z","metadata":{"a":"b"},"template":"stasis/minimal"}`
	if string(out) != want {
		t.Fatalf("\n got %s\nwant %s", out, want)
	}
}

// ---------------------------------------------------------------------------
// Access-token refresh

// tokenServer is a fake stasisd whose data plane accepts only the current
// token; activate issues a new one.
type tokenServer struct {
	t         *testing.T
	mu        sync.Mutex
	token     string
	gen       int
	activates atomic.Int32
	execs     atomic.Int32
	// rejectStatus is what a stale token gets (401 or 503).
	rejectStatus int
	// rejectAlways makes the data plane refuse even fresh tokens.
	rejectAlways bool
	// beforeActivate, if set, runs at the start of each activate.
	beforeActivate func()
	// onReject, if set, runs when a stale token is refused.
	onReject func()
}

func (ts *tokenServer) current() string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.token
}

func (ts *tokenServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && (r.URL.Path == "/sandboxes/sb1/activate" || r.URL.Path == "/sandboxes/sb1/resume"):
		if r.URL.Path == "/sandboxes/sb1/activate" {
			ts.activates.Add(1)
			if ts.beforeActivate != nil {
				ts.beforeActivate()
			}
		}
		ts.mu.Lock()
		ts.gen++
		ts.token = fmt.Sprintf("tok%d", ts.gen)
		tok := ts.token
		ts.mu.Unlock()
		writeJSON(w, 200, sandboxJSON("sb1", tok))
	case r.URL.Path == "/exec" || r.URL.Path == "/files":
		if r.Header.Get("X-Superserve-Sandbox-Id") != "sb1" {
			ts.t.Errorf("missing sandbox id header")
		}
		ts.execs.Add(1)
		if ts.rejectAlways || r.Header.Get("X-Access-Token") != ts.current() {
			if ts.onReject != nil {
				ts.onReject()
			}
			writeErr(w, ts.rejectStatus, "unauthorized", "bad token")
			return
		}
		if r.URL.Path == "/files" {
			if r.Method == http.MethodPost {
				b, _ := io.ReadAll(r.Body)
				w.Header().Set("X-Got", string(b))
				w.WriteHeader(http.StatusNoContent)
				return
			}
			io.WriteString(w, "content")
			return
		}
		writeJSON(w, 200, map[string]any{"stdout": "ok\n", "stderr": "", "exit_code": 0})
	default:
		ts.t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
		http.NotFound(w, r)
	}
}

func connectToTokenServer(t *testing.T, ts *tokenServer) (*Sandbox, *Client) {
	srv := httptest.NewServer(ts)
	t.Cleanup(srv.Close)
	c, _ := newTestClient(t, srv.URL)
	sb, err := c.Connect(context.Background(), "sb1")
	if err != nil {
		t.Fatal(err)
	}
	ts.activates.Store(0)
	return sb, c
}

func TestTokenRefresh(t *testing.T) {
	for _, status := range []int{401, 503} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			ts := &tokenServer{t: t, rejectStatus: status}
			sb, _ := connectToTokenServer(t, ts)
			// Another client rotates the token (e.g. it resumed the sandbox).
			ts.mu.Lock()
			ts.token = "rotated-elsewhere"
			ts.mu.Unlock()

			res, err := sb.Commands.Run(context.Background(), "echo ok", nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Stdout != "ok\n" {
				t.Fatalf("stdout %q", res.Stdout)
			}
			if n := ts.activates.Load(); n != 1 {
				t.Fatalf("activate called %d times, want 1", n)
			}
			if ts.execs.Load() != 2 {
				t.Fatalf("exec tried %d times, want 2", ts.execs.Load())
			}
			// The fresh token is kept: no more activates.
			if _, err := sb.Commands.Run(context.Background(), "echo ok", nil); err != nil {
				t.Fatal(err)
			}
			if n := ts.activates.Load(); n != 1 {
				t.Fatalf("activate called %d times after second run, want 1", n)
			}
		})
	}
}

func TestTokenRefreshOnlyOnce(t *testing.T) {
	ts := &tokenServer{t: t, rejectStatus: 401, rejectAlways: true}
	sb, _ := connectToTokenServer(t, ts)
	_, err := sb.Commands.Run(context.Background(), "true", nil)
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("got %v", err)
	}
	if ts.activates.Load() != 1 || ts.execs.Load() != 2 {
		t.Fatalf("activates=%d execs=%d, want 1 and 2", ts.activates.Load(), ts.execs.Load())
	}
}

func TestTokenRefreshNotOnOtherErrors(t *testing.T) {
	ts := &tokenServer{t: t, rejectStatus: 409}
	sb, _ := connectToTokenServer(t, ts)
	ts.mu.Lock()
	ts.token = "other"
	ts.mu.Unlock()
	if _, err := sb.Commands.Run(context.Background(), "true", nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("got %v", err)
	}
	if ts.activates.Load() != 0 {
		t.Fatal("activate called for a 409")
	}
}

func TestTokenRefreshCoalesces(t *testing.T) {
	const n = 16
	var rejected atomic.Int32
	allRejected := make(chan struct{})
	ts := &tokenServer{t: t, rejectStatus: 401}
	ts.onReject = func() {
		if rejected.Add(1) == n {
			close(allRejected)
		}
	}
	sb, _ := connectToTokenServer(t, ts)
	// Activate waits until every caller has been refused, so all of them
	// are refreshing while it is in flight.
	ts.beforeActivate = func() { <-allRejected }
	ts.mu.Lock()
	ts.token = "rotated-elsewhere"
	ts.mu.Unlock()

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				_, err := sb.Commands.Run(context.Background(), "echo ok", nil)
				errs <- err
			} else {
				_, err := sb.Files.Read(context.Background(), "/etc/hostname")
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := ts.activates.Load(); got != 1 {
		t.Fatalf("activate called %d times, want 1", got)
	}
}

func TestTokenRefreshRewindsUpload(t *testing.T) {
	ts := &tokenServer{t: t, rejectStatus: 401}
	sb, c := connectToTokenServer(t, ts)
	ts.mu.Lock()
	ts.token = "rotated-elsewhere"
	ts.mu.Unlock()
	var got string
	c.hc.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err == nil && resp.Header.Get("X-Got") != "" {
			got = resp.Header.Get("X-Got")
		}
		return resp, err
	})
	if err := sb.Files.WriteFrom(context.Background(), "/tmp/x", strings.NewReader("hello world")); err != nil {
		t.Fatal(err)
	}
	if got != "hello world" {
		t.Fatalf("server got %q", got)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestResumeRotatesToken(t *testing.T) {
	ts := &tokenServer{t: t, rejectStatus: 401}
	sb, _ := connectToTokenServer(t, ts)
	if err := sb.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if sb.accessToken() != ts.current() {
		t.Fatalf("token %q, server has %q", sb.accessToken(), ts.current())
	}
	if _, err := sb.Commands.Run(context.Background(), "true", nil); err != nil || ts.activates.Load() != 0 {
		t.Fatalf("err=%v activates=%d", err, ts.activates.Load())
	}
}

// ---------------------------------------------------------------------------
// Commands.Run

func dataPlaneServer(t *testing.T, h http.HandlerFunc) *Sandbox {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/sandboxes/sb1/activate" {
			writeJSON(w, 200, sandboxJSON("sb1", "tok"))
			return
		}
		if r.Header.Get("X-Access-Token") != "tok" || r.Header.Get("X-Superserve-Sandbox-Id") != "sb1" {
			t.Errorf("%s: missing data-plane headers", r.URL.Path)
		}
		if r.Header.Get("X-API-Key") != "" {
			t.Errorf("%s: API key sent to the data plane", r.URL.Path)
		}
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	c, _ := newTestClient(t, srv.URL)
	sb, err := c.Connect(context.Background(), "sb1")
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func TestRunBuffered(t *testing.T) {
	var body map[string]any
	sb := dataPlaneServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/exec" {
			t.Errorf("path %s", r.URL.Path)
		}
		json.NewDecoder(r.Body).Decode(&body)
		writeJSON(w, 200, map[string]any{"stdout": "out", "stderr": "err", "exit_code": 3})
	})
	res, err := sb.Commands.Run(context.Background(), "exit 3", &RunOptions{Dir: "/tmp", Env: map[string]string{"A": "b"}, Timeout: 2500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stdout != "out" || res.Stderr != "err" || res.ExitCode != 3 {
		t.Fatalf("%+v", res)
	}
	want := `{"command":"exit 3","env":{"A":"b"},"timeout_s":3,"working_dir":"/tmp"}`
	if got, _ := json.Marshal(body); string(got) != want {
		t.Fatalf("body %s, want %s", got, want)
	}
}

func TestRunBufferedOutputCap(t *testing.T) {
	sb := dataPlaneServer(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"stdout": strings.Repeat("x", 5000), "exit_code": 0})
	})
	_, err := sb.Commands.Run(context.Background(), "yes", &RunOptions{MaxOutputBytes: 1000})
	if !errors.Is(err, ErrOutputTooLarge) {
		t.Fatalf("got %v", err)
	}
}

// sseHandler writes raw chunks, flushing after each.
func sseHandler(t *testing.T, chunks ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/exec/stream" {
			t.Errorf("path %s", r.URL.Path)
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for _, c := range chunks {
			io.WriteString(w, c)
			w.(http.Flusher).Flush()
		}
	}
}

func TestRunStreamSplitChunks(t *testing.T) {
	sb := dataPlaneServer(t, sseHandler(t,
		": comment\n\nda", `ta: {"stdout":"hel`, "lo\\n\"}\r\n\r\n",
		`data: {"stderr":"warn"}`+"\n\n"+`data: {"stdout":"héllo`, `"}`+"\n\n",
		"event: x\nid: 3\n",
		`data: {"finished":true,"exit_code":7,"error":"boom"}`, "\n\n",
	))
	var out, errOut strings.Builder
	res, err := sb.Commands.Run(context.Background(), "x", &RunOptions{
		OnStdout: func(p []byte) { out.Write(p) },
		OnStderr: func(p []byte) { errOut.Write(p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello\nhéllo" || errOut.String() != "warn" {
		t.Fatalf("callbacks got %q %q", out.String(), errOut.String())
	}
	if res.Stdout != "hello\nhéllo" || res.Stderr != "warn" || res.ExitCode != 7 || res.Error != "boom" {
		t.Fatalf("%+v", res)
	}
}

func TestRunStreamWithoutFinished(t *testing.T) {
	sb := dataPlaneServer(t, sseHandler(t, `data: {"stdout":"a"}`+"\n\n"))
	_, err := sb.Commands.Run(context.Background(), "x", &RunOptions{OnStdout: func([]byte) {}})
	if err == nil || !strings.Contains(err.Error(), "finished") {
		t.Fatalf("got %v", err)
	}
}

func TestRunStreamDeliversBeforeEnd(t *testing.T) {
	release := make(chan struct{})
	sb := dataPlaneServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"stdout\":\"a\\n\"}\n\n")
		w.(http.Flusher).Flush()
		<-release // the "command" runs on until the client saw "a"
		io.WriteString(w, "data: {\"stdout\":\"b\\n\"}\n\ndata: {\"finished\":true,\"exit_code\":0}\n\n")
	})
	var once sync.Once
	res, err := sb.Commands.Run(context.Background(), "x", &RunOptions{OnStdout: func(p []byte) {
		once.Do(func() { close(release) })
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stdout != "a\nb\n" {
		t.Fatalf("stdout %q", res.Stdout)
	}
}

func TestRunStreamTruncates(t *testing.T) {
	sb := dataPlaneServer(t, sseHandler(t,
		`data: {"stdout":"0123456789"}`+"\n\n",
		`data: {"stdout":"abcdef"}`+"\n\n",
		`data: {"finished":true,"exit_code":0}`+"\n\n"))
	var n int
	res, err := sb.Commands.Run(context.Background(), "x", &RunOptions{MaxOutputBytes: 12, OnStdout: func(p []byte) { n += len(p) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stdout != "0123456789ab" || !res.Truncated || n != 16 {
		t.Fatalf("%+v n=%d", res, n)
	}
}

func TestReadSSEOneByte(t *testing.T) {
	stream := "data: {\"a\":1}\n\n: c\r\ndata:{\"b\":2}\r\n\r\ndata: [DONE]\n\ndata: last"
	var got []string
	err := readSSE(iotest.OneByteReader(strings.NewReader(stream)), func(d []byte) error {
		got = append(got, string(d))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "|") != `{"a":1}|{"b":2}|last` {
		t.Fatalf("got %q", got)
	}
}

func TestRunContextCancel(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	sb := dataPlaneServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"stdout\":\"a\"}\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	_, err := sb.Commands.Run(ctx, "sleep 100", &RunOptions{OnStdout: func([]byte) { cancel() }})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}

	ctx, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	_, err = sb.Commands.Run(ctx, "sleep 100", &RunOptions{OnStdout: func([]byte) {}})
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
}

// ---------------------------------------------------------------------------
// Files

func TestFilesWire(t *testing.T) {
	files := map[string]string{}
	sb := dataPlaneServer(t, func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Query().Get("path")
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/files":
			b, _ := io.ReadAll(r.Body)
			files[p] = string(b)
			w.WriteHeader(http.StatusNoContent)
		case r.Method == http.MethodGet && r.URL.Path == "/files" && r.URL.Query().Get("format") == "zip":
			w.Header().Set("Content-Type", "application/zip")
			io.WriteString(w, "PK-zip-of-"+p)
		case r.Method == http.MethodGet && r.URL.Path == "/files":
			c, ok := files[p]
			if !ok {
				writeErr(w, 404, "not_found", "no such file")
				return
			}
			io.WriteString(w, c)
		case r.URL.Path == "/files/stat":
			writeJSON(w, 200, map[string]any{"name": "f", "size": 3, "mode": 0o755, "is_dir": false, "mtime": "2026-11-29T10:00:00Z"})
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL)
		}
	})
	ctx := context.Background()
	if err := sb.Files.Write(ctx, "/a b/c.txt", []byte("héllo\x00")); err != nil {
		t.Fatal(err)
	}
	if got, err := sb.Files.ReadText(ctx, "/a b/c.txt"); err != nil || got != "héllo\x00" {
		t.Fatalf("%q %v", got, err)
	}
	if _, err := sb.Files.Read(ctx, "/missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if z, err := sb.Files.DownloadDir(ctx, "/d"); err != nil || string(z) != "PK-zip-of-/d" {
		t.Fatalf("%q %v", z, err)
	}
	fi, err := sb.Files.Stat(ctx, "/f")
	if err != nil || fi.Mode != 0o755 || fi.Size != 3 || fi.ModTime.IsZero() {
		t.Fatalf("%+v %v", fi, err)
	}
	for _, bad := range []string{"rel/path", "/a/../etc"} {
		if _, err := sb.Files.Read(ctx, bad); !errors.Is(err, ErrValidation) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
