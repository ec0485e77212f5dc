package store

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
)

// dialect is what differs between the SQL engines behind the one store
// implementation: queries are written once, in SQLite's dialect with ?
// placeholders, and rewritten for PostgreSQL.
type dialect int

const (
	sqlite dialect = iota
	postgres
)

// db runs queries on either engine: it rewrites placeholders and passes
// booleans as integers (the schema stores flags as 0/1 on both engines).
type db struct {
	sql     *sql.DB
	dialect dialect
}

// rebind turns ? placeholders (outside string literals) into $1, $2, …
// for PostgreSQL.
func (d dialect) rebind(q string) string {
	if d != postgres || !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n, quoted := 0, false
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'':
			quoted = !quoted
		case c == '?' && !quoted:
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func args(in []any) []any {
	for i, a := range in {
		if v, ok := a.(bool); ok {
			if v {
				in[i] = 1
			} else {
				in[i] = 0
			}
		}
	}
	return in
}

// Errors from the driver that say the database cannot be reached are
// marked ErrUnavailable here, where they are known to come from it.

func (d *db) ExecContext(ctx context.Context, q string, a ...any) (sql.Result, error) {
	res, err := d.sql.ExecContext(ctx, d.dialect.rebind(q), args(a)...)
	return res, markUnavailable(err)
}

func (d *db) QueryContext(ctx context.Context, q string, a ...any) (*sql.Rows, error) {
	rows, err := d.sql.QueryContext(ctx, d.dialect.rebind(q), args(a)...)
	return rows, markUnavailable(err)
}

func (d *db) QueryRowContext(ctx context.Context, q string, a ...any) *row {
	return &row{d.sql.QueryRowContext(ctx, d.dialect.rebind(q), args(a)...)}
}

// row is a *sql.Row whose Scan marks connection errors.
type row struct{ r *sql.Row }

func (r *row) Scan(dest ...any) error { return markUnavailable(r.r.Scan(dest...)) }

func (d *db) Close() error { return d.sql.Close() }

// txn is a transaction on db, with the same query rewriting.
type txn struct {
	tx      *sql.Tx
	dialect dialect
}

func (t *txn) ExecContext(ctx context.Context, q string, a ...any) (sql.Result, error) {
	res, err := t.tx.ExecContext(ctx, t.dialect.rebind(q), args(a)...)
	return res, markUnavailable(err)
}

func (t *txn) QueryContext(ctx context.Context, q string, a ...any) (*sql.Rows, error) {
	rows, err := t.tx.QueryContext(ctx, t.dialect.rebind(q), args(a)...)
	return rows, markUnavailable(err)
}

func (t *txn) QueryRowContext(ctx context.Context, q string, a ...any) *row {
	return &row{t.tx.QueryRowContext(ctx, t.dialect.rebind(q), args(a)...)}
}

// tx runs fn in a transaction, committing if it returns nil.
func (d *db) tx(ctx context.Context, fn func(*txn) error) error {
	tx, err := d.sql.BeginTx(ctx, nil)
	if err != nil {
		return markUnavailable(err)
	}
	if err := fn(&txn{tx: tx, dialect: d.dialect}); err != nil {
		tx.Rollback()
		return err
	}
	return markUnavailable(tx.Commit())
}

// forUpdate locks the rows a transaction reads before it writes them back
// (PostgreSQL; SQLite's single writer already serialises transactions).
func (d dialect) forUpdate() string {
	if d == postgres {
		return " FOR UPDATE"
	}
	return ""
}
