package stasis_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestE2ENetwork: egress rules on create and update, the network log
// page by page, and a preview URL, through the SDK. The blocked
// connections are refused by stasisd itself: no packet leaves the host.
func TestE2ENetwork(t *testing.T) {
	srv := testenv.StartServer(t)
	c := newClient(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
	defer cancel()

	sb, err := c.Create(ctx, stasis.CreateOptions{Name: "net", Template: template,
		Network: &stasis.Network{AllowOut: []string{"*.example.test"}, DenyOut: []string{"0.0.0.0/0"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Kill(context.Background()) })
	if got := sb.Snapshot().Network; strings.Join(got.AllowOut, ",") != "*.example.test" || strings.Join(got.DenyOut, ",") != "0.0.0.0/0" {
		t.Fatalf("network after create: %+v", got)
	}

	// Three connections to documentation addresses, all blocked.
	for _, addr := range []string{"203.0.113.10", "203.0.113.11", "203.0.113.12"} {
		if _, err := sb.Commands.Run(ctx, "echo | timeout 10 nc "+addr+" 80", nil); err != nil {
			t.Fatal(err)
		}
	}
	var rows []stasis.NetworkEvent
	for range 100 {
		rows = nil
		for page, err := range sb.NetworkLogPages(ctx, stasis.NetworkLogOptions{Limit: 1, Verdict: stasis.VerdictBlocked}) {
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Events) != 1 {
				t.Fatalf("page of %d rows with limit 1", len(page.Events))
			}
			rows = append(rows, page.Events...)
		}
		if len(rows) == 3 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(rows) != 3 {
		t.Fatalf("network log has %d blocked rows, want 3: %+v", len(rows), rows)
	}
	for i, want := range []string{"203.0.113.12", "203.0.113.11", "203.0.113.10"} { // newest first
		if r := rows[i]; r.DstIP != want || r.DstPort != 80 || r.Verdict != stasis.VerdictBlocked || r.MatchRule != "deny_out:0.0.0.0/0" {
			t.Fatalf("row %d: %+v, want a blocked connection to %s", i, r, want)
		}
	}

	// Update replaces both lists.
	if err := sb.Update(ctx, stasis.UpdateOptions{Network: &stasis.Network{DenyOut: []string{"203.0.113.0/24"}}}); err != nil {
		t.Fatal(err)
	}
	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Network.AllowOut) != 0 || strings.Join(info.Network.DenyOut, ",") != "203.0.113.0/24" {
		t.Fatalf("network after update: %+v", info.Network)
	}
	err = sb.Update(ctx, stasis.UpdateOptions{Network: &stasis.Network{DenyOut: []string{"example.test"}}})
	if !errors.Is(err, stasis.ErrValidation) || !strings.Contains(err.Error(), "example.test") {
		t.Fatalf("update with a domain in DenyOut: %v", err)
	}

	// A preview URL of a server in the sandbox.
	mustRun(t, ctx, sb, "mkdir -p /tmp/www && echo from-the-sandbox > /tmp/www/index.html && httpd -p 8000 -h /tmp/www")
	u, err := sb.PreviewURL(8000)
	if err != nil {
		t.Fatal(err)
	}
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	want := "http://8000-" + sb.ID + ".sandbox.localhost:" + port + "/"
	if u != want {
		t.Fatalf("PreviewURL = %s, want %s", u, want)
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/", nil)
	req.Host = strings.TrimSuffix(strings.TrimPrefix(u, "http://"), "/")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "from-the-sandbox\n" {
		t.Fatalf("GET %s: %d %q", u, resp.StatusCode, body)
	}
	if _, err := sb.PreviewURL(80); !errors.Is(err, stasis.ErrValidation) {
		t.Fatalf("PreviewURL(80): %v", err)
	}
}
