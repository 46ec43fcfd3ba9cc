package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// EnrollChallenge is an outstanding credential-activation challenge: the
// verifier encrypted a secret to an EK, bound to an AK's name, and waits for
// the secret back (POST /v1/enroll/activate).
type EnrollChallenge struct {
	ID           []byte
	SecretDigest []byte // SHA-256 of the secret; the secret itself is not kept
	AKPublic     []byte // SubjectPublicKeyInfo of the AK to enroll
	EKDigest     []byte
	Method       string
	Name         string
	Detail       string
	IssuedAt     time.Time
	ExpiresAt    time.Time
}

// PutEnrollChallenge records a challenge.
func (s *Store) PutEnrollChallenge(ctx context.Context, c EnrollChallenge) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO enroll_challenges
		(id, secret_digest, ak_public, ek_digest, method, name, detail, issued_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.ID, c.SecretDigest, c.AKPublic, c.EKDigest, c.Method, c.Name, c.Detail, unixNano(c.IssuedAt), unixNano(c.ExpiresAt))
	if err != nil {
		return fmt.Errorf("storing enrollment challenge: %w", err)
	}
	return nil
}

// ConsumeEnrollChallenge marks a challenge answered, exactly once (one
// conditional UPDATE, like ConsumeNonce), and returns it. Refusals are
// *attest.Error: enroll-challenge-unknown, -expired or -replayed.
func (s *Store) ConsumeEnrollChallenge(ctx context.Context, id []byte, now time.Time) (*EnrollChallenge, error) {
	c := EnrollChallenge{ID: id}
	var issued, expires int64
	err := s.db.QueryRowContext(ctx, `UPDATE enroll_challenges SET used_at = ?
		WHERE id = ? AND used_at IS NULL AND expires_at > ?
		RETURNING secret_digest, ak_public, ek_digest, method, name, detail, issued_at, expires_at`,
		unixNano(now), id, unixNano(now)).Scan(&c.SecretDigest, &c.AKPublic, &c.EKDigest, &c.Method, &c.Name, &c.Detail, &issued, &expires)
	if err == nil {
		c.IssuedAt, c.ExpiresAt = fromNano(issued), fromNano(expires)
		return &c, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("consuming enrollment challenge: %w", err)
	}
	var used sql.NullInt64
	err = s.db.QueryRowContext(ctx, `SELECT expires_at, used_at FROM enroll_challenges WHERE id = ?`, id).Scan(&expires, &used)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, attest.Errorf(attest.ReasonEnrollChallengeGone, "this verifier issued no enrollment challenge with this id; start again with POST /v1/enroll")
	case err != nil:
		return nil, fmt.Errorf("looking up enrollment challenge: %w", err)
	case used.Valid:
		return nil, attest.Errorf(attest.ReasonEnrollReplayed, "the enrollment challenge was already answered at %s; an activation is accepted once", fromNano(used.Int64).Format(time.RFC3339))
	}
	_, _ = s.db.ExecContext(ctx, `UPDATE enroll_challenges SET used_at = ? WHERE id = ? AND used_at IS NULL`, unixNano(now), id)
	return nil, attest.Errorf(attest.ReasonEnrollChallengeStale, "the enrollment challenge expired at %s; start again with POST /v1/enroll", fromNano(expires).Format(time.RFC3339))
}

// PruneEnrollChallenges deletes challenges that expired before the given time.
func (s *Store) PruneEnrollChallenges(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM enroll_challenges WHERE expires_at < ?`, unixNano(before))
	if err != nil {
		return 0, fmt.Errorf("pruning enrollment challenges: %w", err)
	}
	return res.RowsAffected()
}

// SupersededBy is the revoked_by of enrollments the verifier revoked because
// the same TPM enrolled a new AK.
const SupersededBy = "verifier (superseded)"

// EnrollByEK records the enrollment of an AK that proved it lives in the
// TPM of e.EKDigest, in one transaction:
//
//   - other active enrollments of the same EK are revoked ("superseded"): a
//     TPM has one AK at a time, and a new one means the TPM was cleared (its
//     owner hierarchy, where the AK lives, has a new seed) or re-provisioned;
//   - an active enrollment of the same AK by the same EK is kept as it is
//     (enrolling twice is not an error) and returned with already=true;
//   - an operator's revocation of the AK or of any AK of the EK sticks: the
//     result is an ak-revoked refusal;
//   - otherwise the AK is enrolled (replacing a revoked enrollment of it).
//
// It returns the AK digests it revoked.
func (s *Store) EnrollByEK(ctx context.Context, e Enrollment) (revoked [][]byte, already bool, err error) {
	if len(e.EKDigest) == 0 {
		return nil, false, errors.New("enrollment by EK needs the EK digest")
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, false, fmt.Errorf("enrollment transaction: %w", err)
	}
	defer tx.Rollback()
	var cur struct {
		ek      []byte
		revoked sql.NullInt64
	}
	err = tx.QueryRowContext(ctx, `SELECT ek_digest, revoked_at FROM enrollments WHERE ak_digest = ?`, e.AKDigest).Scan(&cur.ek, &cur.revoked)
	switch {
	case err == nil && !cur.revoked.Valid && bytes.Equal(cur.ek, e.EKDigest):
		return nil, true, tx.Commit()
	case err == nil && !cur.revoked.Valid && len(cur.ek) != 0:
		return nil, false, fmt.Errorf("AK %x is enrolled already, for another EK: %w (revoke it first)", e.AKDigest, ErrExists)
	case err != nil && !errors.Is(err, sql.ErrNoRows):
		return nil, false, fmt.Errorf("looking up enrollment: %w", err)
	}
	// An operator's revocation sticks: neither the revoked AK nor a new AK
	// of the same TPM comes back by activation alone.
	var by, reason string
	var at int64
	err = tx.QueryRowContext(ctx, `SELECT revoked_by, revoke_reason, revoked_at FROM enrollments
		WHERE (ek_digest = ? OR ak_digest = ?) AND revoked_at IS NOT NULL AND revoked_by != ? LIMIT 1`,
		e.EKDigest, e.AKDigest, SupersededBy).Scan(&by, &reason, &at)
	switch {
	case err == nil:
		return nil, false, attest.Errorf(attest.ReasonAKRevoked, "%s revoked this TPM's enrollment at %s (%s); it cannot re-enroll by itself: an operator re-admits it with `vouch agents enroll`", by, fromNano(at).Format(time.RFC3339), reason)
	case !errors.Is(err, sql.ErrNoRows):
		return nil, false, fmt.Errorf("looking up revocations: %w", err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT ak_digest FROM enrollments WHERE ek_digest = ? AND revoked_at IS NULL AND ak_digest != ?`, e.EKDigest, e.AKDigest)
	if err != nil {
		return nil, false, fmt.Errorf("finding enrollments of the EK: %w", err)
	}
	for rows.Next() {
		var d []byte
		if err := rows.Scan(&d); err != nil {
			rows.Close()
			return nil, false, err
		}
		revoked = append(revoked, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	for _, d := range revoked {
		if _, err := tx.ExecContext(ctx, `UPDATE enrollments SET revoked_at = ?, revoked_by = ?, revoke_reason = ? WHERE ak_digest = ?`,
			unixNano(e.EnrolledAt), SupersededBy, fmt.Sprintf("superseded by AK %x enrolled by the same EK (TPM cleared or re-provisioned)", e.AKDigest[:8]), d); err != nil {
			return nil, false, fmt.Errorf("revoking superseded enrollment: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO enrollments
		(ak_digest, ak_public, method, name, enrolled_by, enrolled_at, ek_digest, detail)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (ak_digest) DO UPDATE SET
			ak_public = excluded.ak_public, method = excluded.method, name = excluded.name,
			enrolled_by = excluded.enrolled_by, enrolled_at = excluded.enrolled_at,
			ek_digest = excluded.ek_digest, detail = excluded.detail, revoked_at = NULL, revoked_by = '', revoke_reason = ''`,
		e.AKDigest, e.AKPublic, e.Method, e.Name, e.EnrolledBy, unixNano(e.EnrolledAt), e.EKDigest, e.Detail); err != nil {
		return nil, false, fmt.Errorf("storing enrollment: %w", err)
	}
	return revoked, false, tx.Commit()
}
