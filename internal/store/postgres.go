package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx" with database/sql
)

// openPostgres connects to the PostgreSQL database url names and migrates it.
func openPostgres(ctx context.Context, url string) (Store, error) {
	sqldb, err := sql.Open("pgx", url)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	sqldb.SetMaxOpenConns(16)
	sqldb.SetMaxIdleConns(8)
	// Connections broken by a PostgreSQL restart are dropped and redialled.
	sqldb.SetConnMaxIdleTime(time.Minute)
	s := &sqlStore{db: &db{sql: sqldb, dialect: postgres}}
	if err := s.migrate(ctx); err != nil {
		sqldb.Close()
		return nil, err
	}
	return s, nil
}

// ErrUnavailable marks errors from a database that cannot be reached; the
// API answers them with 503 and the caller may retry.
var ErrUnavailable = errors.New("store: database unavailable")

// IsUnavailable reports whether err comes from a database that could not
// be reached, as opposed to a query that failed.
func IsUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }

// unavailableError is a driver error marked ErrUnavailable.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string   { return e.err.Error() }
func (e *unavailableError) Unwrap() []error { return []error{e.err, ErrUnavailable} }

// markUnavailable marks err if it says the connection to the database
// failed or was lost (refused, reset, server shutting down), as opposed
// to a query that failed.
func markUnavailable(err error) error {
	if err == nil || !connectionLost(err) {
		return err
	}
	return &unavailableError{err}
}

func connectionLost(err error) bool {
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.EOF) || errors.Is(err, sql.ErrConnDone) {
		return true
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// 08: connection exception; 57P: operator intervention (shutdown,
		// crash, cannot connect now).
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57P")
	}
	var ne net.Error
	return errors.As(err, &ne) || pgconn.SafeToRetry(err) || strings.Contains(err.Error(), "conn closed")
}

// isUniqueViolation reports whether err is a unique-constraint violation on either engine.
func isUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	return strings.Contains(err.Error(), "UNIQUE")
}
