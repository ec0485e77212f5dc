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

// Secret is a stored credential. Value is sealed (encrypted by package
// secrets); the store never sees it in clear.
type Secret struct {
	ID         string
	TeamID     string
	Name       string
	Provider   string          // "" unless created from a provider shortcut
	Auth       json.RawMessage // how the value is attached (package secrets' Auth)
	Hosts      []string
	TokenShape string // prefix of the stand-in tokens issued for it
	Value      []byte // sealed
	CreatedAt  time.Time
	UpdatedAt  time.Time
	LastUsedAt *time.Time
	Deleted    bool
}

const secretColumns = `id, team_id, name, provider, auth, hosts, token_shape, value, created_at, updated_at,
	last_used_at, deleted_at`

func scanSecret(row scanner) (*Secret, error) {
	var sc Secret
	var auth, hosts, created, updated string
	var used, deleted sql.NullString
	if err := row.Scan(&sc.ID, &sc.TeamID, &sc.Name, &sc.Provider, &auth, &hosts, &sc.TokenShape, &sc.Value,
		&created, &updated, &used, &deleted); err != nil {
		return nil, err
	}
	sc.Auth = json.RawMessage(auth)
	if err := json.Unmarshal([]byte(hosts), &sc.Hosts); err != nil {
		return nil, fmt.Errorf("secret %s hosts: %w", sc.ID, err)
	}
	sc.CreatedAt, sc.UpdatedAt = parseTime(created), parseTime(updated)
	sc.LastUsedAt = timePtr(used)
	sc.Deleted = deleted.Valid
	return &sc, nil
}

// InsertSecret stores a new secret; a name the team already uses is ErrConflict.
func (s *sqlStore) InsertSecret(ctx context.Context, sc *Secret) error {
	t := time.Now().UTC()
	sc.CreatedAt, sc.UpdatedAt = t, t
	hosts, _ := json.Marshal(sc.Hosts)
	_, err := s.db.ExecContext(ctx, `INSERT INTO secrets(`+secretColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)`,
		sc.ID, sc.TeamID, sc.Name, sc.Provider, string(sc.Auth), string(hosts), sc.TokenShape, sc.Value,
		t.Format(timeFormat), t.Format(timeFormat))
	if isUniqueViolation(err) {
		return ErrConflict
	}
	if err != nil {
		return fmt.Errorf("insert secret: %w", err)
	}
	return nil
}

// GetSecret returns the team's live secret called name.
func (s *sqlStore) GetSecret(ctx context.Context, teamID, name string) (*Secret, error) {
	sc, err := scanSecret(s.db.QueryRowContext(ctx, `SELECT `+secretColumns+` FROM secrets
		WHERE team_id = ? AND name = ? AND deleted_at IS NULL`, teamID, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get secret: %w", err)
	}
	return sc, nil
}

// GetSecretByID returns a secret, deleted or not.
func (s *sqlStore) GetSecretByID(ctx context.Context, id string) (*Secret, error) {
	sc, err := scanSecret(s.db.QueryRowContext(ctx, `SELECT `+secretColumns+` FROM secrets WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get secret: %w", err)
	}
	return sc, nil
}

// ListSecrets returns the team's live secrets, oldest first.
func (s *sqlStore) ListSecrets(ctx context.Context, teamID string) ([]*Secret, error) {
	out, err := queryAll(ctx, s.db, scanSecret, `SELECT `+secretColumns+` FROM secrets
		WHERE team_id = ? AND deleted_at IS NULL ORDER BY created_at, id`, teamID)
	if err != nil {
		return nil, fmt.Errorf("list secrets: %w", err)
	}
	return out, nil
}

// SetSecretValue replaces a live secret's sealed value.
func (s *sqlStore) SetSecretValue(ctx context.Context, id string, sealed []byte) (time.Time, error) {
	t := time.Now().UTC()
	res, err := s.db.ExecContext(ctx, `UPDATE secrets SET value = ?, updated_at = ? WHERE id = ? AND deleted_at IS NULL`,
		sealed, t.Format(timeFormat), id)
	if err != nil {
		return t, fmt.Errorf("rotate secret: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return t, ErrNotFound
	}
	return t, nil
}

// DeleteSecret soft-deletes a secret: its bindings stay, revoked, and its
// audit trail stays readable; the name is free again.
func (s *sqlStore) DeleteSecret(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE secrets SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL`, now(), id)
	if err != nil {
		return fmt.Errorf("delete secret: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// TouchSecret records that a secret was used.
func (s *sqlStore) TouchSecret(ctx context.Context, id string, at time.Time) error {
	_, err := s.db.ExecContext(ctx, `UPDATE secrets SET last_used_at = ? WHERE id = ?`, at.UTC().Format(timeFormat), id)
	return err
}

// SecretBinding binds a secret to an environment variable of a sandbox,
// through a stand-in token derived from TokenSeed.
type SecretBinding struct {
	ID         int64
	SandboxID  string
	EnvKey     string
	SecretID   string
	SecretName string // of the secret (joined)
	TokenShape string // of the secret (joined)
	TokenSeed  string
	TokenHash  string
	Detached   bool
	Revoked    bool // the secret was deleted (joined)
	CreatedAt  time.Time
}

const bindingSelect = `SELECT b.id, b.sandbox_id, b.env_key, b.secret_id, s.name, s.token_shape, b.token_seed,
	b.token_hash, b.detached, s.deleted_at IS NOT NULL, b.created_at
	FROM secret_bindings b JOIN secrets s ON s.id = b.secret_id`

func scanBindings(rows *sql.Rows) ([]*SecretBinding, error) {
	defer rows.Close()
	var out []*SecretBinding
	for rows.Next() {
		var b SecretBinding
		var created string
		if err := rows.Scan(&b.ID, &b.SandboxID, &b.EnvKey, &b.SecretID, &b.SecretName, &b.TokenShape, &b.TokenSeed,
			&b.TokenHash, &b.Detached, &b.Revoked, &created); err != nil {
			return nil, err
		}
		b.CreatedAt = parseTime(created)
		out = append(out, &b)
	}
	return out, rows.Err()
}

// AddSecretBindings stores bindings in one transaction; an env key the
// sandbox already has bound is ErrConflict.
func (s *sqlStore) AddSecretBindings(ctx context.Context, bs []*SecretBinding) error {
	return s.tx(ctx, func(tx *txn) error {
		for _, b := range bs {
			err := tx.QueryRowContext(ctx, `INSERT INTO secret_bindings(sandbox_id, env_key, secret_id, token_seed,
				token_hash, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id`,
				b.SandboxID, b.EnvKey, b.SecretID, b.TokenSeed, b.TokenHash, now()).Scan(&b.ID)
			if isUniqueViolation(err) {
				return ErrConflict
			}
			if err != nil {
				return fmt.Errorf("bind secret: %w", err)
			}
		}
		return nil
	})
}

// SecretBindings returns a sandbox's bindings (revoked ones included), by
// env key; detached ones too when withDetached.
func (s *sqlStore) SecretBindings(ctx context.Context, sandboxID string, withDetached bool) ([]*SecretBinding, error) {
	rows, err := s.db.queryPrepared(ctx, bindingSelect+` WHERE b.sandbox_id = ? AND (? = 1 OR b.detached = 0)
		ORDER BY b.env_key, b.id`, sandboxID, withDetached)
	if err != nil {
		return nil, fmt.Errorf("secret bindings of %s: %w", sandboxID, err)
	}
	return scanBindings(rows)
}

// DetachSecretBinding marks a sandbox's binding of envKey detached.
func (s *sqlStore) DetachSecretBinding(ctx context.Context, sandboxID, envKey string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE secret_bindings SET detached = 1 WHERE sandbox_id = ? AND env_key = ? AND detached = 0`,
		sandboxID, envKey)
	if err != nil {
		return fmt.Errorf("detach secret: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// CopySecretBindings gives sandbox to every binding sandbox from has, with
// the same stand-in tokens (a fork continues its source's processes, whose
// environment holds them).
func (s *sqlStore) CopySecretBindings(ctx context.Context, from, to string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO secret_bindings(sandbox_id, env_key, secret_id, token_seed, token_hash,
		detached, created_at) SELECT ?, env_key, secret_id, token_seed, token_hash, detached, created_at
		FROM secret_bindings WHERE sandbox_id = ?`, to, from)
	if err != nil {
		return fmt.Errorf("copy secret bindings of %s: %w", from, err)
	}
	return nil
}

// SecretSandbox is a sandbox a secret is bound to.
type SecretSandbox struct {
	SandboxID, SandboxName, EnvKey, Status string
}

// SecretSandboxes returns the sandboxes a secret is bound to now.
func (s *sqlStore) SecretSandboxes(ctx context.Context, secretID string) ([]SecretSandbox, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT x.id, x.name, b.env_key, x.status FROM secret_bindings b
		JOIN sandboxes x ON x.id = b.sandbox_id WHERE b.secret_id = ? AND b.detached = 0 ORDER BY x.created_at, x.id, b.env_key`, secretID)
	if err != nil {
		return nil, fmt.Errorf("sandboxes of secret: %w", err)
	}
	defer rows.Close()
	out := []SecretSandbox{}
	for rows.Next() {
		var x SecretSandbox
		if err := rows.Scan(&x.SandboxID, &x.SandboxName, &x.EnvKey, &x.Status); err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, rows.Err()
}

// SecretAuditEvent is one request made with a secret's stand-in token.
type SecretAuditEvent struct {
	ID             int64
	SecretID       string
	SandboxID      string
	SandboxName    *string // nil when the sandbox is gone
	Time           time.Time
	Method         string
	Host           string
	Path           string
	Status         int
	UpstreamStatus *int
	LatencyMs      *int64
	ErrorCode      *string
}

// AuditQuery selects a secret's audit events, newest first.
type AuditQuery struct {
	SecretID string
	BeforeID int64 // events with a smaller id only (0: no bound)
	// StatusMin/Max bound the status (0: no bound); Errors selects events
	// with an error code or a status of 400 or more.
	StatusMin, StatusMax int
	Errors               bool
	Limit                int
}

// AddSecretAudit stores an audit event and, in the same transaction, the
// request row of the sandbox's network log (skipped if the sandbox is gone).
func (s *sqlStore) AddSecretAudit(ctx context.Context, ev *SecretAuditEvent) error {
	return s.tx(ctx, func(tx *txn) error {
		err := tx.QueryRowContext(ctx, `INSERT INTO secret_audit(secret_id, sandbox_id, ts_us, method, host, path, status,
			upstream_status, latency_ms, error_code) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			ev.SecretID, ev.SandboxID, ev.Time.UnixMicro(), ev.Method, ev.Host, ev.Path, ev.Status,
			nullInt(ev.UpstreamStatus), ev.LatencyMs, ev.ErrorCode).Scan(&ev.ID)
		if err != nil {
			return fmt.Errorf("secret audit: %w", err)
		}
		code := ""
		if ev.ErrorCode != nil {
			code = *ev.ErrorCode
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO network_log(sandbox_id, ts_us, kind, host, method, path, status,
			upstream_status, latency_ms, secret_id, error_code)
			SELECT ?, ?, 'request', ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM sandboxes WHERE id = ?)`,
			ev.SandboxID, ev.Time.UnixMicro(), ev.Host, ev.Method, ev.Path, ev.Status, nullInt(ev.UpstreamStatus),
			ev.LatencyMs, ev.SecretID, code, ev.SandboxID); err != nil {
			return fmt.Errorf("network log request row: %w", err)
		}
		_, err = tx.ExecContext(ctx, `UPDATE secrets SET last_used_at = ? WHERE id = ?`, ev.Time.UTC().Format(timeFormat), ev.SecretID)
		return err
	})
}

// ListSecretAudit returns up to q.Limit events, newest first.
func (s *sqlStore) ListSecretAudit(ctx context.Context, q AuditQuery) ([]*SecretAuditEvent, error) {
	where := []string{"a.secret_id = ?"}
	args := []any{q.SecretID}
	if q.BeforeID > 0 {
		where, args = append(where, "a.id < ?"), append(args, q.BeforeID)
	}
	if q.StatusMin > 0 {
		where, args = append(where, "a.status >= ? AND a.status <= ?"), append(args, q.StatusMin, q.StatusMax)
	}
	if q.Errors {
		where = append(where, "(a.error_code IS NOT NULL OR a.status >= 400)")
	}
	args = append(args, q.Limit)
	rows, err := s.db.QueryContext(ctx, `SELECT a.id, a.secret_id, a.sandbox_id, x.name, a.ts_us, a.method, a.host, a.path,
		a.status, a.upstream_status, a.latency_ms, a.error_code FROM secret_audit a LEFT JOIN sandboxes x ON x.id = a.sandbox_id
		WHERE `+strings.Join(where, " AND ")+` ORDER BY a.id DESC LIMIT ?`, args...)
	if err != nil {
		return nil, fmt.Errorf("secret audit: %w", err)
	}
	defer rows.Close()
	out := []*SecretAuditEvent{}
	for rows.Next() {
		var e SecretAuditEvent
		var ts int64
		var name, code sql.NullString
		var up, lat sql.NullInt64
		if err := rows.Scan(&e.ID, &e.SecretID, &e.SandboxID, &name, &ts, &e.Method, &e.Host, &e.Path, &e.Status,
			&up, &lat, &code); err != nil {
			return nil, err
		}
		e.Time = time.UnixMicro(ts).UTC()
		if name.Valid {
			e.SandboxName = &name.String
		}
		e.UpstreamStatus = intPtr(up)
		if lat.Valid {
			e.LatencyMs = &lat.Int64
		}
		if code.Valid {
			e.ErrorCode = &code.String
		}
		out = append(out, &e)
	}
	return out, rows.Err()
}
