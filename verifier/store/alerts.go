package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Alert is a stored monitoring alert. Body is its full JSON document (the
// one the webhook receives); the other fields index it.
type Alert struct {
	ID          string
	At          time.Time
	Subject     string
	AKDigest    []byte
	ImageDigest string
	Severity    string
	Score       float64
	Rules       string // space-separated rule names
	Body        []byte
}

// RecordAlert stores an alert.
func (s *Store) RecordAlert(ctx context.Context, a Alert) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO alerts (id, at, subject, ak_digest, image_digest, severity, score, rules, body)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		a.ID, unixNano(a.At), a.Subject, a.AKDigest, a.ImageDigest, a.Severity, a.Score, a.Rules, string(a.Body))
	if err != nil {
		return fmt.Errorf("recording alert: %w", err)
	}
	return nil
}

// Alerts returns the newest alerts about an agent (sub) or a machine (AK),
// or all alerts when both are empty.
func (s *Store) Alerts(ctx context.Context, sub string, akDigest []byte, limit int) ([]Alert, error) {
	q := `SELECT id, at, subject, ak_digest, image_digest, severity, score, rules, body FROM alerts`
	var args []any
	switch {
	case sub != "":
		q += ` WHERE subject = ?`
		args = append(args, sub)
	case len(akDigest) > 0:
		q += ` WHERE ak_digest = ?`
		args = append(args, akDigest)
	}
	q += ` ORDER BY at DESC LIMIT ?`
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing alerts: %w", err)
	}
	defer rows.Close()
	var out []Alert
	for rows.Next() {
		var a Alert
		var at int64
		var body string
		if err := rows.Scan(&a.ID, &at, &a.Subject, &a.AKDigest, &a.ImageDigest, &a.Severity, &a.Score, &a.Rules, &body); err != nil {
			return nil, fmt.Errorf("reading alert: %w", err)
		}
		a.At, a.Body = fromNano(at), []byte(body)
		out = append(out, a)
	}
	return out, rows.Err()
}

// AlertCountsByAK returns the number of alerts per AK, keyed by
// string(digest).
func (s *Store) AlertCountsByAK(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT ak_digest, COUNT(*) FROM alerts WHERE ak_digest IS NOT NULL GROUP BY ak_digest`)
	if err != nil {
		return nil, fmt.Errorf("counting alerts: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var ak []byte
		var n int
		if err := rows.Scan(&ak, &n); err != nil {
			return nil, err
		}
		out[string(ak)] = n
	}
	return out, rows.Err()
}

// OutboxEntry is one webhook delivery waiting or done.
type OutboxEntry struct {
	ID            int64
	AlertID       string
	Body          []byte
	CreatedAt     time.Time
	Attempts      int
	NextAttemptAt time.Time
}

// EnqueueWebhook adds a delivery to the outbox unless the outbox already
// holds max undelivered entries, in which case it returns ErrOutboxFull.
func (s *Store) EnqueueWebhook(ctx context.Context, alertID string, body []byte, now time.Time, max int) (int64, error) {
	res, err := s.db.ExecContext(ctx, `INSERT INTO webhook_outbox (alert_id, body, created_at, next_attempt_at)
		SELECT ?, ?, ?, ? WHERE (SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at IS NULL) < ?`,
		alertID, body, unixNano(now), unixNano(now), max)
	if err != nil {
		return 0, fmt.Errorf("queueing webhook: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return 0, ErrOutboxFull
	}
	return res.LastInsertId()
}

// ErrOutboxFull is returned when the webhook outbox is at its bound.
var ErrOutboxFull = errors.New("webhook outbox is full")

// DueWebhooks returns up to limit undelivered entries due at now, oldest
// first.
func (s *Store) DueWebhooks(ctx context.Context, now time.Time, limit int) ([]OutboxEntry, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, alert_id, body, created_at, attempts, next_attempt_at FROM webhook_outbox
		WHERE delivered_at IS NULL AND next_attempt_at <= ? ORDER BY id LIMIT ?`, unixNano(now), limit)
	if err != nil {
		return nil, fmt.Errorf("reading webhook outbox: %w", err)
	}
	defer rows.Close()
	var out []OutboxEntry
	for rows.Next() {
		var e OutboxEntry
		var created, next int64
		if err := rows.Scan(&e.ID, &e.AlertID, &e.Body, &created, &e.Attempts, &next); err != nil {
			return nil, fmt.Errorf("reading webhook outbox: %w", err)
		}
		e.CreatedAt, e.NextAttemptAt = fromNano(created), fromNano(next)
		out = append(out, e)
	}
	return out, rows.Err()
}

// NextWebhookDue returns when the earliest undelivered entry is due, and
// how many are undelivered.
func (s *Store) NextWebhookDue(ctx context.Context) (time.Time, int, error) {
	var next sql.NullInt64
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT MIN(next_attempt_at), COUNT(*) FROM webhook_outbox WHERE delivered_at IS NULL`).Scan(&next, &n)
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("reading webhook outbox: %w", err)
	}
	if !next.Valid {
		return time.Time{}, 0, nil
	}
	return fromNano(next.Int64), n, nil
}

// WebhookDelivered marks an entry delivered.
func (s *Store) WebhookDelivered(ctx context.Context, id int64, at time.Time) error {
	_, err := s.db.ExecContext(ctx, `UPDATE webhook_outbox SET delivered_at = ?, attempts = attempts + 1, last_error = '' WHERE id = ?`, unixNano(at), id)
	return err
}

// WebhookFailed records a failed attempt and when to try again.
func (s *Store) WebhookFailed(ctx context.Context, id int64, next time.Time, msg string) error {
	if len(msg) > 500 {
		msg = msg[:500]
	}
	_, err := s.db.ExecContext(ctx, `UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?`, unixNano(next), msg, id)
	return err
}

// PruneWebhooks deletes entries delivered before the given time.
func (s *Store) PruneWebhooks(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM webhook_outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?`, unixNano(before))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// AgentSeen is the last attestation of one agent instance.
type AgentSeen struct {
	Subject      string
	AKDigest     []byte
	ImageDigest  string
	FirstSeen    time.Time
	LastAttested time.Time
	LastOutcome  string // "issued" or "refused"
	LastReason   string
}

const sqlRecordAgentSeen = `INSERT INTO agents_seen (subject, ak_digest, image_digest, first_seen, last_attested, last_outcome, last_reason)
	VALUES (?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT (subject) DO UPDATE SET ak_digest = excluded.ak_digest, image_digest = excluded.image_digest,
		last_attested = excluded.last_attested, last_outcome = excluded.last_outcome, last_reason = excluded.last_reason`

// RecordAgentSeen upserts the last attestation of an agent instance.
func (s *Store) RecordAgentSeen(ctx context.Context, a AgentSeen) error {
	_, err := s.stmt(sqlRecordAgentSeen).ExecContext(ctx, a.Subject, a.AKDigest, a.ImageDigest,
		unixNano(a.LastAttested), unixNano(a.LastAttested), a.LastOutcome, a.LastReason)
	if err != nil {
		return fmt.Errorf("recording agent: %w", err)
	}
	return nil
}

// AgentsSeen lists the agent instances seen on an AK (all when nil), most
// recently attested first.
func (s *Store) AgentsSeen(ctx context.Context, akDigest []byte, limit int) ([]AgentSeen, error) {
	q := `SELECT subject, ak_digest, image_digest, first_seen, last_attested, last_outcome, last_reason FROM agents_seen`
	var args []any
	if len(akDigest) > 0 {
		q += ` WHERE ak_digest = ?`
		args = append(args, akDigest)
	}
	q += ` ORDER BY last_attested DESC LIMIT ?`
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing agents: %w", err)
	}
	defer rows.Close()
	var out []AgentSeen
	for rows.Next() {
		var a AgentSeen
		var first, last int64
		if err := rows.Scan(&a.Subject, &a.AKDigest, &a.ImageDigest, &first, &last, &a.LastOutcome, &a.LastReason); err != nil {
			return nil, fmt.Errorf("reading agent: %w", err)
		}
		a.FirstSeen, a.LastAttested = fromNano(first), fromNano(last)
		out = append(out, a)
	}
	return out, rows.Err()
}

// AgentSeenBySubject returns one agent instance, or ErrNotFound.
func (s *Store) AgentSeenBySubject(ctx context.Context, sub string) (*AgentSeen, error) {
	var a AgentSeen
	var first, last int64
	err := s.db.QueryRowContext(ctx, `SELECT subject, ak_digest, image_digest, first_seen, last_attested, last_outcome, last_reason
		FROM agents_seen WHERE subject = ?`, sub).Scan(&a.Subject, &a.AKDigest, &a.ImageDigest, &first, &last, &a.LastOutcome, &a.LastReason)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("looking up agent: %w", err)
	}
	a.FirstSeen, a.LastAttested = fromNano(first), fromNano(last)
	return &a, nil
}
