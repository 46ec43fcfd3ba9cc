package verifier

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/verifier/audit"
)

// RefHolder holds the reference values in force and swaps them atomically
// on reload, so that each appraisal sees one consistent set: an appraisal
// that started before a swap finishes with the set it started with.
type RefHolder struct {
	cur atomic.Pointer[policy.RefSet]
	mu  sync.Mutex // serialises reloads
}

// NewRefHolder returns a holder serving refs.
func NewRefHolder(refs *policy.RefSet) *RefHolder {
	h := &RefHolder{}
	h.cur.Store(refs)
	return h
}

// Refs returns the set in force.
func (h *RefHolder) Refs() *policy.RefSet { return h.cur.Load() }

// Set replaces the set in force.
func (h *RefHolder) Set(refs *policy.RefSet) { h.cur.Store(refs) }

// EKDenied reports whether an endorsement key, named by the SHA-256 of its
// SubjectPublicKeyInfo, is on the deny list of the set in force, with the
// list's note. Enrollment (credential activation against an EK) must call it
// and refuse with attest.ReasonEKDenied.
func (h *RefHolder) EKDenied(spkiDigest []byte) (bool, string) {
	return h.Refs().EKDenied(spkiDigest)
}

// RefLoader loads a reference set.
type RefLoader func() (*policy.RefSet, error)

// DirLoader loads the reference set of a directory.
func DirLoader(dir string) RefLoader {
	return func() (*policy.RefSet, error) { return policy.LoadRefs(os.DirFS(dir), ".") }
}

// ReloadRefs loads a set and, if it is valid and differs from the set in
// force, swaps it in atomically. A set that fails to load leaves the set in
// force as it is: the failure is logged, counted
// (vouch_refs_reloads_total{result="failed"}) and returned. Applied and
// failed reloads are recorded in the audit log ("config" records) when one
// is configured. trigger says what asked for the reload (e.g. "sighup").
func (s *Server) ReloadRefs(ctx context.Context, load RefLoader, trigger string) (changed bool, err error) {
	h := s.cfg.Refs
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.Refs()
	next, err := load()
	if err != nil {
		s.metrics.refReloads.WithLabelValues("failed").Inc()
		s.log.ErrorContext(ctx, "reference values not reloaded; keeping the set in force", "refs", old.ID(), "trigger", trigger, "err", err)
		s.auditConfig(ctx, "refs-rejected", old.ID(), map[string]string{"trigger": trigger, "error": err.Error()})
		return false, err
	}
	if next.ID() == old.ID() {
		s.metrics.refReloads.WithLabelValues("unchanged").Inc()
		return false, nil
	}
	// SetRefs archives the set and records the change before it swaps it
	// in: no credential can name a set the auditor cannot find.
	if err := s.SetRefs(ctx, next, "reload: "+trigger); err != nil {
		s.metrics.refReloads.WithLabelValues("failed").Inc()
		s.log.ErrorContext(ctx, "reference values not put in force: they could not be archived or recorded", "refs", next.ID(), "err", err)
		return false, err
	}
	s.metrics.refReloads.WithLabelValues("applied").Inc()
	s.metrics.setRefs(next.ID())
	s.log.InfoContext(ctx, "reference values reloaded", "refs", next.ID(), "previous", old.ID(), "trigger", trigger,
		"profiles", len(next.Profiles), "images", len(next.Images))
	return true, nil
}

func (s *Server) auditConfig(ctx context.Context, outcome, refsID string, detail map[string]string) {
	rec := &audit.Record{Kind: audit.KindConfig, Outcome: outcome, RefSetID: refsID, Action: "refs-reload", Detail: detail}
	if _, err := s.record(ctx, rec); err != nil {
		s.log.ErrorContext(ctx, "audit log append failed for a reference-value reload", "err", err)
	}
}

// WatchOptions configure WatchRefs.
type WatchOptions struct {
	// Dir is the reference directory (vouchd --refs).
	Dir string
	// Interval is how often Dir is polled for changes (names, sizes and
	// modification times of its YAML files). Zero means 2 s; negative
	// disables polling (reload on Trigger only).
	Interval time.Duration
	// Trigger forces a reload on every receive (vouchd sends SIGHUP here).
	Trigger <-chan os.Signal
}

// WatchRefs reloads the reference directory whenever its files change or
// Trigger fires, until ctx is done. Write files atomically (write a
// temporary file, then rename it in): a half-written file is rejected like
// any broken one, and the previous set stays in force until the directory
// is valid again.
func (s *Server) WatchRefs(ctx context.Context, opts WatchOptions) {
	if opts.Interval == 0 {
		opts.Interval = 2 * time.Second
	}
	load := DirLoader(opts.Dir)
	last, _ := dirFingerprint(opts.Dir)
	var tick <-chan time.Time
	if opts.Interval > 0 {
		t := time.NewTicker(opts.Interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-opts.Trigger:
			last, _ = dirFingerprint(opts.Dir)
			s.ReloadRefs(ctx, load, "signal")
		case <-tick:
			fp, err := dirFingerprint(opts.Dir)
			if err != nil {
				if fp != last {
					s.log.ErrorContext(ctx, "reference directory unreadable; keeping the set in force", "dir", opts.Dir, "err", err)
					s.metrics.refReloads.WithLabelValues("failed").Inc()
				}
				last = fp
				continue
			}
			if fp == last {
				continue
			}
			last = fp
			s.ReloadRefs(ctx, load, "file-change")
		}
	}
}

// dirFingerprint summarises the reference files of dir: names, sizes and
// modification times. It changes when a file is written, renamed in or
// removed.
func dirFingerprint(dir string) ([32]byte, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return [32]byte{}, fmt.Errorf("reading %s: %w", dir, err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	h := sha256.New()
	var b [8]byte
	var errs []error
	for _, e := range entries {
		if e.IsDir() || !policy.IsRefFile(e.Name()) {
			continue
		}
		info, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		h.Write([]byte(e.Name()))
		h.Write([]byte{0})
		binary.BigEndian.PutUint64(b[:], uint64(info.Size()))
		h.Write(b[:])
		binary.BigEndian.PutUint64(b[:], uint64(info.ModTime().UnixNano()))
		h.Write(b[:])
	}
	var out [32]byte
	h.Sum(out[:0])
	return out, errors.Join(errs...)
}
