// Package store keeps stasis's durable state (teams, API keys, sandboxes,
// access tokens, cluster nodes and leases) in SQLite (one node, the
// default) or PostgreSQL (a cluster). Both engines sit behind the one Store
// interface and share one implementation whose queries are rewritten per
// engine. Secrets are stored only as SHA-256 hashes.
package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrNotFound is returned when a row does not exist.
var ErrNotFound = errors.New("store: not found")

// Store is stasis's durable state. Open returns the implementation the
// database URL names.
type Store interface {
	// Check runs a real query, proving the database answers (for health checks).
	Check(ctx context.Context) error
	Close() error

	EnsureTeam(ctx context.Context, id, name string) error
	AddAPIKey(ctx context.Context, teamID, name, key string) error
	TeamForAPIKey(ctx context.Context, key string) (*Team, error)
	CountAPIKeys(ctx context.Context) (int, error)

	InsertSandbox(ctx context.Context, sb *Sandbox) error
	GetSandbox(ctx context.Context, teamID, id string) (*Sandbox, error)
	ListSandboxes(ctx context.Context, teamID string, filter map[string]string) ([]*Sandbox, error)
	// NodeSandboxes returns the sandboxes owned by one of nodes ("" is the
	// owner of rows no node claimed) whose status is one of statuses (any
	// status when none), in no set order: one indexed query for a node's
	// periodic work, whatever the size of the rest of the cluster.
	NodeSandboxes(ctx context.Context, nodes []string, statuses ...string) ([]*Sandbox, error)
	// UpdateSandbox is fenced: it applies only while the row's node and
	// epoch are still sb.Node and sb.Epoch, else it returns ErrFenced.
	UpdateSandbox(ctx context.Context, sb *Sandbox) error
	DueTimers(ctx context.Context, now time.Time) ([]*Sandbox, error)
	// NextTimer returns the earliest pause or delete deadline that
	// DueTimers would return once it has passed (ok false: none is set).
	NextTimer(ctx context.Context) (at time.Time, ok bool, err error)
	CountLive(ctx context.Context, teamID string) (int, error)
	CountByStatus(ctx context.Context) (map[string]int, error)
	TeamUsage(ctx context.Context, teamID string, now time.Time) (*TeamUsage, error)
	DeleteSandbox(ctx context.Context, id string) error
	AddAccessToken(ctx context.Context, sandboxID string, generation int, token string) error
	CheckAccessToken(ctx context.Context, sandboxID, token string) (bool, error)

	WriteNetworkLog(ctx context.Context, batch []NetworkLogWrite) error
	TrimNetworkLog(ctx context.Context, sandboxID string, keep int) error
	ListNetworkLog(ctx context.Context, q NetworkLogQuery) ([]*NetworkEvent, bool, error)

	InsertSecret(ctx context.Context, sc *Secret) error
	GetSecret(ctx context.Context, teamID, name string) (*Secret, error)
	GetSecretByID(ctx context.Context, id string) (*Secret, error)
	ListSecrets(ctx context.Context, teamID string) ([]*Secret, error)
	SetSecretValue(ctx context.Context, id string, sealed []byte) (time.Time, error)
	DeleteSecret(ctx context.Context, id string) error
	TouchSecret(ctx context.Context, id string, at time.Time) error
	AddSecretBindings(ctx context.Context, bs []*SecretBinding) error
	SecretBindings(ctx context.Context, sandboxID string, withDetached bool) ([]*SecretBinding, error)
	DetachSecretBinding(ctx context.Context, sandboxID, envKey string) error
	CopySecretBindings(ctx context.Context, from, to string) error
	SecretSandboxes(ctx context.Context, secretID string) ([]SecretSandbox, error)
	AddSecretAudit(ctx context.Context, ev *SecretAuditEvent) error
	ListSecretAudit(ctx context.Context, q AuditQuery) ([]*SecretAuditEvent, error)

	InsertSavedSnapshot(ctx context.Context, snap *SavedSnapshot) error
	GetSavedSnapshot(ctx context.Context, teamID, id string) (*SavedSnapshot, error)
	ListSavedSnapshots(ctx context.Context, teamID string) ([]*SavedSnapshot, error)
	DeleteSavedSnapshot(ctx context.Context, id string) error

	InsertTemplate(ctx context.Context, t *Template) error
	UpdateTemplate(ctx context.Context, t *Template) error
	GetTemplate(ctx context.Context, teamID, idOrName string) (*Template, error)
	ListTemplates(ctx context.Context, teamID, prefix string) ([]*Template, error)
	DeleteTemplate(ctx context.Context, id string) error
	InsertBuild(ctx context.Context, b *Build) error
	UpdateBuild(ctx context.Context, b *Build) error
	GetBuild(ctx context.Context, templateID, buildID string) (*Build, error)
	ListBuilds(ctx context.Context, templateID string, limit int) ([]*Build, error)
	// FailUnfinishedBuilds fails the builds a restart interrupted, except
	// those another lease holder (node) is running.
	FailUnfinishedBuilds(ctx context.Context, holder, msg string) error

	Cluster
}

// Cluster is the state several stasisd nodes share: who they are, who owns
// which sandbox (fenced by an epoch), and leases for work that must run
// exactly once.
type Cluster interface {
	// UpsertNode registers a node (at start; state active) or refreshes it.
	UpsertNode(ctx context.Context, n Node) error
	// HeartbeatNode records that the node is alive, with its load.
	HeartbeatNode(ctx context.Context, name string, memFreeMiB int64, running int) error
	ListNodes(ctx context.Context) ([]Node, error)
	SetNodeState(ctx context.Context, name, state string) error
	// MarkLostNodes declares nodes whose last heartbeat is older than lease
	// lost, returning their names (only those it changed).
	MarkLostNodes(ctx context.Context, lease time.Duration) ([]string, error)
	// ClaimSandbox moves a sandbox to toNode if its epoch is still
	// expectEpoch, bumping the epoch; else ErrFenced.
	ClaimSandbox(ctx context.Context, id string, expectEpoch int64, toNode string) (newEpoch int64, err error)
	// SetSnapshotUpload records the state of a paused sandbox's snapshot
	// upload ("", pending, uploading, portable, failed), fenced by epoch.
	SetSnapshotUpload(ctx context.Context, id string, epoch int64, state, detail string) error
	// TryLease takes or renews the named lease for holder until ttl from
	// now; false if another holder has it and it has not expired.
	TryLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error)
	// ReleaseLease gives up holder's lease before it expires.
	ReleaseLease(ctx context.Context, name, holder string) error
}

// Open opens (creating or migrating if needed) the database url names:
// postgres:// or postgresql:// is PostgreSQL; sqlite://PATH or a plain
// path is an SQLite file.
func Open(ctx context.Context, url string) (Store, error) {
	switch {
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return openPostgres(ctx, url)
	case strings.HasPrefix(url, "sqlite://"):
		return openSQLite(ctx, strings.TrimPrefix(url, "sqlite://"))
	case strings.Contains(url, "://"):
		return nil, fmt.Errorf("database url %q: unknown scheme (want postgres:// or sqlite://)", url)
	default:
		return openSQLite(ctx, url)
	}
}

// sqlStore implements Store on either engine.
type sqlStore struct {
	db *db
}

// Close closes the database.
func (s *sqlStore) Close() error { return s.db.Close() }

func (s *sqlStore) tx(ctx context.Context, fn func(*txn) error) error { return s.db.tx(ctx, fn) }

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

// IsID reports whether id has NewID's form (lowercase hex, dashed as a
// UUID), as an ID chosen by another node must.
func IsID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i, c := range id {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case (c < '0' || c > '9') && (c < 'a' || c > 'f'):
			return false
		}
	}
	return true
}

const timeFormat = time.RFC3339Nano

func now() string { return time.Now().UTC().Format(timeFormat) }

func parseTime(s string) time.Time {
	t, _ := time.Parse(timeFormat, s)
	return t
}
