package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Team owns sandboxes and API keys.
type Team struct {
	ID   string
	Name string
}

// EnsureTeam creates the team if it does not exist.
func (s *sqlStore) EnsureTeam(ctx context.Context, id, name string) error {
	_, err := s.db.ExecContext(ctx,
		`INSERT INTO teams(id, name, created_at) VALUES (?, ?, ?) ON CONFLICT(id) DO NOTHING`, id, name, now())
	if err != nil {
		return fmt.Errorf("ensure team %s: %w", id, err)
	}
	return nil
}

// AddAPIKey stores the hash of key for team; adding the same key twice is a no-op.
func (s *sqlStore) AddAPIKey(ctx context.Context, teamID, name, key string) error {
	_, err := s.db.ExecContext(ctx,
		`INSERT INTO api_keys(hash, team_id, name, created_at) VALUES (?, ?, ?, ?) ON CONFLICT(hash) DO NOTHING`,
		HashSecret(key), teamID, name, now())
	if err != nil {
		return fmt.Errorf("add api key: %w", err)
	}
	return nil
}

// TeamForAPIKey returns the team the key belongs to, or ErrNotFound. The
// lookup is by hash, so the comparison never touches the secret itself and
// its timing reveals nothing about stored keys.
func (s *sqlStore) TeamForAPIKey(ctx context.Context, key string) (*Team, error) {
	var t Team
	err := s.db.queryRowPrepared(ctx,
		`SELECT t.id, t.name FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE k.hash = ?`,
		HashSecret(key)).Scan(&t.ID, &t.Name)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("look up api key: %w", err)
	}
	return &t, nil
}

// CountAPIKeys returns how many API keys exist in total.
func (s *sqlStore) CountAPIKeys(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM api_keys`).Scan(&n)
	return n, err
}
