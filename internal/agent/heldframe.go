package agent

import (
	"io"
	"sync"
)

// heldWriter holds bytes (an encoded frame) until the next Write, and sends
// them in that write, ahead of what it writes: see
// agentproto.StartRequest.HoldStarted.
type heldWriter struct {
	w    io.Writer
	mu   sync.Mutex
	held []byte // sent with the next Write; nil once sent
}

func (h *heldWriter) Write(b []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == nil {
		return h.w.Write(b)
	}
	buf := append(h.held, b...)
	sent := len(h.held)
	h.held = nil
	n, err := h.w.Write(buf)
	return max(0, n-sent), err
}
