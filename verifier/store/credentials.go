package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Credential records one issued credential.
type Credential struct {
	ID          []byte // cti
	Subject     string
	Audience    string
	AKDigest    []byte
	ImageDigest string
	Scope       []string // stored one entry a line (resource ids hold no control characters)
	IssuedAt    time.Time
	ExpiresAt   time.Time
	LogIndex    *uint64 // audit log index of the issuance record, once sequenced
	Delegation  string  // delegation it was issued under, if any
	SingleUse   bool    // a just-in-time elevation
	Intent      string  // the intent the agent declared
}

const sqlRecordCredential = `INSERT INTO credentials
	(cti, subject, audience, ak_digest, image_digest, scope, issued_at, expires_at, log_index, delegation, single_use, intent)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// RecordCredential stores an issued credential.
func (s *Store) RecordCredential(ctx context.Context, c Credential) error {
	var idx sql.NullInt64
	if c.LogIndex != nil {
		idx = sql.NullInt64{Int64: int64(*c.LogIndex), Valid: true}
	}
	_, err := s.stmt(sqlRecordCredential).ExecContext(ctx,
		c.ID, c.Subject, c.Audience, c.AKDigest, c.ImageDigest, strings.Join(c.Scope, "\n"),
		unixNano(c.IssuedAt), unixNano(c.ExpiresAt), idx, c.Delegation, c.SingleUse, c.Intent)
	if err != nil {
		return fmt.Errorf("recording credential: %w", err)
	}
	return nil
}

// CredentialByID returns the credential with the given cti, or ErrNotFound.
func (s *Store) CredentialByID(ctx context.Context, cti []byte) (*Credential, error) {
	var c Credential
	var scope string
	var issued, expires int64
	var idx sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT cti, subject, audience, ak_digest, image_digest, scope,
		issued_at, expires_at, log_index, delegation, single_use, intent FROM credentials WHERE cti = ?`, cti).
		Scan(&c.ID, &c.Subject, &c.Audience, &c.AKDigest, &c.ImageDigest, &scope, &issued, &expires, &idx, &c.Delegation, &c.SingleUse, &c.Intent)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("looking up credential: %w", err)
	}
	if scope != "" {
		c.Scope = strings.Split(scope, "\n")
	}
	c.IssuedAt, c.ExpiresAt = fromNano(issued), fromNano(expires)
	if idx.Valid {
		v := uint64(idx.Int64)
		c.LogIndex = &v
	}
	return &c, nil
}
