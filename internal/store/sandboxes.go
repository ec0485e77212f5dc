package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sandbox statuses, as the API reports them.
const (
	StatusStarting = "starting"
	StatusActive   = "active"
	StatusPausing  = "pausing"
	StatusPaused   = "paused"
	StatusResuming = "resuming"
	StatusFailed   = "failed"
)

// Sandbox is one sandbox's durable record.
type Sandbox struct {
	ID                string
	TeamID            string
	Name              string
	Status            string
	Template          string
	VCPU              int
	MemoryMiB         int
	DiskMiB           int
	Metadata          map[string]string
	Env               map[string]string
	TimeoutSeconds    *int
	AutoDeleteSeconds *int
	Error             string
	TokenGeneration   int    // bumped on every resume; tokens of older generations are invalid
	SnapshotDir       string // complete checkpoint while paused, else ""
	SnapshotBytes     int64
	CreatedAt         time.Time
	StatusChangedAt   time.Time
	PauseAt           *time.Time // timeout: when an active sandbox gets paused
	DeleteAt          *time.Time // auto-delete: when a paused sandbox gets deleted
	AgentPath         string     // content-addressed agent binary the sandbox runs
	BaseImage         string     // what the root filesystem comes from, if not Template (e.g. oci:REF@DIGEST)
	Defaults          ExecDefaults
	ActiveMs          int64    // time spent active before StatusChangedAt
	PausedMs          int64    // time spent paused before StatusChangedAt
	Network           *Network // egress rules; nil: the server's defaults
	PreviewPrivate    bool     // preview URLs need the sandbox's access token
	DeleteOnTimeout   bool     // the timeout deletes the sandbox rather than pausing it
	NoAutoResume      bool     // E2B traffic does not resume it while paused (autoResume: false)

	// Node owns the sandbox (runs it, or holds its snapshot); Epoch is bumped
	// whenever ownership moves (ClaimSandbox). UpdateSandbox is fenced by
	// both: a node acting on a stale copy gets ErrFenced.
	Node  string
	Epoch int64
	// SnapshotUpload is the state of the paused snapshot's upload to the
	// object store ("", pending, uploading, portable, failed), with detail.
	SnapshotUpload       string
	SnapshotUploadDetail string
}

// ExecDefaults apply to every command run in a sandbox unless the request
// says otherwise; sandboxes started from a template inherit its build's.
type ExecDefaults struct {
	Env     map[string]string `json:"env,omitempty"`
	Workdir string            `json:"workdir,omitempty"`
	User    string            `json:"user,omitempty"`
}

func (d ExecDefaults) json() string {
	b, _ := json.Marshal(d)
	return string(b)
}

// Usage is metered time, including the current stretch up to now.
func (sb *Sandbox) Usage(now time.Time) (active, paused time.Duration) {
	active = time.Duration(sb.ActiveMs) * time.Millisecond
	paused = time.Duration(sb.PausedMs) * time.Millisecond
	switch sb.Status {
	case StatusActive:
		active += now.Sub(sb.StatusChangedAt)
	case StatusPaused:
		paused += now.Sub(sb.StatusChangedAt)
	}
	return active, paused
}

const sandboxColumns = `id, team_id, name, status, template, vcpu, memory_mib, disk_mib, metadata, env,
	timeout_seconds, auto_delete_seconds, error, token_generation, snapshot_dir, snapshot_bytes,
	created_at, status_changed_at, pause_at, delete_at, active_ms, paused_ms, agent_path, base_image, exec_defaults,
	network, preview_private, delete_on_timeout, node, epoch, snapshot_upload, snapshot_upload_detail, no_auto_resume`

type scanner interface{ Scan(...any) error }

func scanSandbox(row scanner) (*Sandbox, error) {
	var sb Sandbox
	var meta, env, created, changed string
	var timeout, autoDel sql.NullInt64
	var pauseAt, deleteAt sql.NullString
	var defaults, network string
	err := row.Scan(&sb.ID, &sb.TeamID, &sb.Name, &sb.Status, &sb.Template, &sb.VCPU, &sb.MemoryMiB,
		&sb.DiskMiB, &meta, &env, &timeout, &autoDel, &sb.Error, &sb.TokenGeneration, &sb.SnapshotDir,
		&sb.SnapshotBytes, &created, &changed, &pauseAt, &deleteAt, &sb.ActiveMs, &sb.PausedMs, &sb.AgentPath, &sb.BaseImage, &defaults,
		&network, &sb.PreviewPrivate, &sb.DeleteOnTimeout, &sb.Node, &sb.Epoch, &sb.SnapshotUpload, &sb.SnapshotUploadDetail, &sb.NoAutoResume)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(meta), &sb.Metadata); err != nil {
		return nil, fmt.Errorf("sandbox %s metadata: %w", sb.ID, err)
	}
	if err := json.Unmarshal([]byte(env), &sb.Env); err != nil {
		return nil, fmt.Errorf("sandbox %s env: %w", sb.ID, err)
	}
	sb.TimeoutSeconds = intPtr(timeout)
	sb.AutoDeleteSeconds = intPtr(autoDel)
	sb.CreatedAt = parseTime(created)
	sb.StatusChangedAt = parseTime(changed)
	json.Unmarshal([]byte(defaults), &sb.Defaults)
	sb.PauseAt = timePtr(pauseAt)
	sb.DeleteAt = timePtr(deleteAt)
	if sb.Network, err = parseNetwork(network); err != nil {
		return nil, fmt.Errorf("sandbox %s network: %w", sb.ID, err)
	}
	return &sb, nil
}

func timePtr(v sql.NullString) *time.Time {
	if !v.Valid {
		return nil
	}
	t := parseTime(v.String)
	return &t
}

func nullTime(t *time.Time) sql.NullString {
	if t == nil {
		return sql.NullString{}
	}
	return sql.NullString{String: t.UTC().Format(timeFormat), Valid: true}
}

func intPtr(v sql.NullInt64) *int {
	if !v.Valid {
		return nil
	}
	n := int(v.Int64)
	return &n
}

func nullInt(p *int) sql.NullInt64 {
	if p == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: int64(*p), Valid: true}
}

func jsonMap(m map[string]string) string {
	if m == nil {
		m = map[string]string{}
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// InsertSandbox stores a new sandbox. CreatedAt and StatusChangedAt are set now.
func (s *sqlStore) InsertSandbox(ctx context.Context, sb *Sandbox) error {
	t := time.Now().UTC()
	sb.CreatedAt, sb.StatusChangedAt = t, t
	_, err := s.db.ExecContext(ctx, `INSERT INTO sandboxes(`+sandboxColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		sb.ID, sb.TeamID, sb.Name, sb.Status, sb.Template, sb.VCPU, sb.MemoryMiB, sb.DiskMiB,
		jsonMap(sb.Metadata), jsonMap(sb.Env), nullInt(sb.TimeoutSeconds), nullInt(sb.AutoDeleteSeconds),
		sb.Error, sb.TokenGeneration, sb.SnapshotDir, sb.SnapshotBytes,
		t.Format(timeFormat), t.Format(timeFormat), nullTime(sb.PauseAt), nullTime(sb.DeleteAt), 0, 0, sb.AgentPath, sb.BaseImage, sb.Defaults.json(),
		sb.Network.json(), sb.PreviewPrivate, sb.DeleteOnTimeout, sb.Node, sb.Epoch, sb.SnapshotUpload, sb.SnapshotUploadDetail, sb.NoAutoResume)
	if err != nil {
		return fmt.Errorf("insert sandbox %s: %w", sb.ID, err)
	}
	return nil
}

// GetSandbox returns the sandbox with id owned by teamID ("" matches any team).
func (s *sqlStore) GetSandbox(ctx context.Context, teamID, id string) (*Sandbox, error) {
	row := s.db.queryRowPrepared(ctx, `SELECT `+sandboxColumns+` FROM sandboxes
		WHERE id = ? AND (? = '' OR team_id = ?)`, id, teamID, teamID)
	sb, err := scanSandbox(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get sandbox %s: %w", id, err)
	}
	return sb, nil
}

// ListSandboxes returns the team's sandboxes ("" = all teams), oldest first,
// keeping only those whose metadata contains every pair in filter.
func (s *sqlStore) ListSandboxes(ctx context.Context, teamID string, filter map[string]string) ([]*Sandbox, error) {
	all, err := queryAll(ctx, s.db, scanSandbox, `SELECT `+sandboxColumns+` FROM sandboxes
		WHERE (? = '' OR team_id = ?) ORDER BY created_at, id`, teamID, teamID)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	var out []*Sandbox
	for _, sb := range all {
		if matches(sb.Metadata, filter) {
			out = append(out, sb)
		}
	}
	return out, nil
}

// NodeSandboxes returns the sandboxes of nodes in statuses (any when
// none), in no set order; the index sandboxes_node(node, status) serves it.
func (s *sqlStore) NodeSandboxes(ctx context.Context, nodes []string, statuses ...string) ([]*Sandbox, error) {
	if len(nodes) == 0 {
		return nil, nil
	}
	q := `SELECT ` + sandboxColumns + ` FROM sandboxes WHERE node IN (` + placeholders(len(nodes)) + `)`
	args := make([]any, 0, len(nodes)+len(statuses))
	for _, n := range nodes {
		args = append(args, n)
	}
	if len(statuses) > 0 {
		q += ` AND status IN (` + placeholders(len(statuses)) + `)`
		for _, st := range statuses {
			args = append(args, st)
		}
	}
	out, err := queryAll(ctx, s.db, scanSandbox, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes of nodes %q: %w", nodes, err)
	}
	return out, nil
}

// placeholders is n comma-separated ? placeholders, for an IN list.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

func matches(meta, filter map[string]string) bool {
	for k, v := range filter {
		if got, ok := meta[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// UpdateSandbox writes every mutable field of sb (not its owner node and
// epoch, which move only by ClaimSandbox, nor its snapshot upload state,
// which only SetSnapshotUpload writes). If the status changed from
// what is stored, the time spent in the old status is metered (for the
// sandbox and its team) and StatusChangedAt is set to now. It is fenced:
// if the stored node or epoch is no longer sb's, nothing changes and the
// error is ErrFenced.
func (s *sqlStore) UpdateSandbox(ctx context.Context, sb *Sandbox) error {
	return s.tx(ctx, func(tx *txn) error {
		var old, changed, node string
		var activeMs, pausedMs, epoch int64
		err := tx.QueryRowContext(ctx, `SELECT status, status_changed_at, active_ms, paused_ms, node, epoch
			FROM sandboxes WHERE id = ?`+s.db.dialect.forUpdate(),
			sb.ID).Scan(&old, &changed, &activeMs, &pausedMs, &node, &epoch)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("update sandbox %s: %w", sb.ID, err)
		}
		if node != sb.Node || epoch != sb.Epoch {
			return fmt.Errorf("update sandbox %s (node %q epoch %d, now %q epoch %d): %w",
				sb.ID, sb.Node, sb.Epoch, node, epoch, ErrFenced)
		}
		sb.ActiveMs, sb.PausedMs = activeMs, pausedMs
		if old != sb.Status {
			t := time.Now().UTC()
			spent, err := meterStretch(ctx, tx, sb.TeamID, old, parseTime(changed), t)
			if err != nil {
				return fmt.Errorf("meter sandbox %s: %w", sb.ID, err)
			}
			switch old {
			case StatusActive:
				sb.ActiveMs += spent
			case StatusPaused:
				sb.PausedMs += spent
			}
			sb.StatusChangedAt = t
		}
		_, err = tx.ExecContext(ctx, `UPDATE sandboxes SET name = ?, status = ?, metadata = ?, env = ?,
			timeout_seconds = ?, auto_delete_seconds = ?, error = ?, token_generation = ?, snapshot_dir = ?,
			snapshot_bytes = ?, status_changed_at = ?, pause_at = ?, delete_at = ?, active_ms = ?, paused_ms = ?,
			network = ?, preview_private = ?, delete_on_timeout = ?, no_auto_resume = ?
			WHERE id = ? AND node = ? AND epoch = ?`,
			sb.Name, sb.Status, jsonMap(sb.Metadata), jsonMap(sb.Env), nullInt(sb.TimeoutSeconds),
			nullInt(sb.AutoDeleteSeconds), sb.Error, sb.TokenGeneration, sb.SnapshotDir, sb.SnapshotBytes,
			sb.StatusChangedAt.Format(timeFormat), nullTime(sb.PauseAt), nullTime(sb.DeleteAt),
			sb.ActiveMs, sb.PausedMs, sb.Network.json(), sb.PreviewPrivate, sb.DeleteOnTimeout, sb.NoAutoResume,
			sb.ID, sb.Node, sb.Epoch)
		if err != nil {
			return fmt.Errorf("update sandbox %s: %w", sb.ID, err)
		}
		// Tokens of older generations can never be valid again.
		_, err = tx.ExecContext(ctx, `DELETE FROM access_tokens WHERE sandbox_id = ? AND generation < ?`,
			sb.ID, sb.TokenGeneration)
		return err
	})
}

// DueTimers returns sandboxes whose pause or delete deadline has passed.
func (s *sqlStore) DueTimers(ctx context.Context, now time.Time) ([]*Sandbox, error) {
	t := now.UTC().Format(timeFormat)
	out, err := queryAll(ctx, s.db, scanSandbox, `SELECT `+sandboxColumns+` FROM sandboxes
		WHERE (status = ? AND pause_at IS NOT NULL AND pause_at <= ?)
		   OR (status = ? AND delete_at IS NOT NULL AND delete_at <= ?)`,
		StatusActive, t, StatusPaused, t)
	if err != nil {
		return nil, fmt.Errorf("due timers: %w", err)
	}
	return out, nil
}

// NextTimer returns the earliest deadline DueTimers looks at: one row of
// each of the timer indexes.
func (s *sqlStore) NextTimer(ctx context.Context) (time.Time, bool, error) {
	var pause, del sql.NullString
	err := s.db.QueryRowContext(ctx, `SELECT
		(SELECT MIN(pause_at) FROM sandboxes WHERE status = ? AND pause_at IS NOT NULL),
		(SELECT MIN(delete_at) FROM sandboxes WHERE status = ? AND delete_at IS NOT NULL)`,
		StatusActive, StatusPaused).Scan(&pause, &del)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("next timer: %w", err)
	}
	var next time.Time
	for _, v := range []sql.NullString{pause, del} {
		if t := parseTime(v.String); v.Valid && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	return next, !next.IsZero(), nil
}

// CountLive returns how many of the team's sandboxes hold compute (starting,
// active, pausing or resuming).
func (s *sqlStore) CountLive(ctx context.Context, teamID string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sandboxes WHERE team_id = ? AND status IN (?, ?, ?, ?)`,
		teamID, StatusStarting, StatusActive, StatusPausing, StatusResuming).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count live sandboxes: %w", err)
	}
	return n, nil
}

// CountByStatus returns the number of sandboxes in each status.
func (s *sqlStore) CountByStatus(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT status, COUNT(*) FROM sandboxes GROUP BY status`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[st] = n
	}
	return out, rows.Err()
}

// TeamUsage is a team's metered totals, including its live sandboxes' current stretch.
type TeamUsage struct {
	Active, Paused time.Duration
	SnapshotBytes  int64
}

// TeamUsage sums the team's usage: closed stretches from team_usage (which
// outlives deleted sandboxes) plus the open stretch of every live sandbox.
func (s *sqlStore) TeamUsage(ctx context.Context, teamID string, now time.Time) (*TeamUsage, error) {
	var u TeamUsage
	var activeMs, pausedMs int64
	err := s.db.QueryRowContext(ctx, `SELECT active_ms, paused_ms FROM team_usage WHERE team_id = ?`, teamID).
		Scan(&activeMs, &pausedMs)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("team usage: %w", err)
	}
	u.Active = time.Duration(activeMs) * time.Millisecond
	u.Paused = time.Duration(pausedMs) * time.Millisecond
	list, err := s.ListSandboxes(ctx, teamID, nil)
	if err != nil {
		return nil, err
	}
	for _, sb := range list {
		switch sb.Status {
		case StatusActive:
			u.Active += now.Sub(sb.StatusChangedAt)
		case StatusPaused:
			u.Paused += now.Sub(sb.StatusChangedAt)
		}
		u.SnapshotBytes += sb.SnapshotBytes
	}
	// Snapshots the team keeps besides its paused sandboxes': saved ones
	// and its templates'.
	var kept int64
	err = s.db.QueryRowContext(ctx, `SELECT CAST(
		(SELECT COALESCE(SUM(size_bytes), 0) FROM snapshots WHERE team_id = ?) +
		(SELECT COALESCE(SUM(snapshot_bytes), 0) FROM templates WHERE team_id = ?) AS BIGINT)`, teamID, teamID).Scan(&kept)
	if err != nil {
		return nil, fmt.Errorf("team usage: snapshot bytes: %w", err)
	}
	u.SnapshotBytes += kept
	return &u, nil
}

// meterStretch adds the time a sandbox spent in status from changedAt to
// now to its team's totals (metered statuses only: active and paused) and
// returns it in milliseconds.
func meterStretch(ctx context.Context, tx *txn, teamID, status string, changedAt, now time.Time) (int64, error) {
	var col string
	switch status {
	case StatusActive:
		col = "active_ms"
	case StatusPaused:
		col = "paused_ms"
	default:
		return 0, nil
	}
	spent := now.Sub(changedAt).Milliseconds()
	_, err := tx.ExecContext(ctx, `INSERT INTO team_usage(team_id, `+col+`) VALUES (?, ?)
		ON CONFLICT(team_id) DO UPDATE SET `+col+` = team_usage.`+col+` + excluded.`+col, teamID, spent)
	return spent, err
}

// DeleteSandbox removes the sandbox and its tokens. The time it spent in its
// last status is metered first, so its team's usage keeps it.
func (s *sqlStore) DeleteSandbox(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *txn) error {
		var teamID, status, changed string
		err := tx.QueryRowContext(ctx, `SELECT team_id, status, status_changed_at FROM sandboxes WHERE id = ?`+s.db.dialect.forUpdate(), id).
			Scan(&teamID, &status, &changed)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("delete sandbox %s: %w", id, err)
		}
		if _, err := meterStretch(ctx, tx, teamID, status, parseTime(changed), time.Now().UTC()); err != nil {
			return fmt.Errorf("meter sandbox %s: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM sandboxes WHERE id = ?`, id); err != nil {
			return fmt.Errorf("delete sandbox %s: %w", id, err)
		}
		return nil
	})
}

// AddAccessToken stores the hash of a data-plane token for the sandbox's
// given token generation.
func (s *sqlStore) AddAccessToken(ctx context.Context, sandboxID string, generation int, token string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO access_tokens(hash, sandbox_id, generation, created_at)
		VALUES (?, ?, ?, ?)`, HashSecret(token), sandboxID, generation, now())
	if err != nil {
		return fmt.Errorf("add access token: %w", err)
	}
	return nil
}

// CheckAccessToken reports whether token is valid for the sandbox: it must
// exist and belong to the sandbox's current token generation.
func (s *sqlStore) CheckAccessToken(ctx context.Context, sandboxID, token string) (bool, error) {
	var n int
	err := s.db.queryRowPrepared(ctx, `SELECT COUNT(*) FROM access_tokens a JOIN sandboxes s ON s.id = a.sandbox_id
		WHERE a.hash = ? AND a.sandbox_id = ? AND a.generation = s.token_generation`,
		HashSecret(token), sandboxID).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("check access token: %w", err)
	}
	return n > 0, nil
}
