package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Template and build statuses (Superserve's).
const (
	BuildPending      = "pending"
	BuildBuilding     = "building"
	BuildSnapshotting = "snapshotting"
	BuildReady        = "ready"
	BuildFailed       = "failed"
	BuildCancelled    = "cancelled"
)

// Template is a user-defined environment: an image plus build steps, booted
// and snapshotted so sandboxes start from it already running.
type Template struct {
	ID, TeamID, Name string
	VCPU, MemoryMiB  int
	DiskMiB          int
	Spec             string // the build spec as JSON
	SpecHash         string
	Status, Error    string
	LatestBuildID    string
	BaseImage        string // resolvable root filesystem (builtin name or oci:REF@DIGEST)
	SnapshotDir      string // committed snapshot of the booted template
	SnapshotBytes    int64
	OriginID         string // ID of the build sandbox the snapshot was taken of
	AgentPath        string
	Defaults         ExecDefaults // what the build's steps set: env, working dir, user
	CreatedAt        time.Time
	BuiltAt          *time.Time
}

// Build is one build of a template.
type Build struct {
	ID, TemplateID   string
	Status, SpecHash string
	Error, Log       string
	CreatedAt        time.Time
	StartedAt        *time.Time
	FinalizedAt      *time.Time
}

const templateColumns = `id, team_id, name, vcpu, memory_mib, disk_mib, spec, spec_hash, status, error,
	latest_build_id, base_image, snapshot_dir, snapshot_bytes, origin_id, agent_path, created_at, built_at, exec_defaults`

func scanTemplate(row scanner) (*Template, error) {
	var t Template
	var created string
	var built sql.NullString
	var defaults string
	err := row.Scan(&t.ID, &t.TeamID, &t.Name, &t.VCPU, &t.MemoryMiB, &t.DiskMiB, &t.Spec, &t.SpecHash,
		&t.Status, &t.Error, &t.LatestBuildID, &t.BaseImage, &t.SnapshotDir, &t.SnapshotBytes,
		&t.OriginID, &t.AgentPath, &created, &built, &defaults)
	if err != nil {
		return nil, err
	}
	json.Unmarshal([]byte(defaults), &t.Defaults)
	t.CreatedAt = parseTime(created)
	t.BuiltAt = timePtr(built)
	return &t, nil
}

// InsertTemplate stores a new template; a name already used by the team is ErrConflict.
func (s *sqlStore) InsertTemplate(ctx context.Context, t *Template) error {
	t.CreatedAt = time.Now().UTC()
	_, err := s.db.ExecContext(ctx, `INSERT INTO templates(`+templateColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		t.ID, t.TeamID, t.Name, t.VCPU, t.MemoryMiB, t.DiskMiB, t.Spec, t.SpecHash, t.Status, t.Error,
		t.LatestBuildID, t.BaseImage, t.SnapshotDir, t.SnapshotBytes, t.OriginID, t.AgentPath,
		t.CreatedAt.Format(timeFormat), nullTime(t.BuiltAt), t.Defaults.json())
	if isUniqueViolation(err) {
		return ErrConflict
	}
	if err != nil {
		return fmt.Errorf("insert template: %w", err)
	}
	return nil
}

// ErrConflict is returned when a unique name is taken.
var ErrConflict = errors.New("store: already exists")

// UpdateTemplate writes every mutable field of t.
func (s *sqlStore) UpdateTemplate(ctx context.Context, t *Template) error {
	_, err := s.db.ExecContext(ctx, `UPDATE templates SET vcpu = ?, memory_mib = ?, disk_mib = ?, spec = ?,
		spec_hash = ?, status = ?, error = ?, latest_build_id = ?, base_image = ?, snapshot_dir = ?,
		snapshot_bytes = ?, origin_id = ?, agent_path = ?, built_at = ?, exec_defaults = ? WHERE id = ?`,
		t.VCPU, t.MemoryMiB, t.DiskMiB, t.Spec, t.SpecHash, t.Status, t.Error, t.LatestBuildID, t.BaseImage,
		t.SnapshotDir, t.SnapshotBytes, t.OriginID, t.AgentPath, nullTime(t.BuiltAt),
		t.Defaults.json(), t.ID)
	if err != nil {
		return fmt.Errorf("update template %s: %w", t.ID, err)
	}
	return nil
}

// GetTemplate finds a team's template by ID or name ("" team matches any).
func (s *sqlStore) GetTemplate(ctx context.Context, teamID, idOrName string) (*Template, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+templateColumns+` FROM templates
		WHERE (id = ? OR name = ?) AND (? = '' OR team_id = ?) ORDER BY id = ? DESC LIMIT 1`,
		idOrName, idOrName, teamID, teamID, idOrName)
	t, err := scanTemplate(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	return t, err
}

// ListTemplates returns the team's templates whose name starts with prefix.
func (s *sqlStore) ListTemplates(ctx context.Context, teamID, prefix string) ([]*Template, error) {
	return queryAll(ctx, s.db, scanTemplate, `SELECT `+templateColumns+` FROM templates
		WHERE team_id = ? AND substr(name, 1, ?) = ? ORDER BY created_at`, teamID, len(prefix), prefix)
}

// DeleteTemplate removes a template and its builds.
func (s *sqlStore) DeleteTemplate(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM templates WHERE id = ?`, id)
	return err
}

const buildColumns = `id, template_id, status, spec_hash, error, log, created_at, started_at, finalized_at`

func scanBuild(row scanner) (*Build, error) {
	var b Build
	var created string
	var started, finalized sql.NullString
	if err := row.Scan(&b.ID, &b.TemplateID, &b.Status, &b.SpecHash, &b.Error, &b.Log, &created, &started, &finalized); err != nil {
		return nil, err
	}
	b.CreatedAt = parseTime(created)
	b.StartedAt = timePtr(started)
	b.FinalizedAt = timePtr(finalized)
	return &b, nil
}

// InsertBuild stores a new build.
func (s *sqlStore) InsertBuild(ctx context.Context, b *Build) error {
	b.CreatedAt = time.Now().UTC()
	_, err := s.db.ExecContext(ctx, `INSERT INTO template_builds(`+buildColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		b.ID, b.TemplateID, b.Status, b.SpecHash, b.Error, b.Log, b.CreatedAt.Format(timeFormat),
		nullTime(b.StartedAt), nullTime(b.FinalizedAt))
	if err != nil {
		return fmt.Errorf("insert build: %w", err)
	}
	return nil
}

// UpdateBuild writes a build's status, error, log and times.
func (s *sqlStore) UpdateBuild(ctx context.Context, b *Build) error {
	_, err := s.db.ExecContext(ctx, `UPDATE template_builds SET status = ?, error = ?, log = ?, started_at = ?,
		finalized_at = ? WHERE id = ?`, b.Status, b.Error, b.Log, nullTime(b.StartedAt), nullTime(b.FinalizedAt), b.ID)
	if err != nil {
		return fmt.Errorf("update build %s: %w", b.ID, err)
	}
	return nil
}

// GetBuild returns one build of a template.
func (s *sqlStore) GetBuild(ctx context.Context, templateID, buildID string) (*Build, error) {
	b, err := scanBuild(s.db.QueryRowContext(ctx, `SELECT `+buildColumns+` FROM template_builds
		WHERE id = ? AND template_id = ?`, buildID, templateID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	return b, err
}

// ListBuilds returns a template's builds, newest first (limit <= 0: all).
func (s *sqlStore) ListBuilds(ctx context.Context, templateID string, limit int) ([]*Build, error) {
	if limit <= 0 {
		limit = 1 << 31 // all; PostgreSQL refuses SQLite's LIMIT -1
	}
	return queryAll(ctx, s.db, scanBuild, `SELECT `+buildColumns+` FROM template_builds
		WHERE template_id = ? ORDER BY created_at DESC LIMIT ?`, templateID, limit)
}

// FailUnfinishedBuilds marks every build still pending, building or
// snapshotting as failed with msg (their process is gone after a restart),
// and templates with no usable snapshot as failed too. Builds whose
// template's build lease another holder than holder still has are left
// alone: another node of the cluster runs them. holder's own build leases
// are dropped.
func (s *sqlStore) FailUnfinishedBuilds(ctx context.Context, holder, msg string) error {
	return s.tx(ctx, func(tx *txn) error {
		now := time.Now().UTC()
		const runByOther = ` AND NOT EXISTS (SELECT 1 FROM leases l
			WHERE l.name = 'build:' || %s AND l.holder <> ? AND l.expires_ms > ?)`
		if _, err := tx.ExecContext(ctx, `UPDATE template_builds SET status = ?, error = ?, finalized_at = ?
			WHERE status IN (?, ?, ?)`+fmt.Sprintf(runByOther, "template_builds.template_id"),
			BuildFailed, msg, now.Format(timeFormat), BuildPending, BuildBuilding, BuildSnapshotting,
			holder, now.UnixMilli()); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE templates SET status = ?, error = ?
			WHERE status IN (?, ?, ?) AND snapshot_dir = ''`+fmt.Sprintf(runByOther, "templates.id"),
			BuildFailed, msg, BuildPending, BuildBuilding, BuildSnapshotting, holder, now.UnixMilli()); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM leases WHERE holder = ? AND name LIKE 'build:%'`, holder)
		return err
	})
}
