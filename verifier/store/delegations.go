package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// User is someone who may delegate to agents. Users authenticate to the
// admin API with the private half of PublicKey (a signed request, or a TLS
// client certificate carrying that key).
type User struct {
	ID         string
	PublicKey  []byte // SubjectPublicKeyInfo, DER: Ed25519 or ECDSA P-256
	Admin      bool   // may register users and manage every delegation
	CreatedAt  time.Time
	CreatedBy  string
	DisabledAt *time.Time
}

// KeyDigest returns the SHA-256 of a SubjectPublicKeyInfo, the key by which
// a TLS client certificate finds its user.
func KeyDigest(spki []byte) []byte {
	d := sha256.Sum256(spki)
	return d[:]
}

// AddUser registers a user; an existing id or key is ErrExists.
func (s *Store) AddUser(ctx context.Context, u User) error {
	if u.ID == "" || len(u.PublicKey) == 0 {
		return errors.New("a user needs an id and a public key")
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO users (id, public_key, key_digest, admin, created_at, created_by)
		VALUES (?, ?, ?, ?, ?, ?)`, u.ID, u.PublicKey, KeyDigest(u.PublicKey), u.Admin, unixNano(u.CreatedAt), u.CreatedBy)
	if err != nil {
		if strings.Contains(err.Error(), "UNIQUE") {
			return fmt.Errorf("user %q or its key: %w", u.ID, ErrExists)
		}
		return fmt.Errorf("storing user: %w", err)
	}
	return nil
}

const userSelect = `SELECT id, public_key, admin, created_at, created_by, disabled_at FROM users`

// UserByID returns the user with this id, or ErrNotFound.
func (s *Store) UserByID(ctx context.Context, id string) (*User, error) {
	return s.oneUser(ctx, userSelect+` WHERE id = ?`, id)
}

// UserByKey returns the user whose public key has this SHA-256
// ([KeyDigest]), or ErrNotFound.
func (s *Store) UserByKey(ctx context.Context, keyDigest []byte) (*User, error) {
	return s.oneUser(ctx, userSelect+` WHERE key_digest = ?`, keyDigest)
}

func (s *Store) oneUser(ctx context.Context, q string, arg any) (*User, error) {
	rows, err := s.db.QueryContext(ctx, q, arg)
	if err != nil {
		return nil, fmt.Errorf("looking up user: %w", err)
	}
	list, err := scanUsers(rows)
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, ErrNotFound
	}
	return &list[0], nil
}

// Users lists every user, by id.
func (s *Store) Users(ctx context.Context) ([]User, error) {
	rows, err := s.db.QueryContext(ctx, userSelect+` ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("listing users: %w", err)
	}
	return scanUsers(rows)
}

func scanUsers(rows *sql.Rows) ([]User, error) {
	defer rows.Close()
	var out []User
	for rows.Next() {
		var u User
		var created int64
		var disabled sql.NullInt64
		if err := rows.Scan(&u.ID, &u.PublicKey, &u.Admin, &created, &u.CreatedBy, &disabled); err != nil {
			return nil, fmt.Errorf("reading user: %w", err)
		}
		u.CreatedAt, u.DisabledAt = fromNano(created), nullTime(disabled)
		out = append(out, u)
	}
	return out, rows.Err()
}

// Delegation statuses as stored. "expired" is computed, never stored.
const (
	DelegationActive    = "active"
	DelegationSuspended = "suspended"
	DelegationRevoked   = "revoked"
)

// Delegation is one user's delegation of an intent to some agents.
type Delegation struct {
	ID     string
	User   string
	Intent string
	DelegationSpec
	Status    string
	CreatedAt time.Time
	NotBefore time.Time // zero: from creation
	ExpiresAt time.Time
	UpdatedAt time.Time
	UpdatedBy string
	Reason    string // of the last status change
}

// DelegationSpec is what a delegation allows, stored as one JSON column.
type DelegationSpec struct {
	ImageDigests []string `json:"image_digests,omitempty"`
	AgentIDs     []string `json:"agent_ids,omitempty"`
	Resources    []string `json:"resources"`
	Actions      []string `json:"actions,omitempty"`
	Networks     []string `json:"networks,omitempty"`
	Window       string   `json:"window,omitempty"`
}

// CreateDelegation stores a new, active delegation.
func (s *Store) CreateDelegation(ctx context.Context, d Delegation) error {
	spec, err := json.Marshal(d.DelegationSpec)
	if err != nil {
		return err
	}
	var nb sql.NullInt64
	if !d.NotBefore.IsZero() {
		nb = sql.NullInt64{Int64: unixNano(d.NotBefore), Valid: true}
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO delegations
		(id, user_id, intent, spec, status, created_at, not_before, expires_at, updated_at, updated_by)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		d.ID, d.User, d.Intent, string(spec), DelegationActive, unixNano(d.CreatedAt), nb, unixNano(d.ExpiresAt),
		unixNano(d.CreatedAt), d.User)
	if err != nil {
		if strings.Contains(err.Error(), "UNIQUE") {
			return fmt.Errorf("delegation %s: %w", d.ID, ErrExists)
		}
		return fmt.Errorf("storing delegation: %w", err)
	}
	return nil
}

const delegationSelect = `SELECT id, user_id, intent, spec, status, created_at, not_before, expires_at,
	updated_at, updated_by, reason FROM delegations`

// Delegation returns the delegation with this id, or ErrNotFound.
func (s *Store) Delegation(ctx context.Context, id string) (*Delegation, error) {
	rows, err := s.stmt(delegationSelect+` WHERE id = ?`).QueryContext(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("looking up delegation: %w", err)
	}
	list, err := scanDelegations(rows)
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, ErrNotFound
	}
	return &list[0], nil
}

// Delegations lists delegations, newest first; user "" lists everyone's.
func (s *Store) Delegations(ctx context.Context, user string) ([]Delegation, error) {
	q, args := delegationSelect+` ORDER BY created_at DESC`, []any{}
	if user != "" {
		q, args = delegationSelect+` WHERE user_id = ? ORDER BY created_at DESC`, []any{user}
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing delegations: %w", err)
	}
	return scanDelegations(rows)
}

func scanDelegations(rows *sql.Rows) ([]Delegation, error) {
	defer rows.Close()
	var out []Delegation
	for rows.Next() {
		var d Delegation
		var spec string
		var created, expires, updated int64
		var nb sql.NullInt64
		if err := rows.Scan(&d.ID, &d.User, &d.Intent, &spec, &d.Status, &created, &nb, &expires, &updated, &d.UpdatedBy, &d.Reason); err != nil {
			return nil, fmt.Errorf("reading delegation: %w", err)
		}
		if err := json.Unmarshal([]byte(spec), &d.DelegationSpec); err != nil {
			return nil, fmt.Errorf("delegation %s: stored spec: %w", d.ID, err)
		}
		d.CreatedAt, d.ExpiresAt, d.UpdatedAt = fromNano(created), fromNano(expires), fromNano(updated)
		if nb.Valid {
			d.NotBefore = fromNano(nb.Int64)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// ErrStatus is returned when a status change does not apply to the
// delegation's current status (resuming an active one, anything on a
// revoked one).
var ErrStatus = errors.New("status change not allowed")

// SetDelegationStatus moves a delegation to status to ("active",
// "suspended" or "revoked") and records the change as a revocation event
// ("suspended", "resumed", "revoked"), in one transaction. Allowed moves:
// active → suspended, suspended → active, active or suspended → revoked.
// Revocation is final.
func (s *Store) SetDelegationStatus(ctx context.Context, id, to, by, reason string, at time.Time) (*DelegationEvent, error) {
	var from []string
	event := to
	switch to {
	case DelegationSuspended:
		from = []string{DelegationActive}
	case DelegationActive:
		from, event = []string{DelegationSuspended}, "resumed"
	case DelegationRevoked:
		from = []string{DelegationActive, DelegationSuspended}
	default:
		return nil, fmt.Errorf("delegation status %q: %w", to, ErrStatus)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("changing delegation status: %w", err)
	}
	defer tx.Rollback()
	var cur string
	err = tx.QueryRowContext(ctx, `SELECT status FROM delegations WHERE id = ?`, id).Scan(&cur)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("delegation %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("changing delegation status: %w", err)
	}
	ok := false
	for _, f := range from {
		ok = ok || cur == f
	}
	if !ok {
		return nil, fmt.Errorf("delegation %s is %s; it cannot become %s: %w", id, cur, to, ErrStatus)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE delegations SET status = ?, updated_at = ?, updated_by = ?, reason = ? WHERE id = ?`,
		to, unixNano(at), by, reason, id); err != nil {
		return nil, fmt.Errorf("changing delegation status: %w", err)
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO delegation_events (kind, target, event, at, by, reason) VALUES (?, ?, ?, ?, ?, ?)`,
		EventDelegation, id, event, unixNano(at), by, reason)
	if err != nil {
		return nil, fmt.Errorf("recording delegation event: %w", err)
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("changing delegation status: %w", err)
	}
	return &DelegationEvent{Seq: seq, Kind: EventDelegation, Target: id, Event: event, At: at.UTC(), By: by, Reason: reason}, nil
}

// EventDelegation is the Kind of a delegation status event.
const EventDelegation = "delegation" // Target is a delegation id

// DelegationEvent is one change of a delegation's status, in the order Seq
// gives. Event is "revoked", "suspended" or "resumed". Relying parties learn
// of it through the revocation feed: suspending or revoking a delegation
// revokes every live credential issued under it (RevokeCredentialsOfDelegation).
type DelegationEvent struct {
	Seq    int64
	Kind   string
	Target string
	Event  string
	At     time.Time
	By     string
	Reason string
}

// DelegationEventsSince returns up to limit events with Seq > after, in order.
func (s *Store) DelegationEventsSince(ctx context.Context, after int64, limit int) ([]DelegationEvent, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, kind, target, event, at, by, reason FROM delegation_events
		WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("listing delegation events: %w", err)
	}
	defer rows.Close()
	var out []DelegationEvent
	for rows.Next() {
		var r DelegationEvent
		var at int64
		if err := rows.Scan(&r.Seq, &r.Kind, &r.Target, &r.Event, &at, &r.By, &r.Reason); err != nil {
			return nil, fmt.Errorf("reading delegation event: %w", err)
		}
		r.At = fromNano(at)
		out = append(out, r)
	}
	return out, rows.Err()
}

const sqlConsumeCredential = `INSERT INTO credential_uses (cti, used_at, expires_at) VALUES (?, ?, ?)
	ON CONFLICT (cti) DO NOTHING`

// ConsumeCredential records the one use of a single-use credential. It is
// one conditional INSERT, so across verifier replicas sharing the database
// exactly one caller gets nil; every later one gets ErrExists.
func (s *Store) ConsumeCredential(ctx context.Context, cti []byte, now, expires time.Time) error {
	res, err := s.stmt(sqlConsumeCredential).ExecContext(ctx, cti, unixNano(now), unixNano(expires))
	if err != nil {
		return fmt.Errorf("consuming credential: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("consuming credential: %w", err)
	} else if n == 0 {
		return fmt.Errorf("credential %x was already used: %w", cti, ErrExists)
	}
	return nil
}

// CredentialsByDelegation returns the ids (cti) of the unexpired
// credentials issued under a delegation, for the revocation stream.
func (s *Store) CredentialsByDelegation(ctx context.Context, id string, now time.Time) ([][]byte, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT cti FROM credentials WHERE delegation = ? AND expires_at > ?`, id, unixNano(now))
	if err != nil {
		return nil, fmt.Errorf("listing credentials of delegation: %w", err)
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var cti []byte
		if err := rows.Scan(&cti); err != nil {
			return nil, err
		}
		out = append(out, cti)
	}
	return out, rows.Err()
}

// PruneCredentialUses forgets single-use credentials that expired before
// the given time: they are refused as expired anyway.
func (s *Store) PruneCredentialUses(ctx context.Context, before time.Time) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM credential_uses WHERE expires_at < ?`, unixNano(before))
	if err != nil {
		return fmt.Errorf("pruning credential uses: %w", err)
	}
	return nil
}
