package agent

import (
	"io"
	"sync"
)

// heldWriter holds bytes (encoded frames) until a later Write, and sends
// them in that write, ahead of what it writes: the started frame until the
// first output or the exit (see agentproto.StartRequest.HoldStarted), and,
// while holding, a buffered run's last output until its exit frame.
type heldWriter struct {
	w       io.Writer
	mu      sync.Mutex
	held    []byte // sent with the next Write that is not held; nil once sent
	holding bool   // see hold
}

// maxHeld bounds what hold keeps back: more goes out at once, with what
// was held.
const maxHeld = 64 << 10

func (h *heldWriter) Write(b []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.holding && len(h.held)+len(b) <= maxHeld {
		h.held = append(h.held, b...)
		return len(b), nil
	}
	if h.held == nil {
		return h.w.Write(b)
	}
	buf := append(h.held, b...)
	sent := len(h.held)
	h.held = nil
	n, err := h.w.Write(buf)
	return max(0, n-sent), err
}

// hold makes Writes (up to maxHeld in all) wait for the first Write after
// hold(false), and go out in it. A buffered run's shell has exited when it
// holds: the output its pumps still find goes out with the exit frame, one
// send through the sandbox's network stack instead of one more per output.
func (h *heldWriter) hold(on bool) {
	h.mu.Lock()
	h.holding = on
	h.mu.Unlock()
}
