package stasis

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// MaxForks is the most sandboxes one fork call can create.
const MaxForks = 100

// ForkError reports a fork that created fewer sandboxes than asked: Fork
// returns the ones it made together with this error.
type ForkError struct {
	SandboxID string // the sandbox that was forked
	Requested int
	Created   int
	// Message is the server's explanation for the forks it could not make.
	Message string
}

func (e *ForkError) Error() string {
	return fmt.Sprintf("stasis: fork of %s made %d of %d sandboxes: %s", e.SandboxID, e.Created, e.Requested, e.Message)
}

// ForkByID creates n (1..MaxForks) new sandboxes from a paused sandbox. Each
// continues from the paused sandbox's state (memory, processes, files) with
// its own identity, network address and access token, and diverges from
// then on; the original stays paused. A sandbox that is not paused is an
// error matching ErrConflict.
//
// If only some forks could be made, it returns those together with a
// *ForkError; the caller owns (and should Kill) every sandbox returned.
func (c *Client) ForkByID(ctx context.Context, id string, n int) ([]*Sandbox, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	if n < 1 || n > MaxForks {
		return nil, errorf(ErrValidation, "fork count %d: want 1..%d", n, MaxForks)
	}
	var out struct {
		Sandboxes []sandboxWire `json:"sandboxes"`
		Error     string        `json:"error"`
	}
	path := "/sandboxes/" + url.PathEscape(id) + "/fork"
	// Each fork restores a snapshot: allow for many.
	timeout := c.requestTimeout + time.Duration(n)*10*time.Second
	if err := c.doJSON(ctx, call{method: http.MethodPost, path: path, json: map[string]int{"count": n}, timeout: timeout}, &out); err != nil {
		return nil, err
	}
	forks := make([]*Sandbox, 0, len(out.Sandboxes))
	for _, w := range out.Sandboxes {
		sb, err := c.newSandbox(w, "POST /sandboxes/{id}/fork")
		if err != nil {
			return forks, err
		}
		forks = append(forks, sb)
	}
	if out.Error != "" || len(forks) < n {
		msg := out.Error
		if msg == "" {
			msg = "the server returned fewer sandboxes without saying why"
		}
		return forks, &ForkError{SandboxID: id, Requested: n, Created: len(forks), Message: msg}
	}
	return forks, nil
}

// Fork creates n new sandboxes that continue from this sandbox's state. The
// sandbox must be paused (call Pause first); it stays paused. See
// Client.ForkByID.
func (s *Sandbox) Fork(ctx context.Context, n int) ([]*Sandbox, error) {
	return s.c.ForkByID(ctx, s.ID, n)
}
