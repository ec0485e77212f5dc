package store

import (
	"context"
	"fmt"
	"strings"
)

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
	// 10: cluster: nodes, leases, and each sandbox's owner node, ownership
	// epoch and snapshot upload state
	`ALTER TABLE sandboxes ADD COLUMN node TEXT NOT NULL DEFAULT '';
	ALTER TABLE sandboxes ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE sandboxes ADD COLUMN snapshot_upload TEXT NOT NULL DEFAULT '';
	ALTER TABLE sandboxes ADD COLUMN snapshot_upload_detail TEXT NOT NULL DEFAULT '';
	CREATE INDEX sandboxes_node ON sandboxes(node, status);
	CREATE TABLE nodes (
		name          TEXT PRIMARY KEY,
		url           TEXT NOT NULL,
		state         TEXT NOT NULL,
		cpu_features  TEXT NOT NULL DEFAULT '',
		version       TEXT NOT NULL DEFAULT '',
		mem_free_mib  INTEGER NOT NULL DEFAULT 0,
		running       INTEGER NOT NULL DEFAULT 0,
		heartbeat_ms  INTEGER NOT NULL,
		started_ms    INTEGER NOT NULL
	);
	CREATE TABLE leases (
		name       TEXT PRIMARY KEY,
		holder     TEXT NOT NULL,
		expires_ms INTEGER NOT NULL
	);`,
	// 11: E2B's autoResume {enabled: false}: traffic does not resume it
	`ALTER TABLE sandboxes ADD COLUMN no_auto_resume INTEGER NOT NULL DEFAULT 0;`,
	// 12: the URL other nodes forward E2B traffic to ('' when the node
	// serves no E2B listener), and indexes for the timer query (DueTimers),
	// which every node runs four times a second
	`ALTER TABLE nodes ADD COLUMN e2b_url TEXT NOT NULL DEFAULT '';
	CREATE INDEX sandboxes_pause_at ON sandboxes(status, pause_at);
	CREATE INDEX sandboxes_delete_at ON sandboxes(status, delete_at);`,
}

// pgTypes turns the SQLite column types the migrations use into
// PostgreSQL's: 64-bit integers (SQLite's INTEGER is 64-bit), identity
// keys and byte strings. The migrations are otherwise portable SQL.
var pgTypes = strings.NewReplacer(
	"INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY",
	"INTEGER", "BIGINT",
	"BLOB", "BYTEA",
)

// migrationLock is the PostgreSQL advisory lock that serialises nodes
// migrating the same database at once.
const migrationLock = 0x57a515

func (s *sqlStore) migrate(ctx context.Context) error {
	if s.db.dialect == postgres {
		conn, err := s.db.sql.Conn(ctx)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		defer conn.Close()
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, migrationLock); err != nil {
			return fmt.Errorf("migrate: lock: %w", err)
		}
		defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, migrationLock)
	}
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var current int
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("migrate: read version: %w", err)
	}
	for v := current + 1; v <= len(migrations); v++ {
		ddl := migrations[v-1]
		if s.db.dialect == postgres {
			ddl = pgTypes.Replace(ddl)
		}
		err := s.tx(ctx, func(tx *txn) error {
			if _, err := tx.ExecContext(ctx, ddl); err != nil {
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
