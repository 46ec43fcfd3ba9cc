package store

import (
	"context"
	"fmt"
	"time"
)

// Changes operators make with the vouch CLI directly in the database
// (operator enrollment, AK revocation, registering a user) are decisions
// too, and the CLI cannot append to the transparency log, which vouchd
// owns. The CLI queues their audit records here, in the same database; vouchd
// appends them to the log (audit.Record, encoded) and deletes them. A record
// stays queued until it is sequenced, so none is lost while vouchd is down.
const migrationAuditOutbox = `CREATE TABLE audit_outbox (
		id         INTEGER PRIMARY KEY AUTOINCREMENT,
		record     BLOB NOT NULL,
		created_at INTEGER NOT NULL
	);`

// QueuedRecord is one queued audit record.
type QueuedRecord struct {
	ID        int64
	Record    []byte // audit.Encode of the record
	CreatedAt time.Time
}

// QueueAuditRecord queues an encoded audit record for vouchd to append.
func (s *Store) QueueAuditRecord(ctx context.Context, record []byte, at time.Time) error {
	if _, err := s.db.ExecContext(ctx, `INSERT INTO audit_outbox (record, created_at) VALUES (?, ?)`, record, unixNano(at)); err != nil {
		return fmt.Errorf("queueing audit record: %w", err)
	}
	return nil
}

const sqlQueuedAuditRecords = `SELECT id, record, created_at FROM audit_outbox ORDER BY id LIMIT ?`

// QueuedAuditRecords returns up to limit queued records, oldest first.
func (s *Store) QueuedAuditRecords(ctx context.Context, limit int) ([]QueuedRecord, error) {
	rows, err := s.stmt(sqlQueuedAuditRecords).QueryContext(ctx, limit)
	if err != nil {
		return nil, fmt.Errorf("reading the audit outbox: %w", err)
	}
	defer rows.Close()
	var out []QueuedRecord
	for rows.Next() {
		var e QueuedRecord
		var at int64
		if err := rows.Scan(&e.ID, &e.Record, &at); err != nil {
			return nil, fmt.Errorf("reading the audit outbox: %w", err)
		}
		e.CreatedAt = fromNano(at)
		out = append(out, e)
	}
	return out, rows.Err()
}

// DeleteQueuedAuditRecord removes a record once it is in the log.
func (s *Store) DeleteQueuedAuditRecord(ctx context.Context, id int64) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM audit_outbox WHERE id = ?`, id); err != nil {
		return fmt.Errorf("clearing the audit outbox: %w", err)
	}
	return nil
}
