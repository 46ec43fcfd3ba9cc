package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Quarantine scopes: what a quarantine holds back from new credentials.
const (
	// QuarantineAgent holds one agent instance (sub). On its own it is weak:
	// a fresh agent key gives a fresh sub.
	QuarantineAgent = "agent"
	// QuarantineWorkload holds one image on one machine (AK + image digest):
	// every instance of that workload there, with any key.
	QuarantineWorkload = "workload"
	// QuarantineMachine holds everything attested with one AK.
	QuarantineMachine = "machine"
)

// Quarantine is one quarantine: until released, the verifier issues no
// credential that it matches (reason agent-quarantined).
type Quarantine struct {
	ID            int64
	Scope         string
	Subject       string // QuarantineAgent
	AKDigest      []byte // QuarantineWorkload, QuarantineMachine
	ImageDigest   string // QuarantineWorkload
	Reason        string
	QuarantinedBy string
	AlertID       string
	QuarantinedAt time.Time
	ReleasedAt    *time.Time
	ReleasedBy    string
	ReleaseNote   string
}

// Active reports whether the quarantine is in force.
func (q *Quarantine) Active() bool { return q.ReleasedAt == nil }

// Quarantine records q unless an active quarantine with the same scope and
// target exists; it returns the id of the new or existing one and whether it
// is new.
func (s *Store) Quarantine(ctx context.Context, q Quarantine) (int64, bool, error) {
	switch q.Scope {
	case QuarantineAgent:
		if q.Subject == "" {
			return 0, false, errors.New("quarantine: an agent quarantine needs the agent id")
		}
	case QuarantineWorkload:
		if len(q.AKDigest) == 0 || q.ImageDigest == "" {
			return 0, false, errors.New("quarantine: a workload quarantine needs the AK and the image digest")
		}
	case QuarantineMachine:
		if len(q.AKDigest) == 0 {
			return 0, false, errors.New("quarantine: a machine quarantine needs the AK")
		}
	default:
		return 0, false, fmt.Errorf("quarantine: unknown scope %q", q.Scope)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, false, fmt.Errorf("quarantine: %w", err)
	}
	defer tx.Rollback()
	var id int64
	err = tx.QueryRowContext(ctx, `SELECT id FROM quarantines WHERE released_at IS NULL AND scope = ?
		AND subject = ? AND COALESCE(ak_digest, x'') = COALESCE(?, x'') AND image_digest = ?`,
		q.Scope, q.Subject, q.AKDigest, q.ImageDigest).Scan(&id)
	if err == nil {
		return id, false, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return 0, false, fmt.Errorf("quarantine: %w", err)
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO quarantines
		(scope, subject, ak_digest, image_digest, reason, quarantined_by, alert_id, quarantined_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		q.Scope, q.Subject, q.AKDigest, q.ImageDigest, q.Reason, q.QuarantinedBy, q.AlertID, unixNano(q.QuarantinedAt))
	if err != nil {
		return 0, false, fmt.Errorf("recording quarantine: %w", err)
	}
	if id, err = res.LastInsertId(); err != nil {
		return 0, false, err
	}
	return id, true, tx.Commit()
}

const sqlActiveQuarantine = quarantineSelect + ` WHERE released_at IS NULL AND (
	(scope = 'agent' AND subject = ?) OR
	(scope = 'workload' AND ak_digest = ? AND image_digest = ?) OR
	(scope = 'machine' AND ak_digest = ?)) ORDER BY id LIMIT 1`

// ActiveQuarantine returns the first active quarantine that holds an agent
// sub on the machine akDigest running imageDigest, or nil.
func (s *Store) ActiveQuarantine(ctx context.Context, sub string, akDigest []byte, imageDigest string) (*Quarantine, error) {
	rows, err := s.stmt(sqlActiveQuarantine).QueryContext(ctx, sub, akDigest, imageDigest, akDigest)
	if err != nil {
		return nil, fmt.Errorf("checking quarantine: %w", err)
	}
	list, err := scanQuarantines(rows)
	if err != nil || len(list) == 0 {
		return nil, err
	}
	return &list[0], nil
}

// QuarantineFilter selects quarantines; zero fields match everything.
type QuarantineFilter struct {
	Subject    string
	AKDigest   []byte
	ActiveOnly bool
	Limit      int
}

// Quarantines lists quarantines, newest first.
func (s *Store) Quarantines(ctx context.Context, f QuarantineFilter) ([]Quarantine, error) {
	q := quarantineSelect + ` WHERE 1 = 1`
	var args []any
	if f.Subject != "" {
		q += ` AND subject = ?`
		args = append(args, f.Subject)
	}
	if len(f.AKDigest) > 0 {
		q += ` AND ak_digest = ?`
		args = append(args, f.AKDigest)
	}
	if f.ActiveOnly {
		q += ` AND released_at IS NULL`
	}
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	q += ` ORDER BY id DESC LIMIT ?`
	args = append(args, f.Limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing quarantines: %w", err)
	}
	return scanQuarantines(rows)
}

// ReleaseQuarantines releases the active quarantines with the given ids and
// returns how many it released.
func (s *Store) ReleaseQuarantines(ctx context.Context, ids []int64, by, note string, at time.Time) (int64, error) {
	var n int64
	for _, id := range ids {
		res, err := s.db.ExecContext(ctx, `UPDATE quarantines SET released_at = ?, released_by = ?, release_note = ?
			WHERE id = ? AND released_at IS NULL`, unixNano(at), by, note, id)
		if err != nil {
			return n, fmt.Errorf("releasing quarantine %d: %w", id, err)
		}
		k, _ := res.RowsAffected()
		n += k
	}
	return n, nil
}

// UnauditedReleases returns released quarantines whose release has not been
// written to the audit log yet (releases are made by the CLI, which has no
// audit log; vouchd records them).
func (s *Store) UnauditedReleases(ctx context.Context, limit int) ([]Quarantine, error) {
	rows, err := s.db.QueryContext(ctx, quarantineSelect+` WHERE released_at IS NOT NULL AND release_audited = 0 ORDER BY id LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("listing releases: %w", err)
	}
	return scanQuarantines(rows)
}

// MarkReleaseAudited records that a release is in the audit log.
func (s *Store) MarkReleaseAudited(ctx context.Context, id int64) error {
	_, err := s.db.ExecContext(ctx, `UPDATE quarantines SET release_audited = 1 WHERE id = ?`, id)
	return err
}

const quarantineSelect = `SELECT id, scope, subject, ak_digest, image_digest, reason, quarantined_by, alert_id,
	quarantined_at, released_at, released_by, release_note FROM quarantines`

func scanQuarantines(rows *sql.Rows) ([]Quarantine, error) {
	defer rows.Close()
	var out []Quarantine
	for rows.Next() {
		var q Quarantine
		var at int64
		var rel sql.NullInt64
		if err := rows.Scan(&q.ID, &q.Scope, &q.Subject, &q.AKDigest, &q.ImageDigest, &q.Reason, &q.QuarantinedBy,
			&q.AlertID, &at, &rel, &q.ReleasedBy, &q.ReleaseNote); err != nil {
			return nil, fmt.Errorf("reading quarantine: %w", err)
		}
		q.QuarantinedAt, q.ReleasedAt = fromNano(at), nullTime(rel)
		out = append(out, q)
	}
	return out, rows.Err()
}
