package verifier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/verifier/appraisal"
	"github.com/vouch-dev/vouch/verifier/audit"
)

// Record appends an audit record and returns its index once it is durably
// sequenced. It fills the time (the verifier clock) and the verifier build
// when they are unset. Every decision the verifier takes goes through here:
//
//	idx, err := s.Record(ctx, &audit.Record{Kind: audit.KindRevocation, Outcome: "revoked", ...})
//
// A decision that must not take effect unrecorded (issuing, revoking,
// enrolling) fails when Record fails; a refusal is refused either way.
func (s *Server) Record(ctx context.Context, r *audit.Record) (uint64, error) {
	return s.record(ctx, r)
}

// serverLog is the audit.Log the verifier's components (enrollment,
// authorization) append through, so that their records get the verifier's
// clock, build and metrics like every other.
type serverLog struct{ s *Server }

func (l serverLog) Append(ctx context.Context, r *audit.Record) (uint64, error) {
	return l.s.record(ctx, r)
}

// Enqueue records without waiting for durability when the log can
// (audit.Enqueuer), and waits otherwise.
func (l serverLog) Enqueue(ctx context.Context, r *audit.Record) error {
	s := l.s
	r.Version = audit.SchemaVersion
	if r.TimeMillis == 0 {
		r.TimeMillis = s.cfg.Now().UnixMilli()
	}
	if r.Build == "" {
		r.Build = s.cfg.Build
	}
	q, ok := s.audit.(audit.Enqueuer)
	if !ok {
		_, err := s.record(ctx, r)
		return err
	}
	if err := q.Enqueue(ctx, r); err != nil {
		s.metrics.auditFailures.Inc()
		return &attest.Error{Reason: attest.ReasonUnavailable, Detail: "the verifier's audit log is unavailable; nothing is decided unrecorded, retry shortly", Err: err}
	}
	s.metrics.auditRecords.WithLabelValues(string(r.Kind)).Inc()
	return nil
}

func (s *Server) record(ctx context.Context, r *audit.Record) (uint64, error) {
	r.Version = audit.SchemaVersion
	if r.TimeMillis == 0 {
		r.TimeMillis = s.cfg.Now().UnixMilli()
	}
	if r.Build == "" {
		r.Build = s.cfg.Build
	}
	idx, err := s.audit.Append(ctx, r)
	if err != nil {
		s.metrics.auditFailures.Inc()
		return 0, &attest.Error{Reason: attest.ReasonUnavailable, Detail: "the verifier's audit log is unavailable; nothing is decided unrecorded, retry shortly", Err: err}
	}
	s.metrics.auditRecords.WithLabelValues(string(r.Kind)).Inc()
	return idx, nil
}

// SetRefs makes refs the reference set in force: it archives the set
// (DataDir/refs/<id>.cbor, so auditors can re-appraise against it), records
// a config record naming it and the source of the change, then swaps it in.
// Live reload calls this, never RefHolder.Set directly:
//
//	err := s.SetRefs(ctx, refs, "reload: "+dir)
func (s *Server) SetRefs(ctx context.Context, refs *policy.RefSet, source string) error {
	if err := s.archive.PutRefs(refs); err != nil {
		return &attest.Error{Reason: attest.ReasonUnavailable, Detail: "the reference set cannot be archived; it is not put in force", Err: err}
	}
	prev := s.cfg.Refs.Refs()
	detail := map[string]string{audit.DetailEvent: "refs-loaded", "source": source}
	if prev != nil {
		detail["previous"] = prev.ID()
	}
	if _, err := s.record(ctx, &audit.Record{Kind: audit.KindConfig, Outcome: "loaded", RefSetID: refs.ID(), Detail: detail}); err != nil {
		return err
	}
	s.cfg.Refs.Set(refs)
	return nil
}

// ArchiveEvidence stores raw evidence content-addressed and returns its
// SHA-256, the EvidenceDigest of the record that names it.
func (s *Server) ArchiveEvidence(raw []byte) ([]byte, error) { return s.archive.PutEvidence(raw) }

// attestationRecord describes one attestation outcome: who, what was asked,
// on what evidence and reference set, and what came of it.
func (s *Server) attestationRecord(out *appraisal.Outcome, evidence []byte, err error) *audit.Record {
	r := &audit.Record{Kind: audit.KindAttestation, Outcome: audit.OutcomeIssued, EvidenceDigest: evidence}
	if err != nil {
		r.Outcome = audit.OutcomeRefused
		r.Reasons = []attest.Reason{attest.ReasonOf(err)}
		r.Detail = map[string]string{audit.DetailError: truncate(err.Error(), 1024)}
		var se *appraisal.StepError
		if errors.As(err, &se) {
			r.Step = string(se.Step)
		}
	}
	if out == nil {
		return r
	}
	r.RefSetID = out.RefSetID
	if out.Request != nil {
		r.Action, r.Resources, r.Delegation = out.Request.Intent, out.Request.Resources, out.Request.Delegation
	}
	var a audit.Agent
	if out.AK != nil {
		a.AKDigest = out.AK.Digest
	}
	if out.Workload != nil {
		a.ImageDigest = out.Workload.ImageDigest
	}
	if out.AgentKey != nil {
		a.ID = out.AgentKey.Subject
		if out.AgentKey.COSE != nil {
			a.KeyDigest = out.AgentKey.COSE.ID
		}
	}
	if a.ID != "" || a.AKDigest != nil || a.ImageDigest != "" {
		r.Agent = &a
	}
	if out.Appraisal != nil {
		if r.Detail == nil {
			r.Detail = map[string]string{}
		}
		r.Detail[audit.DetailStatus] = out.Appraisal.Status().String()
		if out.Appraisal.Profile != "" {
			r.Detail[audit.DetailProfile] = out.Appraisal.Profile
		}
		for _, cr := range out.Appraisal.Reasons() {
			if !containsReason(r.Reasons, cr.Reason) {
				r.Reasons = append(r.Reasons, cr.Reason)
			}
		}
	}
	return r
}

// auditRefusal archives the evidence of a refused attestation and records
// the refusal. The caller is refused whatever happens here; a failure is
// logged loudly, since it leaves a decision unrecorded.
func (s *Server) auditRefusal(ctx context.Context, raw []byte, out *appraisal.Outcome, refusal error) {
	var digest []byte
	if len(raw) > 0 {
		d, err := s.archive.PutEvidence(raw)
		if err != nil {
			s.log.ErrorContext(ctx, "evidence of a refused attestation not archived", "err", err)
		}
		digest = d
	}
	// A refusal is recorded even when the client has gone away.
	ctx = context.WithoutCancel(ctx)
	s.appendQueued(ctx)
	if _, err := s.record(ctx, s.attestationRecord(out, digest, refusal)); err != nil {
		s.log.ErrorContext(ctx, "attestation refusal not recorded in the audit log", "err", err, "reason", attest.ReasonOf(refusal))
	}
}

func containsReason(rs []attest.Reason, r attest.Reason) bool {
	for _, x := range rs {
		if x == r {
			return true
		}
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// startRecord is the config record of a verifier start.
func (s *Server) startRecord() *audit.Record {
	return &audit.Record{Kind: audit.KindConfig, Outcome: "started", RefSetID: s.cfg.Refs.Refs().ID(), Detail: map[string]string{
		audit.DetailEvent: "start",
		"issuer":          s.cfg.Issuer,
		"credential_ttl":  s.cfg.CredentialTTL.String(),
		"allow_warning":   fmt.Sprint(s.cfg.AllowWarning),
	}}
}

// drainAuditOutbox appends the audit records the vouch CLI queued in the
// database for its offline changes (operator enrollment, AK revocation,
// users) to the log, oldest first: at start, then every second. A record
// is deleted from the queue only after it is sequenced, so a crash between
// the two can append it twice, never lose it.
func (s *Server) drainAuditOutbox(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		s.appendQueued(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// appendQueued appends what the outbox holds. Attestations call it before
// their own record; the drain loop, every second. s.outboxMu keeps two
// callers from appending the same entry.
func (s *Server) appendQueued(ctx context.Context) {
	s.outboxMu.Lock()
	defer s.outboxMu.Unlock()
	queued, err := s.store.QueuedAuditRecords(ctx, 100)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("reading the audit outbox", "err", err)
		}
		return
	}
	for _, q := range queued {
		rec, err := audit.Decode(q.Record)
		if err != nil {
			// Record that a queued record was unreadable, rather than block
			// the queue or drop it silently.
			rec = &audit.Record{Kind: audit.KindConfig, Outcome: "queued-record-malformed",
				Detail: map[string]string{audit.DetailError: err.Error(), "queued_at": q.CreatedAt.Format(time.RFC3339Nano)}}
		}
		if _, err := s.record(ctx, rec); err != nil {
			s.log.Warn("appending a queued audit record; retrying later", "err", err)
			return
		}
		if err := s.store.DeleteQueuedAuditRecord(ctx, q.ID); err != nil {
			s.log.Warn("clearing the audit outbox", "err", err)
			return
		}
	}
}
