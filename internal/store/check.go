package store

import (
	"context"
	"fmt"
)

// Check runs a real query, proving the database answers (for health checks).
func (s *sqlStore) Check(ctx context.Context) error {
	var n int
	if err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM teams").Scan(&n); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}
