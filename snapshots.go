package stasis

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"time"
)

// SnapshotInfo is a saved snapshot of a sandbox: its memory, processes and
// filesystem at one moment, from which new sandboxes can be created
// (CreateOptions.Snapshot). It marshals to the wire JSON.
type SnapshotInfo struct {
	ID        string    `json:"id"`
	SandboxID string    `json:"sandbox_id"`
	Name      string    `json:"name,omitempty"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
}

// snapshotTimeout bounds saving a snapshot, which writes a sandbox's
// memory and filesystem to disk.
const snapshotTimeout = 10 * time.Minute

// SaveSnapshotByID saves a snapshot of a sandbox by id; name is optional.
// Sandboxes created from it with CreateOptions.Snapshot start where the
// sandbox was, independent of it and of each other.
func (c *Client) SaveSnapshotByID(ctx context.Context, id, name string) (*SnapshotInfo, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	body := map[string]any{}
	if name != "" {
		body["name"] = name
	}
	var out SnapshotInfo
	cl := call{method: http.MethodPost, path: "/sandboxes/" + url.PathEscape(id) + "/snapshots", json: body,
		timeout: max(c.requestTimeout, snapshotTimeout)}
	if err := c.doJSON(ctx, cl, &out); err != nil {
		return nil, err
	}
	if out.ID == "" {
		return nil, errors.New("stasis: POST /sandboxes/{id}/snapshots: response has no snapshot id")
	}
	return &out, nil
}

// SaveSnapshot saves a snapshot of the sandbox; see Client.SaveSnapshotByID.
func (s *Sandbox) SaveSnapshot(ctx context.Context, name string) (*SnapshotInfo, error) {
	return s.c.SaveSnapshotByID(ctx, s.ID, name)
}

// ListSnapshots returns the saved snapshots visible to the API key.
func (c *Client) ListSnapshots(ctx context.Context) ([]SnapshotInfo, error) {
	var out []SnapshotInfo
	if err := c.doJSON(ctx, call{method: http.MethodGet, path: "/snapshots"}, &out); err != nil {
		return nil, err
	}
	if out == nil {
		out = []SnapshotInfo{}
	}
	return out, nil
}

// DeleteSnapshot deletes a saved snapshot. Sandboxes created from it keep
// running. It is idempotent: a snapshot that is already gone (404) counts
// as deleted.
func (c *Client) DeleteSnapshot(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	err := c.doJSON(ctx, call{method: http.MethodDelete, path: "/snapshots/" + url.PathEscape(id)}, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}
