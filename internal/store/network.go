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

// Network is a sandbox's egress rules as the client gave them.
type Network struct {
	AllowOut []string `json:"allow_out"`
	DenyOut  []string `json:"deny_out"`
}

// Clone returns a deep copy (nil stays nil).
func (n *Network) Clone() *Network {
	if n == nil {
		return nil
	}
	return &Network{AllowOut: append([]string{}, n.AllowOut...), DenyOut: append([]string{}, n.DenyOut...)}
}

func (n *Network) json() string {
	if n == nil {
		return ""
	}
	b, _ := json.Marshal(n)
	return string(b)
}

func parseNetwork(s string) (*Network, error) {
	if s == "" {
		return nil, nil
	}
	var n Network
	if err := json.Unmarshal([]byte(s), &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// NetworkEvent is one row of a sandbox's network log. Kind "connection"
// is an outbound connection and its verdict.
type NetworkEvent struct {
	ID        int64
	SandboxID string
	Time      time.Time
	Kind      string
	Host      string
	DstIP     string
	DstPort   int
	Verdict   string
	MatchRule string
	BytesSent int64
	BytesRecv int64
	// Kind "request": a request a secret was injected into (or refused).
	Method         string
	Path           string
	Status         int
	UpstreamStatus *int
	LatencyMs      *int64
	SecretID       string
	ErrorCode      string
}

// NetworkLogWrite is one change to the network log: a new row (Done
// false; the stored row's ID is written back into Event.ID), or the final
// byte counts of a row inserted by an earlier write of the same Event.
type NetworkLogWrite struct {
	Event                *NetworkEvent
	Done                 bool
	BytesSent, BytesRecv int64
}

// WriteNetworkLog applies a batch of inserts and byte-count updates in one
// transaction. Rows of sandboxes that no longer exist are skipped.
func (s *sqlStore) WriteNetworkLog(ctx context.Context, batch []NetworkLogWrite) error {
	return s.tx(ctx, func(tx *txn) error {
		for _, w := range batch {
			e := w.Event
			if !w.Done {
				err := tx.QueryRowContext(ctx, `INSERT INTO network_log(sandbox_id, ts_us, kind, host, dst_ip,
					dst_port, verdict, match_rule, bytes_sent, bytes_recv)
					SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM sandboxes WHERE id = ?)
					RETURNING id`,
					e.SandboxID, e.Time.UnixMicro(), e.Kind, e.Host, e.DstIP, e.DstPort, e.Verdict, e.MatchRule,
					e.BytesSent, e.BytesRecv, e.SandboxID).Scan(&e.ID)
				if errors.Is(err, sql.ErrNoRows) {
					e.ID = -1 // its sandbox is gone
					continue
				}
				if err != nil {
					return fmt.Errorf("network log insert: %w", err)
				}
				continue
			}
			if e.ID <= 0 {
				continue // never stored
			}
			if _, err := tx.ExecContext(ctx, `UPDATE network_log SET bytes_sent = ?, bytes_recv = ? WHERE id = ?`,
				w.BytesSent, w.BytesRecv, e.ID); err != nil {
				return fmt.Errorf("network log update: %w", err)
			}
		}
		return nil
	})
}

// TrimNetworkLog deletes a sandbox's oldest rows beyond the newest keep.
func (s *sqlStore) TrimNetworkLog(ctx context.Context, sandboxID string, keep int) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM network_log WHERE sandbox_id = ? AND id <= (
		SELECT id FROM network_log WHERE sandbox_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)`,
		sandboxID, sandboxID, keep)
	if err != nil {
		return fmt.Errorf("trim network log of %s: %w", sandboxID, err)
	}
	return nil
}

// NetworkLogQuery selects rows of one sandbox's log, newest first.
type NetworkLogQuery struct {
	SandboxID string
	BeforeID  int64     // rows with a smaller ID only (0: no bound)
	Before    time.Time // rows strictly older only (zero: no bound)
	Since     time.Time // rows at or after only (zero: no bound)
	Verdict   string    // "" = any
	Limit     int
}

// ListNetworkLog returns up to q.Limit rows, newest first, and whether
// there are more.
func (s *sqlStore) ListNetworkLog(ctx context.Context, q NetworkLogQuery) ([]*NetworkEvent, bool, error) {
	where := []string{"sandbox_id = ?"}
	args := []any{q.SandboxID}
	if q.BeforeID > 0 {
		where, args = append(where, "id < ?"), append(args, q.BeforeID)
	}
	if !q.Before.IsZero() {
		where, args = append(where, "ts_us < ?"), append(args, q.Before.UnixMicro())
	}
	if !q.Since.IsZero() {
		where, args = append(where, "ts_us >= ?"), append(args, q.Since.UnixMicro())
	}
	if q.Verdict != "" {
		where, args = append(where, "kind = 'connection' AND verdict = ?"), append(args, q.Verdict)
	}
	args = append(args, q.Limit+1)
	rows, err := s.db.QueryContext(ctx, `SELECT id, sandbox_id, ts_us, kind, host, dst_ip, dst_port, verdict,
		match_rule, bytes_sent, bytes_recv, method, path, status, upstream_status, latency_ms, secret_id, error_code
		FROM network_log WHERE `+strings.Join(where, " AND ")+`
		ORDER BY id DESC LIMIT ?`, args...)
	if err != nil {
		return nil, false, fmt.Errorf("network log of %s: %w", q.SandboxID, err)
	}
	defer rows.Close()
	var out []*NetworkEvent
	for rows.Next() {
		var e NetworkEvent
		var ts int64
		var up, lat sql.NullInt64
		if err := rows.Scan(&e.ID, &e.SandboxID, &ts, &e.Kind, &e.Host, &e.DstIP, &e.DstPort, &e.Verdict,
			&e.MatchRule, &e.BytesSent, &e.BytesRecv, &e.Method, &e.Path, &e.Status, &up, &lat, &e.SecretID,
			&e.ErrorCode); err != nil {
			return nil, false, err
		}
		e.UpstreamStatus = intPtr(up)
		if lat.Valid {
			e.LatencyMs = &lat.Int64
		}
		e.Time = time.UnixMicro(ts).UTC()
		out = append(out, &e)
	}
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	more := len(out) > q.Limit
	if more {
		out = out[:q.Limit]
	}
	return out, more, nil
}
