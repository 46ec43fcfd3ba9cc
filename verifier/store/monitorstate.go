package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// The monitor's learned state (baselines, novelty sets, risk, what machines
// measured when they last attested well) is saved here, one snapshot per
// database, so that a restart of the verifier neither forgets suspicion nor
// starts every detector from a cold baseline. The monitor owns the format.
const migrationMonitorState = `CREATE TABLE monitor_state (
		id       INTEGER PRIMARY KEY CHECK (id = 1),
		format   INTEGER NOT NULL,
		saved_at INTEGER NOT NULL,
		state    BLOB NOT NULL
	);`

// MaxMonitorState bounds a saved monitor snapshot (bytes).
const MaxMonitorState = 256 << 20

// MonitorState is a saved monitor snapshot.
type MonitorState struct {
	Format  int // the monitor's snapshot format version
	SavedAt time.Time
	State   []byte
}

// SaveMonitorState replaces the saved monitor snapshot.
func (s *Store) SaveMonitorState(ctx context.Context, st MonitorState) error {
	if len(st.State) > MaxMonitorState {
		return fmt.Errorf("saving monitor state: %d bytes is over the %d-byte bound", len(st.State), MaxMonitorState)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO monitor_state (id, format, saved_at, state) VALUES (1, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET format = excluded.format, saved_at = excluded.saved_at, state = excluded.state`,
		st.Format, unixNano(st.SavedAt), st.State)
	if err != nil {
		return fmt.Errorf("saving monitor state: %w", err)
	}
	return nil
}

// LoadMonitorState returns the saved monitor snapshot, or ErrNotFound.
func (s *Store) LoadMonitorState(ctx context.Context) (*MonitorState, error) {
	var st MonitorState
	var at, size int64
	err := s.db.QueryRowContext(ctx, `SELECT format, saved_at, length(state) FROM monitor_state WHERE id = 1`).Scan(&st.Format, &at, &size)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("loading monitor state: %w", err)
	}
	if size > MaxMonitorState {
		return nil, fmt.Errorf("loading monitor state: %d bytes is over the %d-byte bound", size, MaxMonitorState)
	}
	if err := s.db.QueryRowContext(ctx, `SELECT state FROM monitor_state WHERE id = 1`).Scan(&st.State); err != nil {
		return nil, fmt.Errorf("loading monitor state: %w", err)
	}
	st.SavedAt = fromNano(at)
	return &st, nil
}
