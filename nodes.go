package stasis

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// Node states.
const (
	NodeActive   = "active"   // takes new sandboxes
	NodeDraining = "draining" // takes none; its active sandboxes are paused to resume elsewhere
	NodeLost     = "lost"     // stopped heartbeating; its sandboxes resume elsewhere
)

// NodeInfo is one stasisd of a cluster (a single server is a cluster of one).
type NodeInfo struct {
	Name        string    `json:"name"`
	URL         string    `json:"url"`
	State       string    `json:"state"`
	CPUFeatures string    `json:"cpu_features"`
	Version     string    `json:"version"`
	MemFreeMiB  int64     `json:"mem_free_mib"`
	Running     int       `json:"running"`
	HeartbeatAt time.Time `json:"heartbeat_at"`
	StartedAt   time.Time `json:"started_at"`
}

// Nodes lists the cluster's nodes.
func (c *Client) Nodes(ctx context.Context) ([]NodeInfo, error) {
	var out []NodeInfo
	err := c.doJSON(ctx, call{method: http.MethodGet, path: "/nodes"}, &out)
	return out, err
}

// DrainNode stops placing sandboxes on the named node and pauses its
// active ones, so they resume on other nodes.
func (c *Client) DrainNode(ctx context.Context, name string) (*NodeInfo, error) {
	return c.nodeAction(ctx, name, "drain")
}

// ActivateNode lets a drained node take sandboxes again.
func (c *Client) ActivateNode(ctx context.Context, name string) (*NodeInfo, error) {
	return c.nodeAction(ctx, name, "activate")
}

func (c *Client) nodeAction(ctx context.Context, name, action string) (*NodeInfo, error) {
	var out NodeInfo
	err := c.doJSON(ctx, call{method: http.MethodPost, path: "/nodes/" + url.PathEscape(name) + "/" + action}, &out)
	if err != nil {
		return nil, err
	}
	return &out, nil
}
