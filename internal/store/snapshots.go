package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// SavedSnapshot is a checkpoint kept on purpose, independent of its
// sandbox's later life, that new sandboxes can start from.
type SavedSnapshot struct {
	ID, TeamID, SandboxID, Name string
	Dir                         string // committed snapshot
	SizeBytes                   int64
	Source                      Sandbox // the sandbox as it was: how to restore the snapshot
	CreatedAt                   time.Time
}

const savedColumns = `id, team_id, sandbox_id, name, dir, size_bytes, source, created_at`

func scanSaved(row scanner) (*SavedSnapshot, error) {
	var s SavedSnapshot
	var src, created string
	if err := row.Scan(&s.ID, &s.TeamID, &s.SandboxID, &s.Name, &s.Dir, &s.SizeBytes, &src, &created); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(src), &s.Source); err != nil {
		return nil, fmt.Errorf("snapshot %s source: %w", s.ID, err)
	}
	s.CreatedAt = parseTime(created)
	return &s, nil
}

// InsertSavedSnapshot stores a saved snapshot.
func (s *sqlStore) InsertSavedSnapshot(ctx context.Context, snap *SavedSnapshot) error {
	snap.CreatedAt = time.Now().UTC()
	src, _ := json.Marshal(snap.Source)
	_, err := s.db.ExecContext(ctx, `INSERT INTO snapshots(`+savedColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		snap.ID, snap.TeamID, snap.SandboxID, snap.Name, snap.Dir, snap.SizeBytes, string(src),
		snap.CreatedAt.Format(timeFormat))
	if err != nil {
		return fmt.Errorf("insert snapshot: %w", err)
	}
	return nil
}

// GetSavedSnapshot returns a team's saved snapshot.
func (s *sqlStore) GetSavedSnapshot(ctx context.Context, teamID, id string) (*SavedSnapshot, error) {
	snap, err := scanSaved(s.db.QueryRowContext(ctx, `SELECT `+savedColumns+` FROM snapshots
		WHERE id = ? AND team_id = ?`, id, teamID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	return snap, err
}

// ListSavedSnapshots returns the team's saved snapshots, oldest first.
func (s *sqlStore) ListSavedSnapshots(ctx context.Context, teamID string) ([]*SavedSnapshot, error) {
	return queryAll(ctx, s.db, scanSaved, `SELECT `+savedColumns+` FROM snapshots WHERE team_id = ? ORDER BY created_at`, teamID)
}

// DeleteSavedSnapshot removes a saved snapshot's record.
func (s *sqlStore) DeleteSavedSnapshot(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM snapshots WHERE id = ?`, id)
	return err
}
