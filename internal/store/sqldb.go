package store

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
	"sync"
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
	stmts   sync.Map // query -> *sql.Stmt, see prepared
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

// queryAll runs a query and scans each row of its answer with scan.
func queryAll[T any](ctx context.Context, d *db, scan func(scanner) (T, error), q string, a ...any) ([]T, error) {
	rows, err := d.QueryContext(ctx, q, a...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func (d *db) QueryRowContext(ctx context.Context, q string, a ...any) *row {
	return &row{r: d.sql.QueryRowContext(ctx, d.dialect.rebind(q), args(a)...)}
}

// prepared returns q prepared once; database/sql prepares it again on each
// connection it runs on. For the queries of every data-plane request, which
// SQLite would otherwise parse and plan on each call (pgx caches its own).
func (d *db) prepared(ctx context.Context, q string) (*sql.Stmt, error) {
	if st, ok := d.stmts.Load(q); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := d.sql.PrepareContext(ctx, d.dialect.rebind(q))
	if err != nil {
		return nil, markUnavailable(err)
	}
	if prev, loaded := d.stmts.LoadOrStore(q, st); loaded {
		st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
}

// queryPrepared is QueryContext with q prepared once.
func (d *db) queryPrepared(ctx context.Context, q string, a ...any) (*sql.Rows, error) {
	st, err := d.prepared(ctx, q)
	if err != nil {
		return nil, err
	}
	rows, err := st.QueryContext(ctx, args(a)...)
	return rows, markUnavailable(err)
}

// queryRowPrepared is QueryRowContext with q prepared once.
func (d *db) queryRowPrepared(ctx context.Context, q string, a ...any) *row {
	st, err := d.prepared(ctx, q)
	if err != nil {
		return &row{err: err}
	}
	return &row{r: st.QueryRowContext(ctx, args(a)...)}
}

// row is a *sql.Row whose Scan marks connection errors, or the error of
// preparing its query.
type row struct {
	r   *sql.Row
	err error
}

func (r *row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	return markUnavailable(r.r.Scan(dest...))
}

func (d *db) Close() error {
	d.stmts.Range(func(q, st any) bool {
		st.(*sql.Stmt).Close()
		return true
	})
	return d.sql.Close()
}

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
	return &row{r: t.tx.QueryRowContext(ctx, t.dialect.rebind(q), args(a)...)}
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
