// Package store keeps stasis's durable state (teams, API keys, sandboxes,
// access tokens) in SQLite through a pure-Go driver. Secrets are stored only
// as SHA-256 hashes.
package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	_ "modernc.org/sqlite" // pure-Go SQLite driver, registers "sqlite"
)

// ErrNotFound is returned when a row does not exist.
var ErrNotFound = errors.New("store: not found")

// Store is a handle on the SQLite database.
type Store struct {
	db *sql.DB
}

// Open opens (creating if needed) the database at path and migrates it.
func Open(ctx context.Context, path string) (*Store, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// One writer at a time is SQLite's model; a single connection also keeps
	// transactions simple and avoids SQLITE_BUSY between our own goroutines.
	db.SetMaxOpenConns(1)
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// migrations are applied in order; each runs once, recorded in schema_migrations.
var migrations = []string{
	// 1: initial schema
	`CREATE TABLE teams (
		id         TEXT PRIMARY KEY,
		name       TEXT NOT NULL,
		created_at TEXT NOT NULL
	);
	CREATE TABLE api_keys (
		hash       TEXT PRIMARY KEY,
		team_id    TEXT NOT NULL REFERENCES teams(id),
		name       TEXT NOT NULL,
		created_at TEXT NOT NULL
	);
	CREATE TABLE sandboxes (
		id                  TEXT PRIMARY KEY,
		team_id             TEXT NOT NULL REFERENCES teams(id),
		name                TEXT NOT NULL,
		status              TEXT NOT NULL,
		template            TEXT NOT NULL,
		vcpu                INTEGER NOT NULL,
		memory_mib          INTEGER NOT NULL,
		disk_mib            INTEGER NOT NULL,
		metadata            TEXT NOT NULL DEFAULT '{}',
		env                 TEXT NOT NULL DEFAULT '{}',
		timeout_seconds     INTEGER,
		auto_delete_seconds INTEGER,
		error               TEXT NOT NULL DEFAULT '',
		token_generation    INTEGER NOT NULL DEFAULT 0,
		snapshot_dir        TEXT NOT NULL DEFAULT '',
		snapshot_bytes      INTEGER NOT NULL DEFAULT 0,
		created_at          TEXT NOT NULL,
		status_changed_at   TEXT NOT NULL
	);
	CREATE INDEX sandboxes_team ON sandboxes(team_id);
	CREATE TABLE access_tokens (
		hash       TEXT PRIMARY KEY,
		sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
		generation INTEGER NOT NULL,
		created_at TEXT NOT NULL
	);
	CREATE INDEX access_tokens_sandbox ON access_tokens(sandbox_id);`,
	// 2: timers and metering
	`ALTER TABLE sandboxes ADD COLUMN pause_at TEXT;
	ALTER TABLE sandboxes ADD COLUMN delete_at TEXT;
	ALTER TABLE sandboxes ADD COLUMN active_ms INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE sandboxes ADD COLUMN paused_ms INTEGER NOT NULL DEFAULT 0;
	CREATE TABLE team_usage (
		team_id        TEXT PRIMARY KEY REFERENCES teams(id),
		active_ms      INTEGER NOT NULL DEFAULT 0,
		paused_ms      INTEGER NOT NULL DEFAULT 0
	);`,
	// 3: the agent binary a sandbox was started with (restore needs the same bytes)
	`ALTER TABLE sandboxes ADD COLUMN agent_path TEXT NOT NULL DEFAULT '';`,
	// 4: templates built from images, and what a sandbox's filesystem comes from
	`ALTER TABLE sandboxes ADD COLUMN base_image TEXT NOT NULL DEFAULT '';
	CREATE TABLE templates (
		id              TEXT PRIMARY KEY,
		team_id         TEXT NOT NULL REFERENCES teams(id),
		name            TEXT NOT NULL,
		vcpu            INTEGER NOT NULL,
		memory_mib      INTEGER NOT NULL,
		disk_mib        INTEGER NOT NULL,
		spec            TEXT NOT NULL,
		spec_hash       TEXT NOT NULL,
		status          TEXT NOT NULL,
		error           TEXT NOT NULL DEFAULT '',
		latest_build_id TEXT NOT NULL DEFAULT '',
		base_image      TEXT NOT NULL DEFAULT '',
		snapshot_dir    TEXT NOT NULL DEFAULT '',
		snapshot_bytes  INTEGER NOT NULL DEFAULT 0,
		origin_id       TEXT NOT NULL DEFAULT '',
		agent_path      TEXT NOT NULL DEFAULT '',
		created_at      TEXT NOT NULL,
		built_at        TEXT
	);
	CREATE UNIQUE INDEX templates_team_name ON templates(team_id, name);
	CREATE TABLE template_builds (
		id           TEXT PRIMARY KEY,
		template_id  TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
		status       TEXT NOT NULL,
		spec_hash    TEXT NOT NULL,
		error        TEXT NOT NULL DEFAULT '',
		log          TEXT NOT NULL DEFAULT '',
		created_at   TEXT NOT NULL,
		started_at   TEXT,
		finalized_at TEXT
	);
	CREATE INDEX template_builds_template ON template_builds(template_id, created_at);`,
	// 5: exec defaults a sandbox inherits from its template (env, working dir, user)
	`ALTER TABLE sandboxes ADD COLUMN exec_defaults TEXT NOT NULL DEFAULT '{}';
	ALTER TABLE templates ADD COLUMN exec_defaults TEXT NOT NULL DEFAULT '{}';`,
	// 6: saved snapshots, which new sandboxes can start from
	`CREATE TABLE snapshots (
		id         TEXT PRIMARY KEY,
		team_id    TEXT NOT NULL REFERENCES teams(id),
		sandbox_id TEXT NOT NULL,
		name       TEXT NOT NULL,
		dir        TEXT NOT NULL,
		size_bytes INTEGER NOT NULL,
		source     TEXT NOT NULL,
		created_at TEXT NOT NULL
	);
	CREATE INDEX snapshots_team ON snapshots(team_id, created_at);`,
	// 7: egress rules and preview access of a sandbox, and its network log
	`ALTER TABLE sandboxes ADD COLUMN network TEXT NOT NULL DEFAULT '';
	ALTER TABLE sandboxes ADD COLUMN preview_private INTEGER NOT NULL DEFAULT 0;
	CREATE TABLE network_log (
		id         INTEGER PRIMARY KEY AUTOINCREMENT,
		sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
		ts_us      INTEGER NOT NULL,
		kind       TEXT NOT NULL,
		host       TEXT NOT NULL DEFAULT '',
		dst_ip     TEXT NOT NULL DEFAULT '',
		dst_port   INTEGER NOT NULL DEFAULT 0,
		verdict    TEXT NOT NULL DEFAULT '',
		match_rule TEXT NOT NULL DEFAULT '',
		bytes_sent INTEGER NOT NULL DEFAULT 0,
		bytes_recv INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX network_log_sandbox ON network_log(sandbox_id, id);`,
	// 8: the timeout deletes the sandbox instead of pausing it (E2B's onTimeout "kill")
	`ALTER TABLE sandboxes ADD COLUMN delete_on_timeout INTEGER NOT NULL DEFAULT 0;`,
	// 9: secrets injected at egress, their bindings to sandboxes, their
	// audit trail, and the request rows of the network log
	`CREATE TABLE secrets (
		id           TEXT PRIMARY KEY,
		team_id      TEXT NOT NULL REFERENCES teams(id),
		name         TEXT NOT NULL,
		provider     TEXT NOT NULL DEFAULT '',
		auth         TEXT NOT NULL,
		hosts        TEXT NOT NULL,
		token_shape  TEXT NOT NULL DEFAULT '',
		value        BLOB NOT NULL,
		created_at   TEXT NOT NULL,
		updated_at   TEXT NOT NULL,
		last_used_at TEXT,
		deleted_at   TEXT
	);
	CREATE UNIQUE INDEX secrets_team_name ON secrets(team_id, name) WHERE deleted_at IS NULL;
	CREATE TABLE secret_bindings (
		id         INTEGER PRIMARY KEY AUTOINCREMENT,
		sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
		env_key    TEXT NOT NULL,
		secret_id  TEXT NOT NULL REFERENCES secrets(id),
		token_seed TEXT NOT NULL,
		token_hash TEXT NOT NULL,
		detached   INTEGER NOT NULL DEFAULT 0,
		created_at TEXT NOT NULL
	);
	CREATE UNIQUE INDEX secret_bindings_env ON secret_bindings(sandbox_id, env_key) WHERE detached = 0;
	CREATE INDEX secret_bindings_token ON secret_bindings(sandbox_id, token_hash);
	CREATE INDEX secret_bindings_secret ON secret_bindings(secret_id);
	CREATE TABLE secret_audit (
		id              INTEGER PRIMARY KEY AUTOINCREMENT,
		secret_id       TEXT NOT NULL REFERENCES secrets(id),
		sandbox_id      TEXT NOT NULL,
		ts_us           INTEGER NOT NULL,
		method          TEXT NOT NULL,
		host            TEXT NOT NULL,
		path            TEXT NOT NULL,
		status          INTEGER NOT NULL,
		upstream_status INTEGER,
		latency_ms      INTEGER,
		error_code      TEXT
	);
	CREATE INDEX secret_audit_secret ON secret_audit(secret_id, id);
	ALTER TABLE network_log ADD COLUMN method TEXT NOT NULL DEFAULT '';
	ALTER TABLE network_log ADD COLUMN path TEXT NOT NULL DEFAULT '';
	ALTER TABLE network_log ADD COLUMN status INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE network_log ADD COLUMN upstream_status INTEGER;
	ALTER TABLE network_log ADD COLUMN latency_ms INTEGER;
	ALTER TABLE network_log ADD COLUMN secret_id TEXT NOT NULL DEFAULT '';
	ALTER TABLE network_log ADD COLUMN error_code TEXT NOT NULL DEFAULT '';`,
	// 10: traffic through the E2B protocol does not resume the paused
	// sandbox (E2B's autoResume: false); only an explicit connect does
	`ALTER TABLE sandboxes ADD COLUMN no_auto_resume INTEGER NOT NULL DEFAULT 0;`,
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var current int
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("migrate: read version: %w", err)
	}
	for v := current + 1; v <= len(migrations); v++ {
		err := s.tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)`, v, now())
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate to version %d: %w", v, err)
		}
	}
	return nil
}

func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// HashSecret is the one-way hash under which API keys and access tokens are stored.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// NewSecret returns a random secret with the given prefix, e.g. "ss_live_…".
func NewSecret(prefix string) string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return prefix + hex.EncodeToString(b[:])
}

// NewID returns a random UUIDv4 string.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

const timeFormat = time.RFC3339Nano

func now() string { return time.Now().UTC().Format(timeFormat) }

func parseTime(s string) time.Time {
	t, _ := time.Parse(timeFormat, s)
	return t
}
