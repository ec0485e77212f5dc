package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestBadInput: every malformed request gets the right 4xx with a clear
// message in the error envelope, and changes nothing.
func TestBadInput(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := createMinimal(t, srv, "target")
	c.sh("echo keep > /tmp/keep")

	long := strings.Repeat("x", 300)
	manyKeys := map[string]string{}
	for i := range 65 {
		manyKeys["k"+strings.Repeat("a", i)] = "v"
	}
	manyJSON, _ := json.Marshal(map[string]any{"name": "m", "metadata": manyKeys})

	type tc struct {
		name       string
		method     string
		path       string
		body       string
		apiKey     string // "" = the server's key; "-" = none
		dataPlane  bool
		token      string
		wantStatus int
		wantInMsg  string
	}
	cases := []tc{
		{"malformed JSON", "POST", "/sandboxes", `{"name": "x",`, "", false, "", 400, "invalid JSON"},
		{"unknown field", "POST", "/sandboxes", `{"name": "x", "colour": "red"}`, "", false, "", 400, "colour"},
		{"wrong type", "POST", "/sandboxes", `{"name": 42}`, "", false, "", 400, "name"},
		{"empty name", "POST", "/sandboxes", `{"name": ""}`, "", false, "", 400, "name must not be empty"},
		{"over-long name", "POST", "/sandboxes", `{"name": "` + long + `"}`, "", false, "", 400, "limit is 128"},
		{"too many metadata keys", "POST", "/sandboxes", string(manyJSON), "", false, "", 400, "metadata has 65 keys"},
		{"bad env name", "POST", "/sandboxes", `{"name": "e", "env_vars": {"1X": "y"}}`, "", false, "", 400, "not valid"},
		{"unknown template", "POST", "/sandboxes", `{"name": "t", "from_template": "nope/nothing"}`, "", false, "", 404, "template"},
		{"trailing data", "POST", "/sandboxes", `{"name": "x"} {}`, "", false, "", 400, "unexpected data"},
		{"missing API key", "GET", "/sandboxes", "", "-", false, "", 401, "X-API-Key"},
		{"wrong API key", "GET", "/sandboxes", "", "ss_live_wrong", false, "", 401, "invalid API key"},
		{"unknown id", "GET", "/sandboxes/00000000-0000-4000-8000-000000000000", "", "", false, "", 404, "not found"},
		{"unknown id pause", "POST", "/sandboxes/nope/pause", "", "", false, "", 404, "not found"},
		{"patch unknown field", "PATCH", "/sandboxes/" + sb.ID, `{"status": "paused"}`, "", false, "", 400, "unknown field status"},
		{"patch negative timeout", "PATCH", "/sandboxes/" + sb.ID, `{"timeout_seconds": -5}`, "", false, "", 400, "timeout_seconds"},
		{"relative file path", "GET", "/files?path=" + url.QueryEscape("tmp/keep"), "", "", true, c.token, 400, "absolute"},
		{"dotdot file path", "POST", "/files?path=" + url.QueryEscape("/tmp/../etc/passwd"), "x", "", true, c.token, 400, ".."},
		{"missing file", "GET", "/files?path=" + url.QueryEscape("/tmp/does-not-exist"), "", "", true, c.token, 404, ""},
		{"exec empty command", "POST", "/exec", `{"command": "  "}`, "", true, c.token, 400, "command"},
		{"exec malformed", "POST", "/exec", `{"command": `, "", true, c.token, 400, "invalid JSON"},
		{"exec relative cwd", "POST", "/exec", `{"command": "pwd", "working_dir": "tmp"}`, "", true, c.token, 400, "absolute"},
		{"data plane no token", "POST", "/exec", `{"command": "true"}`, "", true, "", 401, "access token"},
		{"data plane bad token", "POST", "/exec", `{"command": "true"}`, "", true, "sst_bogus", 401, "invalid"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
			if tc.dataPlane {
				req.Header.Set("X-Superserve-Sandbox-Id", sb.ID)
				if tc.token != "" {
					req.Header.Set("X-Access-Token", tc.token)
				}
			} else {
				switch tc.apiKey {
				case "":
					req.Header.Set("X-API-Key", srv.APIKey)
				case "-":
				default:
					req.Header.Set("X-API-Key", tc.apiKey)
				}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("HTTP %d, want %d: %s", resp.StatusCode, tc.wantStatus, data)
			}
			var env struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(data, &env); err != nil || env.Error.Code == "" || env.Error.Message == "" {
				t.Fatalf("not an error envelope: %s", data)
			}
			if !strings.Contains(env.Error.Message, tc.wantInMsg) {
				t.Fatalf("message %q does not mention %q", env.Error.Message, tc.wantInMsg)
			}
		})
	}
	// A token for another sandbox does not hide that this one does not exist.
	t.Run("data plane unknown sandbox", func(t *testing.T) {
		req, _ := http.NewRequest("POST", srv.URL+"/exec", strings.NewReader(`{"command": "true"}`))
		req.Header.Set("X-Superserve-Sandbox-Id", "00000000-0000-4000-8000-000000000000")
		req.Header.Set("X-Access-Token", c.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if data, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusNotFound || !strings.Contains(string(data), "not found") {
			t.Fatalf("HTTP %d, want 404 not found: %s", resp.StatusCode, data)
		}
	})

	// Nothing changed: still one sandbox, same name and metadata, active, file intact.
	var list []sandboxInfo
	if err := srv.Do("GET", "/sandboxes", nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "target" || list[0].Status != "active" || len(list[0].Metadata) != 0 {
		t.Fatalf("bad requests changed state: %+v", list)
	}
	if got := c.sh("cat /tmp/keep"); got != "keep" {
		t.Fatalf("file changed: %q", got)
	}
	if got := c.sh("cat /etc/passwd | grep -c root"); got == "0" {
		t.Fatal("passwd clobbered")
	}

	// Pausing a paused sandbox is a conflict and leaves it paused.
	if err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	err := srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil)
	if statusOf(err) != http.StatusConflict || !strings.Contains(err.Error(), "only an active sandbox") {
		t.Fatalf("pause of a paused sandbox: %v, want 409", err)
	}
	if st := getInfo(t, srv, sb.ID).Status; st != "paused" {
		t.Fatalf("status after conflicting pause = %q", st)
	}
}
