package store

import (
	"context"
	"database/sql"
	"fmt"

	_ "modernc.org/sqlite" // pure-Go SQLite driver, registers "sqlite"
)

// openSQLite opens (creating if needed) the SQLite file at path and migrates it.
func openSQLite(ctx context.Context, path string) (Store, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)"
	sqldb, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// One writer at a time is SQLite's model; a single connection also keeps
	// transactions simple and avoids SQLITE_BUSY between our own goroutines.
	sqldb.SetMaxOpenConns(1)
	s := &sqlStore{db: &db{sql: sqldb, dialect: sqlite}}
	if err := s.migrate(ctx); err != nil {
		sqldb.Close()
		return nil, err
	}
	return s, nil
}
