package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestUnenforcedFeaturesAreRefused: stasis does not inject secrets yet, so a
// create that asks for them is refused with 400 not_supported and changes
// nothing; accepting them would promise a protection that is not there.
// (Network rules, once refused here too, are enforced now: network_test.go.)
func TestUnenforcedFeaturesAreRefused(t *testing.T) {
	srv := testenv.StartServer(t)
	c, sb := createMinimal(t, srv, "target")
	for _, tc := range []struct {
		name, method, path, body, wantInMsg string
	}{
		{"create with secrets", "POST", "/sandboxes",
			`{"name":"sec","from_template":"stasis/minimal","secrets":{"ANTHROPIC_API_KEY":"anthropic-prod"}}`, "secrets"},
		{"create with secrets and network rules", "POST", "/sandboxes",
			`{"name":"sec","from_template":"stasis/minimal","network":{"deny_out":["0.0.0.0/0"]},"secrets":{"GITHUB_TOKEN":"gh"}}`, "secrets"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
			req.Header.Set("X-API-Key", srv.APIKey)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			var env struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			json.Unmarshal(data, &env)
			if resp.StatusCode != http.StatusBadRequest || env.Error.Code != "not_supported" || !strings.Contains(env.Error.Message, tc.wantInMsg) {
				t.Fatalf("HTTP %d %s, want 400 not_supported about %s", resp.StatusCode, data, tc.wantInMsg)
			}
		})
	}
	// Nothing was created or changed.
	var list []sandboxInfo
	if err := srv.Do("GET", "/sandboxes", nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != sb.ID || len(list[0].Metadata) != 0 || list[0].Status != "active" {
		t.Fatalf("refused requests changed state: %+v", list)
	}
	if got := c.sh("echo still-here"); got != "still-here" {
		t.Fatalf("sandbox after the refusals: %q", got)
	}
}
