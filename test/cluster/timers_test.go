package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// testLostNodesAutoDelete: a paused sandbox whose node is lost is still
// auto-deleted on time, by exactly one of the other nodes, and the lost
// node does not bring it back when it returns.
func testLostNodesAutoDelete(t *testing.T, tc *testCluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a, b, c := tc.node("a"), tc.node("b"), tc.node("c")
	id := tc.createOn(t, ctx, "b", a)
	defer a.srv.Do("DELETE", "/sandboxes/"+id, nil, nil)
	if err := a.srv.Do("POST", "/sandboxes/"+id+"/pause", nil, nil); err != nil {
		t.Fatalf("pause via a: %v", err)
	}
	waitFor(t, "the snapshot to be portable", func() (bool, string) {
		got := get(t, a, id)
		return got.Pause != nil && got.Pause.Portable, fmt.Sprintf("%+v", got.Pause)
	})
	// The deadline counts from the pause (an hour's window tells when that
	// was): set it about 20 s from now, then kill b at once, long before
	// b's own timer could fire.
	var paused struct {
		Status       string     `json:"status"`
		AutoDeleteAt *time.Time `json:"auto_delete_at"`
	}
	if err := a.srv.Do("PATCH", "/sandboxes/"+id, map[string]any{"auto_delete_seconds": 3600}, &paused); err != nil || paused.AutoDeleteAt == nil {
		t.Fatalf("set auto-delete via a: %v (auto_delete_at %v)", err, paused.AutoDeleteAt)
	}
	pausedAt := paused.AutoDeleteAt.Add(-time.Hour)
	window := int(time.Since(pausedAt).Seconds()) + 20
	if err := a.srv.Do("PATCH", "/sandboxes/"+id, map[string]any{"auto_delete_seconds": window}, &paused); err != nil {
		t.Fatalf("set auto-delete via a: %v", err)
	}
	b.srv.Kill()
	if paused.Status != "paused" || paused.AutoDeleteAt == nil || time.Until(*paused.AutoDeleteAt) < 5*time.Second {
		t.Fatalf("before the kill: status %q, auto_delete_at %v; want paused with a deadline still ahead", paused.Status, paused.AutoDeleteAt)
	}
	waitFor(t, "the lost node's paused sandbox to be auto-deleted", func() (bool, string) {
		err := c.srv.Do("GET", "/sandboxes/"+id, nil, nil)
		var he *testenv.HTTPError
		if errors.As(err, &he) && he.Status == 404 {
			return true, ""
		}
		return false, fmt.Sprint(err)
	})
	if time.Now().Before(*paused.AutoDeleteAt) {
		t.Errorf("deleted before its deadline %s", paused.AutoDeleteAt)
	}
	deletions := 0
	for _, n := range []*node{a, c} {
		deletions += strings.Count(n.srv.Logs(), `msg="auto-delete reached: deleting" sandbox=`+id)
	}
	if deletions != 1 {
		t.Errorf("the auto-delete fired %d times across a and c, want exactly once", deletions)
	}
	b.srv.Restart()
	var he *testenv.HTTPError
	if err := b.srv.Do("GET", "/sandboxes/"+id, nil, nil); !errors.As(err, &he) || he.Status != 404 {
		t.Errorf("via b after its return: %v, want 404", err)
	}
	if contains(runningOn(t, b), id) {
		t.Errorf("node b runs deleted sandbox %s after coming back", id)
	}
}
