package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

const (
	sqlPutNonce     = `INSERT INTO nonces (nonce, issued_at, expires_at) VALUES (?, ?, ?)`
	sqlConsumeNonce = `UPDATE nonces SET used_at = ? WHERE nonce = ? AND used_at IS NULL AND expires_at > ?`
)

// PutNonce records a nonce the verifier handed out.
func (s *Store) PutNonce(ctx context.Context, nonce []byte, issued, expires time.Time) error {
	_, err := s.stmt(sqlPutNonce).ExecContext(ctx, nonce, unixNano(issued), unixNano(expires))
	if err != nil {
		return fmt.Errorf("storing nonce: %w", err)
	}
	return nil
}

// ConsumeNonce marks a nonce used, exactly once. It is one conditional UPDATE,
// so two concurrent attestations with the same nonce (on one verifier or on
// several replicas sharing the database) cannot both succeed. On refusal it
// returns an *attest.Error: nonce-unknown, nonce-expired or nonce-replayed.
// An expired nonce is also marked used, so it cannot be tried again.
func (s *Store) ConsumeNonce(ctx context.Context, nonce []byte, now time.Time) error {
	res, err := s.stmt(sqlConsumeNonce).ExecContext(ctx, unixNano(now), nonce, unixNano(now))
	if err != nil {
		return fmt.Errorf("consuming nonce: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("consuming nonce: %w", err)
	} else if n == 1 {
		return nil
	}
	// Not consumed: find out why, for an error the operator can act on.
	var expires int64
	var used sql.NullInt64
	err = s.db.QueryRowContext(ctx, `SELECT expires_at, used_at FROM nonces WHERE nonce = ?`, nonce).Scan(&expires, &used)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return attest.Errorf(attest.ReasonNonceUnknown, "this verifier never issued the nonce (or forgot it long after it expired); ask POST /v1/challenge for a fresh one")
	case err != nil:
		return fmt.Errorf("looking up nonce: %w", err)
	case used.Valid:
		return attest.Errorf(attest.ReasonNonceReplayed, "the nonce was already used at %s; every attestation needs a fresh challenge", fromNano(used.Int64).Format(time.RFC3339))
	}
	_, _ = s.db.ExecContext(ctx, `UPDATE nonces SET used_at = ? WHERE nonce = ? AND used_at IS NULL`, unixNano(now), nonce)
	return attest.Errorf(attest.ReasonNonceExpired, "the nonce expired at %s, %s before it was used; attest sooner after the challenge or check the agent's clock and network", fromNano(expires).Format(time.RFC3339), now.Sub(fromNano(expires)).Round(time.Millisecond))
}

// PruneNonces deletes nonces that expired before the given time and returns
// how many it removed.
func (s *Store) PruneNonces(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM nonces WHERE expires_at < ?`, unixNano(before))
	if err != nil {
		return 0, fmt.Errorf("pruning nonces: %w", err)
	}
	return res.RowsAffected()
}
