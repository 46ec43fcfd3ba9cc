// Package store keeps the verifier's state in a real database: challenge
// nonces, AK enrollments, the credentials it issued, users, delegations and
// their status events, and the state of continuous monitoring (the
// revocation feed, quarantines, alerts, the webhook outbox, the agents
// seen attesting, and the monitor's learned state). The embedded default
// is SQLite (modernc.org/sqlite, no cgo, no setup) in the data directory.
//
// Every method takes a context and is safe for concurrent use. Operations that
// must be atomic across verifier replicas (consuming a nonce) are single SQL
// statements, so they stay atomic on any engine with row-level atomicity.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// ErrNotFound is returned when a looked-up row does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned when a row that must be unique already exists.
var ErrExists = errors.New("already exists")

// Store is the verifier's database.
type Store struct {
	db    *sql.DB
	stmts map[string]*sql.Stmt // hot-path statements, prepared once
}

// hotStatements are prepared at open: each is on the path of every
// attestation, where parsing SQL again would cost as much as running it.
var hotStatements = []string{
	sqlPutNonce, sqlConsumeNonce, enrollmentSelect + ` WHERE ak_digest = ?`, sqlRecordCredential,
	delegationSelect + ` WHERE id = ?`, sqlConsumeCredential,
	sqlActiveQuarantine, sqlAgentRevoked, sqlRecordAgentSeen, sqlCredentialRevoked, sqlQueuedAuditRecords,
}

// stmt returns the prepared form of a hot statement.
func (s *Store) stmt(query string) *sql.Stmt {
	st, ok := s.stmts[query]
	if !ok {
		panic("store: statement not prepared: " + query)
	}
	return st
}

// OpenSQLite opens (creating if needed) the SQLite database at path and brings
// its schema up to date. The database runs in WAL mode with a busy timeout,
// so several processes (vouchd and the vouch CLI on the same host) can use it
// at once.
func OpenSQLite(ctx context.Context, path string) (*Store, error) {
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(1)")
	// WAL with synchronous=NORMAL: a commit survives a process crash (the
	// SIGKILL test relies on it); a power loss may drop the last commits.
	// What must survive power loss is the audit log, which syncs itself.
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	dsn := "file:" + path + "?" + q.Encode()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening database %s: %w", path, err)
	}
	// SQLite allows one writer; a small pool keeps readers concurrent while
	// writers queue on the busy timeout rather than failing.
	db.SetMaxOpenConns(8)
	s := &Store{db: db, stmts: map[string]*sql.Stmt{}}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	for _, q := range hotStatements {
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("database %s: preparing %q: %w", path, q, err)
		}
		s.stmts[q] = st
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error {
	for _, st := range s.stmts {
		st.Close()
	}
	return s.db.Close()
}

// Ping checks that the database answers; /readyz uses it.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// migrations are applied in order, each once; their index+1 is the schema
// version. Append only: never edit a migration that has shipped.
var migrations = []string{
	`CREATE TABLE nonces (
		nonce      BLOB PRIMARY KEY,
		issued_at  INTEGER NOT NULL,
		expires_at INTEGER NOT NULL,
		used_at    INTEGER
	);
	CREATE INDEX nonces_expires ON nonces(expires_at);
	CREATE TABLE enrollments (
		ak_digest     BLOB PRIMARY KEY,
		ak_public     BLOB NOT NULL,
		method        TEXT NOT NULL,
		name          TEXT NOT NULL DEFAULT '',
		enrolled_by   TEXT NOT NULL DEFAULT '',
		enrolled_at   INTEGER NOT NULL,
		ek_digest     BLOB,
		revoked_at    INTEGER,
		revoked_by    TEXT NOT NULL DEFAULT '',
		revoke_reason TEXT NOT NULL DEFAULT ''
	);
	CREATE TABLE credentials (
		cti          BLOB PRIMARY KEY,
		subject      TEXT NOT NULL,
		audience     TEXT NOT NULL,
		ak_digest    BLOB NOT NULL,
		image_digest TEXT NOT NULL DEFAULT '',
		scope        TEXT NOT NULL DEFAULT '',
		issued_at    INTEGER NOT NULL,
		expires_at   INTEGER NOT NULL,
		log_index    INTEGER
	);
	CREATE INDEX credentials_subject ON credentials(subject);`,
	// 2: enrollment by credential activation (verifier/enroll).
	`CREATE TABLE enroll_challenges (
		id            BLOB PRIMARY KEY,
		secret_digest BLOB NOT NULL,
		ak_public     BLOB NOT NULL,
		ek_digest     BLOB NOT NULL,
		method        TEXT NOT NULL,
		name          TEXT NOT NULL DEFAULT '',
		detail        TEXT NOT NULL DEFAULT '',
		issued_at     INTEGER NOT NULL,
		expires_at    INTEGER NOT NULL,
		used_at       INTEGER
	);
	CREATE INDEX enroll_challenges_expires ON enroll_challenges(expires_at);
	ALTER TABLE enrollments ADD COLUMN detail TEXT NOT NULL DEFAULT '';
	CREATE INDEX enrollments_ek ON enrollments(ek_digest);`,
	// 3: users, delegations, delegation status events, single-use credentials.
	`CREATE TABLE users (
		id          TEXT PRIMARY KEY,
		public_key  BLOB NOT NULL,
		key_digest  BLOB NOT NULL UNIQUE,
		admin       INTEGER NOT NULL DEFAULT 0,
		created_at  INTEGER NOT NULL,
		created_by  TEXT NOT NULL DEFAULT '',
		disabled_at INTEGER
	);
	CREATE TABLE delegations (
		id         TEXT PRIMARY KEY,
		user_id    TEXT NOT NULL,
		intent     TEXT NOT NULL,
		spec       TEXT NOT NULL,
		status     TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		not_before INTEGER,
		expires_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL,
		updated_by TEXT NOT NULL DEFAULT '',
		reason     TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX delegations_user ON delegations(user_id);
	CREATE TABLE delegation_events (
		seq    INTEGER PRIMARY KEY AUTOINCREMENT,
		kind   TEXT NOT NULL,
		target TEXT NOT NULL,
		event  TEXT NOT NULL,
		at     INTEGER NOT NULL,
		by     TEXT NOT NULL DEFAULT '',
		reason TEXT NOT NULL DEFAULT ''
	);
	CREATE TABLE credential_uses (
		cti        BLOB PRIMARY KEY,
		used_at    INTEGER NOT NULL,
		expires_at INTEGER NOT NULL
	);
	ALTER TABLE credentials ADD COLUMN delegation TEXT NOT NULL DEFAULT '';
	ALTER TABLE credentials ADD COLUMN single_use INTEGER NOT NULL DEFAULT 0;
	CREATE INDEX credentials_delegation ON credentials(delegation) WHERE delegation != '';`,
	// 4: continuous monitoring (revocation feed, quarantines, alerts, webhook
	// outbox, agents seen).
	migrationMonitoring,
	// 5: audit records of the CLI's offline changes, for vouchd to append.
	migrationAuditOutbox,
	// 6: the monitor's learned state, saved across restarts.
	migrationMonitorState,
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("creating schema_version: %w", err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migration transaction: %w", err)
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&version); err != nil {
		return fmt.Errorf("reading schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this build knows (%d); run a newer vouchd", version, len(migrations))
	}
	for i := version; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (?)`, i+1); err != nil {
			return fmt.Errorf("recording migration %d: %w", i+1, err)
		}
	}
	return tx.Commit()
}

func unixNano(t time.Time) int64 { return t.UnixNano() }

func fromNano(n int64) time.Time { return time.Unix(0, n).UTC() }

func nullTime(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := fromNano(n.Int64)
	return &t
}
