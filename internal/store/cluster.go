package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrFenced is returned by a fenced update when the sandbox's owner node or
// epoch moved on since the caller read it: the caller's copy is stale and it
// must not act on the sandbox.
var ErrFenced = errors.New("store: fenced: sandbox owned by another node or epoch")

// Node states.
const (
	NodeActive   = "active"   // takes new sandboxes
	NodeDraining = "draining" // takes no new sandboxes; its active ones get paused
	NodeLost     = "lost"     // stopped heartbeating for longer than its lease
)

// Snapshot upload states of a paused sandbox (Sandbox.SnapshotUpload).
const (
	UploadNone      = ""
	UploadPending   = "pending"
	UploadUploading = "uploading"
	UploadPortable  = "portable" // the manifest is in the object store
	UploadFailed    = "failed"
)

// Node is one stasisd of a cluster, as it registered and last heartbeat.
type Node struct {
	Name, URL   string
	E2BURL      string // where other nodes forward E2B traffic; "" when the node serves none
	State       string // NodeActive, NodeDraining or NodeLost
	CPUFeatures string
	Version     string
	MemFreeMiB  int64
	Running     int
	HeartbeatAt time.Time
	StartedAt   time.Time
}

// Times in the cluster tables are Unix milliseconds from the writing
// node's clock: integers compare correctly on both engines. Nodes' clocks
// are assumed synchronised (NTP) to well within a lease.
func unixMs(t time.Time) int64 { return t.UnixMilli() }

// UpsertNode registers n (state active unless n.State says otherwise), or
// refreshes a node of that name that registered before (a restart).
func (s *sqlStore) UpsertNode(ctx context.Context, n Node) error {
	if n.Name == "" {
		return fmt.Errorf("upsert node: empty name")
	}
	if n.State == "" {
		n.State = NodeActive
	}
	t := time.Now()
	if n.StartedAt.IsZero() {
		n.StartedAt = t
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO nodes(name, url, e2b_url, state, cpu_features, version, mem_free_mib,
		running, heartbeat_ms, started_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT(name) DO UPDATE SET url = excluded.url, e2b_url = excluded.e2b_url, state = excluded.state,
		cpu_features = excluded.cpu_features, version = excluded.version, mem_free_mib = excluded.mem_free_mib,
		running = excluded.running, heartbeat_ms = excluded.heartbeat_ms, started_ms = excluded.started_ms`,
		n.Name, n.URL, n.E2BURL, n.State, n.CPUFeatures, n.Version, n.MemFreeMiB, n.Running, unixMs(t), unixMs(n.StartedAt))
	if err != nil {
		return fmt.Errorf("upsert node %s: %w", n.Name, err)
	}
	return nil
}

// HeartbeatNode records that the node is alive now, with its load. It does
// not change the node's state. An unknown node is ErrNotFound.
func (s *sqlStore) HeartbeatNode(ctx context.Context, name string, memFreeMiB int64, running int) error {
	res, err := s.db.ExecContext(ctx, `UPDATE nodes SET mem_free_mib = ?, running = ?, heartbeat_ms = ? WHERE name = ?`,
		memFreeMiB, running, unixMs(time.Now()), name)
	if err != nil {
		return fmt.Errorf("heartbeat node %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("heartbeat node %s: %w", name, ErrNotFound)
	}
	return nil
}

// ListNodes returns every node that ever registered, by name.
func (s *sqlStore) ListNodes(ctx context.Context) ([]Node, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, url, e2b_url, state, cpu_features, version, mem_free_mib, running,
		heartbeat_ms, started_ms FROM nodes ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		var n Node
		var hb, started int64
		if err := rows.Scan(&n.Name, &n.URL, &n.E2BURL, &n.State, &n.CPUFeatures, &n.Version, &n.MemFreeMiB, &n.Running,
			&hb, &started); err != nil {
			return nil, fmt.Errorf("list nodes: %w", err)
		}
		n.HeartbeatAt, n.StartedAt = time.UnixMilli(hb).UTC(), time.UnixMilli(started).UTC()
		out = append(out, n)
	}
	return out, rows.Err()
}

// SetNodeState sets a node's state (NodeActive, NodeDraining or NodeLost).
func (s *sqlStore) SetNodeState(ctx context.Context, name, state string) error {
	switch state {
	case NodeActive, NodeDraining, NodeLost:
	default:
		return fmt.Errorf("set node %s state: unknown state %q", name, state)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE nodes SET state = ? WHERE name = ?`, state, name)
	if err != nil {
		return fmt.Errorf("set node %s state: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("set node %s state: %w", name, ErrNotFound)
	}
	return nil
}

// MarkLostNodes declares every node not yet lost whose last heartbeat is
// older than lease lost, and returns their names. Concurrent callers on
// several nodes each get only the nodes they changed.
func (s *sqlStore) MarkLostNodes(ctx context.Context, lease time.Duration) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `UPDATE nodes SET state = ? WHERE state <> ? AND heartbeat_ms < ? RETURNING name`,
		NodeLost, NodeLost, unixMs(time.Now().Add(-lease)))
	if err != nil {
		return nil, fmt.Errorf("mark lost nodes: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, fmt.Errorf("mark lost nodes: %w", err)
		}
		out = append(out, name)
	}
	return out, rows.Err()
}

// ClaimSandbox makes toNode the sandbox's owner if its epoch is still
// expectEpoch, and returns the new epoch (expectEpoch+1). If another claim
// came first the error is ErrFenced; an unknown sandbox is ErrNotFound.
func (s *sqlStore) ClaimSandbox(ctx context.Context, id string, expectEpoch int64, toNode string) (int64, error) {
	var epoch int64
	err := s.db.QueryRowContext(ctx, `UPDATE sandboxes SET node = ?, epoch = epoch + 1 WHERE id = ? AND epoch = ?
		RETURNING epoch`, toNode, id, expectEpoch).Scan(&epoch)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, s.fenceOrMissing(ctx, "claim", id)
	}
	if err != nil {
		return 0, fmt.Errorf("claim sandbox %s: %w", id, err)
	}
	return epoch, nil
}

// SetSnapshotUpload records the upload state of the sandbox's snapshot, if
// its epoch is still epoch (else ErrFenced: the sandbox moved on and the
// upload is of a stale snapshot).
func (s *sqlStore) SetSnapshotUpload(ctx context.Context, id string, epoch int64, state, detail string) error {
	switch state {
	case UploadNone, UploadPending, UploadUploading, UploadPortable, UploadFailed:
	default:
		return fmt.Errorf("set snapshot upload of %s: unknown state %q", id, state)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE sandboxes SET snapshot_upload = ?, snapshot_upload_detail = ?
		WHERE id = ? AND epoch = ?`, state, detail, id, epoch)
	if err != nil {
		return fmt.Errorf("set snapshot upload of %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return s.fenceOrMissing(ctx, "set snapshot upload of", id)
	}
	return nil
}

// fenceOrMissing tells why a fenced update of sandbox id changed nothing.
func (s *sqlStore) fenceOrMissing(ctx context.Context, op, id string) error {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sandboxes WHERE id = ?`, id).Scan(&n); err != nil {
		return fmt.Errorf("%s sandbox %s: %w", op, id, err)
	}
	if n == 0 {
		return fmt.Errorf("%s sandbox %s: %w", op, id, ErrNotFound)
	}
	return fmt.Errorf("%s sandbox %s: %w", op, id, ErrFenced)
}

// TryLease takes the named lease for holder until ttl from now, or renews
// it if holder has it already. It returns false while another holder's
// lease has not expired. One atomic upsert, so of concurrent callers at
// most one wins.
func (s *sqlStore) TryLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	t := time.Now()
	res, err := s.db.ExecContext(ctx, `INSERT INTO leases(name, holder, expires_ms) VALUES (?, ?, ?)
		ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
		WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?`,
		name, holder, unixMs(t.Add(ttl)), unixMs(t))
	if err != nil {
		return false, fmt.Errorf("lease %s: %w", name, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("lease %s: %w", name, err)
	}
	return n == 1, nil
}

// ReleaseLease gives up holder's lease early (a no-op if it is not holder's).
func (s *sqlStore) ReleaseLease(ctx context.Context, name, holder string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM leases WHERE name = ? AND holder = ?`, name, holder); err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}
