package netlog

import (
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/egress"
	"github.com/stasis-sandbox/stasis/internal/store"
)

func newStore(t *testing.T) store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "stasis.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	if err := st.EnsureTeam(ctx, "team", "team"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"sb-1", "sb-2"} {
		if err := st.InsertSandbox(ctx, &store.Sandbox{ID: id, TeamID: "team", Name: id, Status: store.StatusActive, Template: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// TestWriterKeepsNewestAndCounts: rows are written with their final byte
// counts, each sandbox keeps at least its newest Keep rows (and not
// unboundedly more), and deleting a sandbox deletes its log.
func TestWriterKeepsNewestAndCounts(t *testing.T) {
	st := newStore(t)
	w := New(st, slog.Default())
	ctx, cancel := context.WithCancel(context.Background())
	go w.Run(ctx)

	dst := netip.MustParseAddrPort("203.0.113.9:443")
	total := Keep + 2*trimEvery + 17
	start := time.Now().Add(-time.Hour)
	for i := range total {
		done := w.Begin(egress.Event{SandboxID: "sb-1", Time: start.Add(time.Duration(i) * time.Millisecond),
			Host: "x.test", Dst: dst, Verdict: egress.Allowed, Rule: "default"})
		done(int64(i), 2*int64(i))
		for len(w.queue) > queueLen/2 {
			time.Sleep(time.Millisecond) // let the writer keep up: a full queue drops rows
		}
	}
	w.Begin(egress.Event{SandboxID: "sb-2", Time: time.Now(), Dst: dst, Verdict: egress.Blocked, Rule: "deny_out:0.0.0.0/0"})
	w.Begin(egress.Event{SandboxID: "gone", Time: time.Now(), Dst: dst, Verdict: egress.Blocked})
	cancel()
	w.Wait()

	var all []*store.NetworkEvent
	q := store.NetworkLogQuery{SandboxID: "sb-1", Limit: 200}
	for {
		rows, more, err := st.ListNetworkLog(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, rows...)
		if !more {
			break
		}
		q.BeforeID = rows[len(rows)-1].ID
	}
	if len(all) < Keep || len(all) > Keep+trimEvery {
		t.Fatalf("sb-1 kept %d rows, want between %d and %d", len(all), Keep, Keep+trimEvery)
	}
	newest := all[0]
	if newest.BytesSent != int64(total-1) || newest.BytesRecv != 2*int64(total-1) || newest.Host != "x.test" || newest.DstPort != 443 {
		t.Fatalf("newest row %+v", newest)
	}
	for i := 1; i < len(all); i++ {
		if all[i].ID >= all[i-1].ID || all[i].BytesSent != all[i-1].BytesSent-1 {
			t.Fatalf("rows not newest first and contiguous at %d: %+v after %+v", i, all[i], all[i-1])
		}
	}
	rows, _, err := st.ListNetworkLog(context.Background(), store.NetworkLogQuery{SandboxID: "sb-2", Limit: 10, Verdict: "blocked"})
	if err != nil || len(rows) != 1 || rows[0].Host != "203.0.113.9" || rows[0].MatchRule != "deny_out:0.0.0.0/0" {
		t.Fatalf("sb-2 rows %+v %v", rows, err)
	}

	if err := st.DeleteSandbox(context.Background(), "sb-1"); err != nil {
		t.Fatal(err)
	}
	if rows, _, _ := st.ListNetworkLog(context.Background(), store.NetworkLogQuery{SandboxID: "sb-1", Limit: 10}); len(rows) != 0 {
		t.Fatalf("log of a deleted sandbox: %d rows", len(rows))
	}
}

// TestWriterWritesWhileRunning: a row is written soon after it is queued,
// not only when Run ends, and so is one queued after the writer has been
// idle (Run sleeps while nothing is queued).
func TestWriterWritesWhileRunning(t *testing.T) {
	st := newStore(t)
	w := New(st, slog.Default())
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); w.Wait() }()
	go w.Run(ctx)
	dst := netip.MustParseAddrPort("203.0.113.9:443")
	for want := 1; want <= 2; want++ {
		w.Begin(egress.Event{SandboxID: "sb-2", Time: time.Now(), Dst: dst, Verdict: egress.Blocked, Rule: "deny_out:0.0.0.0/0"})
		deadline := time.Now().Add(30 * time.Second)
		for {
			rows, _, err := st.ListNetworkLog(context.Background(), store.NetworkLogQuery{SandboxID: "sb-2", Limit: 10})
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d rows written while the writer runs, want %d", len(rows), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(3 * flushTick) // idle, past the last flush
	}
}
