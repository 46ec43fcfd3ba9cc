package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Enrollment records why the verifier trusts one attestation key.
type Enrollment struct {
	AKDigest   []byte // SHA-256 of the AK's SubjectPublicKeyInfo (DER)
	AKPublic   []byte // the AK's SubjectPublicKeyInfo (DER)
	Method     string // how it was enrolled: "operator", "first-use", "activation", "ak-cert", "ek-allowlist"
	Name       string // operator's label for the machine, free text
	EnrolledBy string // who enrolled it (operator name, or the EK that activated it)
	EnrolledAt time.Time
	EKDigest   []byte // SHA-256 of the EK public key, when known
	// Detail is what the enrollment rested on, as JSON: for activation the
	// EK certificate's issuer, serial, TPM manufacturer/model/version and
	// the quirks tolerated; for an AK certificate its issuer and serial.
	Detail string

	RevokedAt    *time.Time
	RevokedBy    string
	RevokeReason string
}

// Active reports whether the enrollment is not revoked.
func (e *Enrollment) Active() bool { return e.RevokedAt == nil }

// Enroll records a new enrollment. Enrolling an AK whose enrollment was
// revoked replaces the revoked one (re-enrollment after a TPM clear or an
// operator mistake); enrolling an active AK again is ErrExists.
func (s *Store) Enroll(ctx context.Context, e Enrollment) error {
	if len(e.AKDigest) == 0 || len(e.AKPublic) == 0 || e.Method == "" {
		return errors.New("enrollment needs the AK digest, AK public key and method")
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO enrollments
		(ak_digest, ak_public, method, name, enrolled_by, enrolled_at, ek_digest, detail)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (ak_digest) DO UPDATE SET
			ak_public = excluded.ak_public, method = excluded.method, name = excluded.name,
			enrolled_by = excluded.enrolled_by, enrolled_at = excluded.enrolled_at,
			ek_digest = excluded.ek_digest, detail = excluded.detail, revoked_at = NULL, revoked_by = '', revoke_reason = ''
		WHERE enrollments.revoked_at IS NOT NULL`,
		e.AKDigest, e.AKPublic, e.Method, e.Name, e.EnrolledBy, unixNano(e.EnrolledAt), e.EKDigest, e.Detail)
	if err != nil {
		return fmt.Errorf("storing enrollment: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("AK %x: %w (revoke it first to re-enroll)", e.AKDigest, ErrExists)
	}
	return nil
}

// Enrollment returns the enrollment of the AK with the given digest, active
// or revoked, or ErrNotFound.
func (s *Store) Enrollment(ctx context.Context, akDigest []byte) (*Enrollment, error) {
	rows, err := s.stmt(enrollmentSelect+` WHERE ak_digest = ?`).QueryContext(ctx, akDigest)
	if err != nil {
		return nil, fmt.Errorf("looking up enrollment: %w", err)
	}
	list, err := scanEnrollments(rows)
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, ErrNotFound
	}
	return &list[0], nil
}

// Enrollments lists every enrollment, newest first.
func (s *Store) Enrollments(ctx context.Context) ([]Enrollment, error) {
	rows, err := s.db.QueryContext(ctx, enrollmentSelect+` ORDER BY enrolled_at DESC`)
	if err != nil {
		return nil, fmt.Errorf("listing enrollments: %w", err)
	}
	return scanEnrollments(rows)
}

// FindEnrollments returns the enrollments whose hex AK digest starts with
// prefix (at least 8 hex digits), so operators can name an AK the way they
// name a git commit.
func (s *Store) FindEnrollments(ctx context.Context, hexPrefix string) ([]Enrollment, error) {
	if len(hexPrefix) < 8 {
		return nil, fmt.Errorf("AK digest prefix %q is too short; give at least 8 hex digits", hexPrefix)
	}
	rows, err := s.db.QueryContext(ctx, enrollmentSelect+` WHERE lower(hex(ak_digest)) LIKE ? ORDER BY enrolled_at DESC`,
		strings.ToLower(hexPrefix)+"%")
	if err != nil {
		return nil, fmt.Errorf("finding enrollments: %w", err)
	}
	return scanEnrollments(rows)
}

// RevokeEnrollment marks an active enrollment revoked. Revoking an unknown or
// already revoked AK is ErrNotFound.
func (s *Store) RevokeEnrollment(ctx context.Context, akDigest []byte, by, reason string, at time.Time) error {
	res, err := s.db.ExecContext(ctx, `UPDATE enrollments SET revoked_at = ?, revoked_by = ?, revoke_reason = ?
		WHERE ak_digest = ? AND revoked_at IS NULL`, unixNano(at), by, reason, akDigest)
	if err != nil {
		return fmt.Errorf("revoking enrollment: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("no active enrollment for AK %x: %w", akDigest, ErrNotFound)
	}
	return nil
}

const enrollmentSelect = `SELECT ak_digest, ak_public, method, name, enrolled_by, enrolled_at, ek_digest,
	revoked_at, revoked_by, revoke_reason, detail FROM enrollments`

func scanEnrollments(rows *sql.Rows) ([]Enrollment, error) {
	defer rows.Close()
	var out []Enrollment
	for rows.Next() {
		var e Enrollment
		var enrolled int64
		var revoked sql.NullInt64
		if err := rows.Scan(&e.AKDigest, &e.AKPublic, &e.Method, &e.Name, &e.EnrolledBy, &enrolled, &e.EKDigest,
			&revoked, &e.RevokedBy, &e.RevokeReason, &e.Detail); err != nil {
			return nil, fmt.Errorf("reading enrollment: %w", err)
		}
		e.EnrolledAt = fromNano(enrolled)
		e.RevokedAt = nullTime(revoked)
		out = append(out, e)
	}
	return out, rows.Err()
}
