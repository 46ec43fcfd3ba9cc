package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// migrationMonitoring adds the state of continuous monitoring: the
// revocation feed (its row id is the feed cursor, AUTOINCREMENT so that it
// never goes back, even after pruning), quarantines, alerts, the webhook
// outbox and the agents seen attesting; and the intent of each credential
// (the monitor judges actions against it). feed_meta.epoch names this database,
// so that a relying party notices a verifier whose feed started over.
const migrationMonitoring = `ALTER TABLE credentials ADD COLUMN intent TEXT NOT NULL DEFAULT '';
	CREATE TABLE feed_meta (epoch BLOB NOT NULL);
	INSERT INTO feed_meta (epoch) VALUES (randomblob(8));
	CREATE TABLE revocations (
		id           INTEGER PRIMARY KEY AUTOINCREMENT,
		kind         TEXT NOT NULL,
		cti          BLOB UNIQUE,
		subject      TEXT NOT NULL DEFAULT '',
		ak_digest    BLOB,
		image_digest TEXT NOT NULL DEFAULT '',
		reason       TEXT NOT NULL,
		revoked_by   TEXT NOT NULL,
		alert_id     TEXT NOT NULL DEFAULT '',
		revoked_at   INTEGER NOT NULL,
		expires_at   INTEGER NOT NULL
	);
	CREATE INDEX revocations_subject ON revocations(subject);
	CREATE INDEX revocations_expires ON revocations(expires_at);
	CREATE TABLE quarantines (
		id              INTEGER PRIMARY KEY AUTOINCREMENT,
		scope           TEXT NOT NULL,
		subject         TEXT NOT NULL DEFAULT '',
		ak_digest       BLOB,
		image_digest    TEXT NOT NULL DEFAULT '',
		reason          TEXT NOT NULL,
		quarantined_by  TEXT NOT NULL,
		alert_id        TEXT NOT NULL DEFAULT '',
		quarantined_at  INTEGER NOT NULL,
		released_at     INTEGER,
		released_by     TEXT NOT NULL DEFAULT '',
		release_note    TEXT NOT NULL DEFAULT '',
		release_audited INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX quarantines_active_ak ON quarantines(ak_digest) WHERE released_at IS NULL;
	CREATE INDEX quarantines_active_subject ON quarantines(subject) WHERE released_at IS NULL;
	CREATE TABLE alerts (
		id           TEXT PRIMARY KEY,
		at           INTEGER NOT NULL,
		subject      TEXT NOT NULL DEFAULT '',
		ak_digest    BLOB,
		image_digest TEXT NOT NULL DEFAULT '',
		severity     TEXT NOT NULL,
		score        REAL NOT NULL,
		rules        TEXT NOT NULL,
		body         TEXT NOT NULL
	);
	CREATE INDEX alerts_ak ON alerts(ak_digest, at);
	CREATE INDEX alerts_subject ON alerts(subject, at);
	CREATE TABLE webhook_outbox (
		id              INTEGER PRIMARY KEY AUTOINCREMENT,
		alert_id        TEXT NOT NULL,
		body            BLOB NOT NULL,
		created_at      INTEGER NOT NULL,
		attempts        INTEGER NOT NULL DEFAULT 0,
		next_attempt_at INTEGER NOT NULL,
		delivered_at    INTEGER,
		last_error      TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX webhook_outbox_due ON webhook_outbox(next_attempt_at) WHERE delivered_at IS NULL;
	CREATE TABLE agents_seen (
		subject       TEXT PRIMARY KEY,
		ak_digest     BLOB NOT NULL,
		image_digest  TEXT NOT NULL DEFAULT '',
		first_seen    INTEGER NOT NULL,
		last_attested INTEGER NOT NULL,
		last_outcome  TEXT NOT NULL,
		last_reason   TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX agents_seen_ak ON agents_seen(ak_digest);`

// Revocation kinds.
const (
	RevokeCredential = "credential" // one credential, by cti
	RevokeAgent      = "agent"      // every credential of an agent instance (sub), and its re-attestation
)

// Revocation is one entry of the revocation feed.
type Revocation struct {
	ID          int64 // feed cursor
	Kind        string
	CTI         []byte // for RevokeCredential
	Subject     string
	AKDigest    []byte
	ImageDigest string
	Reason      string
	RevokedBy   string // operator name, or "monitor"
	AlertID     string // the alert that caused it, if any
	RevokedAt   time.Time
	// ExpiresAt is when the entry stops mattering to relying parties: the
	// credential's exp (an agent entry: its last credential's exp). Agent
	// entries are kept after it, to refuse the agent's re-attestation.
	ExpiresAt time.Time
}

// RevokeCredentialsOf revokes every live credential of the agent instance
// sub (kind RevokeCredential, one entry per cti). With agent set it also
// records an agent entry, which makes the verifier refuse sub's
// re-attestation (reason agent-revoked). The template gives reason, by,
// alert id and time. Credentials already revoked are skipped; the new
// entries are returned in feed order.
func (s *Store) RevokeCredentialsOf(ctx context.Context, sub string, agent bool, tmpl Revocation) ([]Revocation, error) {
	if sub == "" {
		return nil, errors.New("revoking credentials: no agent id")
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("revoking credentials: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT cti, ak_digest, image_digest, expires_at FROM credentials
		WHERE subject = ? AND expires_at > ? AND cti NOT IN (SELECT cti FROM revocations WHERE cti IS NOT NULL)`,
		sub, unixNano(tmpl.RevokedAt))
	if err != nil {
		return nil, fmt.Errorf("listing live credentials: %w", err)
	}
	var live []Revocation
	latest := tmpl.RevokedAt.Add(time.Hour) // no live credential: cover the longest possible lifetime
	for rows.Next() {
		r := tmpl
		r.Kind, r.Subject = RevokeCredential, sub
		var exp int64
		if err := rows.Scan(&r.CTI, &r.AKDigest, &r.ImageDigest, &exp); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading live credential: %w", err)
		}
		r.ExpiresAt = fromNano(exp)
		live = append(live, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing live credentials: %w", err)
	}
	if agent {
		r := tmpl
		r.Kind, r.Subject, r.ExpiresAt = RevokeAgent, sub, latest
		if len(live) > 0 {
			r.AKDigest, r.ImageDigest = live[0].AKDigest, live[0].ImageDigest
			r.ExpiresAt = live[0].ExpiresAt
			for _, l := range live {
				if l.ExpiresAt.After(r.ExpiresAt) {
					r.ExpiresAt = l.ExpiresAt
				}
			}
		}
		live = append(live, r)
	}
	return commitRevocations(ctx, tx, live)
}

// commitRevocations inserts the entries (skipping credentials already
// revoked), commits, and returns the new entries in feed order.
func commitRevocations(ctx context.Context, tx *sql.Tx, live []Revocation) ([]Revocation, error) {
	var out []Revocation
	for _, r := range live {
		id, err := insertRevocation(ctx, tx, r)
		if err != nil {
			return nil, err
		}
		if id != 0 {
			r.ID = id
			out = append(out, r)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("revoking credentials: %w", err)
	}
	return out, nil
}

// RevokeCredentialID revokes one credential by its cti. It returns the new
// feed entry, or nil when the credential was already revoked; an unknown cti
// is ErrNotFound.
func (s *Store) RevokeCredentialID(ctx context.Context, cti []byte, tmpl Revocation) (*Revocation, error) {
	c, err := s.CredentialByID(ctx, cti)
	if err != nil {
		return nil, err
	}
	r := tmpl
	r.Kind, r.CTI, r.Subject, r.AKDigest, r.ImageDigest, r.ExpiresAt = RevokeCredential, c.ID, c.Subject, c.AKDigest, c.ImageDigest, c.ExpiresAt
	id, err := insertRevocation(ctx, s.db, r)
	if err != nil || id == 0 {
		return nil, err
	}
	r.ID = id
	return &r, nil
}

// RevokeCredentialsOfAK revokes every live credential attested with the AK
// (when its enrollment is revoked, or its machine quarantined).
func (s *Store) RevokeCredentialsOfAK(ctx context.Context, akDigest []byte, tmpl Revocation) ([]Revocation, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT DISTINCT subject FROM credentials WHERE ak_digest = ? AND expires_at > ?`,
		akDigest, unixNano(tmpl.RevokedAt))
	if err != nil {
		return nil, fmt.Errorf("listing credentials of AK: %w", err)
	}
	var subs []string
	for rows.Next() {
		var sub string
		if err := rows.Scan(&sub); err != nil {
			rows.Close()
			return nil, err
		}
		subs = append(subs, sub)
	}
	rows.Close()
	var out []Revocation
	for _, sub := range subs {
		rs, err := s.RevokeCredentialsOf(ctx, sub, false, tmpl)
		if err != nil {
			return out, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// insertRevocation inserts r and returns its id, or 0 when its cti is
// already revoked.
func insertRevocation(ctx context.Context, db execer, r Revocation) (int64, error) {
	var cti any
	if len(r.CTI) > 0 {
		cti = r.CTI
	}
	res, err := db.ExecContext(ctx, `INSERT OR IGNORE INTO revocations
		(kind, cti, subject, ak_digest, image_digest, reason, revoked_by, alert_id, revoked_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.Kind, cti, r.Subject, r.AKDigest, r.ImageDigest, r.Reason, r.RevokedBy, r.AlertID,
		unixNano(r.RevokedAt), unixNano(r.ExpiresAt))
	if err != nil {
		return 0, fmt.Errorf("recording revocation: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return 0, nil
	}
	return res.LastInsertId()
}

const revocationSelect = `SELECT id, kind, cti, subject, ak_digest, image_digest, reason, revoked_by, alert_id,
	revoked_at, expires_at FROM revocations`

// Revocations returns up to limit feed entries after cursor since, oldest
// first, leaving out those that expired before now (relying parties no
// longer need them).
func (s *Store) Revocations(ctx context.Context, since int64, limit int, now time.Time) ([]Revocation, error) {
	rows, err := s.db.QueryContext(ctx, revocationSelect+` WHERE id > ? AND expires_at > ? ORDER BY id LIMIT ?`,
		since, unixNano(now), limit)
	if err != nil {
		return nil, fmt.Errorf("reading revocations: %w", err)
	}
	return scanRevocations(rows)
}

// RevocationsOf returns the revocations of an agent (sub) or of every agent
// of an AK, newest first.
func (s *Store) RevocationsOf(ctx context.Context, sub string, akDigest []byte, limit int) ([]Revocation, error) {
	rows, err := s.db.QueryContext(ctx, revocationSelect+` WHERE (subject = ? AND ? != '') OR ak_digest = ? ORDER BY id DESC LIMIT ?`,
		sub, sub, akDigest, limit)
	if err != nil {
		return nil, fmt.Errorf("reading revocations: %w", err)
	}
	return scanRevocations(rows)
}

func scanRevocations(rows *sql.Rows) ([]Revocation, error) {
	defer rows.Close()
	var out []Revocation
	for rows.Next() {
		var r Revocation
		var at, exp int64
		if err := rows.Scan(&r.ID, &r.Kind, &r.CTI, &r.Subject, &r.AKDigest, &r.ImageDigest, &r.Reason,
			&r.RevokedBy, &r.AlertID, &at, &exp); err != nil {
			return nil, fmt.Errorf("reading revocation: %w", err)
		}
		r.RevokedAt, r.ExpiresAt = fromNano(at), fromNano(exp)
		out = append(out, r)
	}
	return out, rows.Err()
}

// FeedHead returns the newest feed cursor (0 when nothing was ever revoked)
// and the database's feed epoch.
func (s *Store) FeedHead(ctx context.Context) (int64, string, error) {
	var head int64
	var epoch []byte
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'revocations'), 0),
		(SELECT epoch FROM feed_meta LIMIT 1)`).Scan(&head, &epoch)
	if err != nil {
		return 0, "", fmt.Errorf("reading the revocation feed head: %w", err)
	}
	return head, hex.EncodeToString(epoch), nil
}

const sqlAgentRevoked = `SELECT reason, revoked_at FROM revocations WHERE kind = 'agent' AND subject = ? LIMIT 1`

// AgentRevoked returns the agent revocation of sub, or nil.
func (s *Store) AgentRevoked(ctx context.Context, sub string) (*Revocation, error) {
	var r Revocation
	var at int64
	err := s.stmt(sqlAgentRevoked).QueryRowContext(ctx, sub).Scan(&r.Reason, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checking agent revocation: %w", err)
	}
	r.Kind, r.Subject, r.RevokedAt = RevokeAgent, sub, fromNano(at)
	return &r, nil
}

// PruneRevocations deletes credential entries that expired before the given
// time. Agent entries stay: they refuse the agent's re-attestation.
func (s *Store) PruneRevocations(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM revocations WHERE kind = 'credential' AND expires_at < ?`, unixNano(before))
	if err != nil {
		return 0, fmt.Errorf("pruning revocations: %w", err)
	}
	return res.RowsAffected()
}

const sqlCredentialRevoked = `SELECT reason, revoked_at, kind FROM revocations
	WHERE (kind = 'credential' AND cti = ?) OR (kind = 'agent' AND subject = ?) LIMIT 1`

// CredentialRevoked returns the revocation that covers a credential — of
// the credential itself (by cti) or of its agent instance (by sub) — or nil.
// Decisions on every request (/v1/authorize) ask it, so it is one indexed
// read.
func (s *Store) CredentialRevoked(ctx context.Context, cti []byte, sub string) (*Revocation, error) {
	var r Revocation
	var at int64
	err := s.stmt(sqlCredentialRevoked).QueryRowContext(ctx, cti, sub).Scan(&r.Reason, &at, &r.Kind)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checking credential revocation: %w", err)
	}
	r.CTI, r.Subject, r.RevokedAt = cti, sub, fromNano(at)
	return &r, nil
}

// RevokeCredentialsOfDelegation revokes every live credential issued under
// a delegation (when it is suspended or revoked), so that relying parties
// following the revocation feed refuse them as fast as those asking
// /v1/authorize.
func (s *Store) RevokeCredentialsOfDelegation(ctx context.Context, delegation string, tmpl Revocation) ([]Revocation, error) {
	if delegation == "" {
		return nil, errors.New("revoking credentials: no delegation id")
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("revoking credentials: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT cti, subject, ak_digest, image_digest, expires_at FROM credentials
		WHERE delegation = ? AND expires_at > ?`, delegation, unixNano(tmpl.RevokedAt))
	if err != nil {
		return nil, fmt.Errorf("listing credentials of delegation: %w", err)
	}
	var live []Revocation
	for rows.Next() {
		r := tmpl
		r.Kind = RevokeCredential
		var exp int64
		if err := rows.Scan(&r.CTI, &r.Subject, &r.AKDigest, &r.ImageDigest, &exp); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading credential of delegation: %w", err)
		}
		r.ExpiresAt = fromNano(exp)
		live = append(live, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return commitRevocations(ctx, tx, live)
}
