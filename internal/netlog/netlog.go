// Package netlog writes sandboxes' network logs to the store. Rows are
// queued by the egress proxy as connections are decided and written in
// batches by one goroutine, so that logging never holds a connection up;
// each sandbox keeps at least its newest Keep rows.
package netlog

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/stasis-sandbox/stasis/internal/egress"
	"github.com/stasis-sandbox/stasis/internal/store"
)

const (
	// Keep is how many of its newest rows a sandbox keeps at least.
	Keep = 10000
	// trimEvery is how many rows a sandbox gains between trims.
	trimEvery = 1000
	queueLen  = 8192
	maxBatch  = 512
	flushTick = 50 * time.Millisecond
)

// Writer queues and writes network log rows. It implements egress.Log.
type Writer struct {
	st    store.Store
	log   *slog.Logger
	queue chan store.NetworkLogWrite
	added map[string]int // rows written per sandbox since its last trim
	done  chan struct{}

	mu      sync.Mutex
	dropped int       // rows dropped since the last warning
	warned  time.Time // when that was
}

// New returns a writer; call Run to start writing.
func New(st store.Store, log *slog.Logger) *Writer {
	return &Writer{st: st, log: log, queue: make(chan store.NetworkLogWrite, queueLen),
		added: map[string]int{}, done: make(chan struct{})}
}

// Begin queues a row for a decided connection and returns the function
// that records its byte counts when it ends.
func (w *Writer) Begin(ev egress.Event) func(sent, recv int64) {
	host := ev.Host
	if host == "" {
		host = ev.Dst.Addr().String()
	}
	row := &store.NetworkEvent{SandboxID: ev.SandboxID, Time: ev.Time, Kind: "connection", Host: host,
		DstIP: ev.Dst.Addr().String(), DstPort: int(ev.Dst.Port()), Verdict: ev.Verdict, MatchRule: ev.Rule}
	w.enqueue(store.NetworkLogWrite{Event: row})
	if ev.Verdict != egress.Allowed {
		return func(int64, int64) {}
	}
	return func(sent, recv int64) {
		w.enqueue(store.NetworkLogWrite{Event: row, Done: true, BytesSent: sent, BytesRecv: recv})
	}
}

// enqueue never blocks the proxy: when the writer is that far behind, the
// row is dropped (and counted in the next warning, at most one a second).
func (w *Writer) enqueue(wr store.NetworkLogWrite) {
	select {
	case w.queue <- wr:
		return
	default:
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.dropped++
	if time.Since(w.warned) >= time.Second {
		w.log.Warn("network log: writer behind, rows dropped", "rows", w.dropped)
		w.dropped, w.warned = 0, time.Now()
	}
}

// Run writes queued rows until ctx ends, then writes what is left. A batch
// is written flushTick after its first row (or once full); with nothing
// queued Run sleeps (a ticker woke stasisd 20 times a second for nothing).
func (w *Writer) Run(ctx context.Context) {
	defer close(w.done)
	flush := time.NewTimer(flushTick)
	flush.Stop()
	defer flush.Stop()
	var batch []store.NetworkLogWrite
	for {
		select {
		case wr := <-w.queue:
			if len(batch) == 0 {
				flush.Reset(flushTick)
			}
			batch = append(batch, wr)
			if len(batch) < maxBatch {
				continue
			}
			flush.Stop()
		case <-flush.C:
		case <-ctx.Done():
			for {
				select {
				case wr := <-w.queue:
					batch = append(batch, wr)
					continue
				default:
				}
				break
			}
			w.write(batch)
			return
		}
		if len(batch) > 0 {
			w.write(batch)
			batch = batch[:0]
		}
	}
}

// Wait returns when Run has written everything and returned.
func (w *Writer) Wait() { <-w.done }

// write writes a batch; it is not cut short by Run's end, so that what
// was queued before a shutdown is written.
func (w *Writer) write(batch []store.NetworkLogWrite) {
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.st.WriteNetworkLog(ctx, batch); err != nil {
		w.log.Error("network log: write failed", "rows", len(batch), "err", err)
		return
	}
	for _, wr := range batch {
		if wr.Done || wr.Event.ID <= 0 {
			continue
		}
		id := wr.Event.SandboxID
		w.added[id]++
		if w.added[id] >= trimEvery {
			delete(w.added, id)
			if err := w.st.TrimNetworkLog(ctx, id, Keep); err != nil {
				w.log.Error("network log: trim failed", "sandbox", id, "err", err)
			}
		}
	}
}
