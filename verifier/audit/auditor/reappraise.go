package auditor

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/verifier/appraisal"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/store"
)

// Re-appraisal re-runs the verifier's appraisal pipeline on the archived
// evidence of every attestation record, against the archived reference set
// the record names, with the record's time as the clock, and compares the
// outcome (issued or refused, the failing step and reason, the EAR status)
// with what the record says.
//
// What it proves: the quote, firmware event log, canonical event log and
// agent-key certification in the evidence verify, and the reference set
// the verifier says it used gives the recorded outcome — so a record cannot
// claim "issued" for evidence that does not appraise, nor "refused" for
// evidence that does, without it showing. What it cannot re-check:
//   - freshness: nonces are single-use and gone; the nonce step is skipped
//     (the record, sequenced when it was, shows it was fresh then), and
//     records refused at that step are not re-appraised;
//   - AK enrollment: the enrollment registry is re-built from the
//     enrollment and revocation records earlier in the log; for an AK the
//     log has no such record (enrolled before audit, or out of band) the
//     record's own word is taken, and the report counts those;
//   - verifier faults (reasons "internal", "unavailable") are not re-run.
//
// It does check that no two records got past the nonce step with the same
// nonce (a replay accepted, or a record made up from old evidence).
type reappraiser struct {
	src    Source
	rep    *Report
	refs   map[string]*policy.RefSet
	bad    map[string]bool
	pipes  map[string]*appraisal.Pipeline
	enroll map[string]*store.Enrollment
	cur    *audit.Record
	nonces map[[32]byte]uint64 // nonces consumed, by the index of the record that consumed them
	// quarantines in force (by quarantine id) and revoked agent instances,
	// from the quarantine, release and revocation records seen so far.
	quarantines map[string]*audit.Agent
	quarScope   map[string]string
	revoked     map[string]bool
}

func newReappraiser(src Source, rep *Report) *reappraiser {
	rep.Skipped = map[string]uint64{}
	return &reappraiser{src: src, rep: rep, refs: map[string]*policy.RefSet{}, bad: map[string]bool{},
		pipes: map[string]*appraisal.Pipeline{}, enroll: map[string]*store.Enrollment{}, nonces: map[[32]byte]uint64{},
		quarantines: map[string]*audit.Agent{}, quarScope: map[string]string{}, revoked: map[string]bool{}}
}

// Outcomes of records about AKs, as enrollment and revocation records
// write them (Agent.AKDigest set, no Credential).
const (
	outcomeEnrolled = "enrolled"
	outcomeRevoked  = "revoked"
)

func (r *reappraiser) record(ctx context.Context, idx uint64, rec *audit.Record) {
	switch rec.Kind {
	case audit.KindEnrollment:
		if rec.Agent != nil && len(rec.Agent.AKDigest) > 0 && rec.Outcome == outcomeEnrolled {
			r.enroll[hex.EncodeToString(rec.Agent.AKDigest)] = &store.Enrollment{AKDigest: rec.Agent.AKDigest, Method: rec.Detail["method"], EnrolledAt: rec.Time()}
		}
	case audit.KindQuarantine:
		if rec.Agent != nil && rec.Detail["quarantine_id"] != "" {
			r.quarantines[rec.Detail["quarantine_id"]] = rec.Agent
			r.quarScope[rec.Detail["quarantine_id"]] = rec.Detail["scope"]
		}
	case audit.KindRelease:
		delete(r.quarantines, rec.Detail["quarantine_id"])
	case audit.KindRevocation:
		if rec.Agent != nil && rec.Detail[audit.DetailRevocationKind] == audit.RevocationOfAgent && rec.Agent.ID != "" {
			r.revoked[rec.Agent.ID] = true
		}
		if rec.Agent != nil && len(rec.Agent.AKDigest) > 0 && rec.Detail[audit.DetailRevocationKind] == audit.RevocationOfAK && rec.Outcome == outcomeRevoked {
			t := rec.Time()
			e := r.enroll[hex.EncodeToString(rec.Agent.AKDigest)]
			if e == nil {
				e = &store.Enrollment{AKDigest: rec.Agent.AKDigest}
				r.enroll[hex.EncodeToString(rec.Agent.AKDigest)] = e
			}
			e.RevokedAt, e.RevokeReason = &t, rec.Detail["reason"]
		}
	case audit.KindAttestation:
		r.reappraise(ctx, idx, rec)
	}
}

func (r *reappraiser) skip(why string) { r.rep.Skipped[why]++ }

// heldByLog reports whether the log, up to the record being re-appraised,
// revoked this agent instance or holds a quarantine of it, its workload
// (AK and image) or its machine (AK).
func (r *reappraiser) heldByLog(out *appraisal.Outcome) bool {
	if out == nil || out.AgentKey == nil || out.AK == nil || out.Workload == nil {
		return false
	}
	sub, ak, img := out.AgentKey.Subject, out.AK.Digest, out.Workload.ImageDigest
	if r.revoked[sub] {
		return true
	}
	for id, a := range r.quarantines {
		switch r.quarScope[id] {
		case store.QuarantineAgent:
			if a.ID == sub {
				return true
			}
		case store.QuarantineWorkload:
			if bytes.Equal(a.AKDigest, ak) && a.ImageDigest == img {
				return true
			}
		case store.QuarantineMachine:
			if bytes.Equal(a.AKDigest, ak) {
				return true
			}
		}
	}
	return false
}

func (r *reappraiser) reappraise(ctx context.Context, idx uint64, rec *audit.Record) {
	recReason := attest.Reason("")
	if len(rec.Reasons) > 0 {
		recReason = rec.Reasons[0]
	}
	switch {
	case rec.EvidenceDigest == nil:
		r.skip("no evidence (refused before it was read)")
		return
	case rec.Step == string(appraisal.StepNonce):
		r.skip("refused at the nonce step (freshness is not re-checkable)")
		return
	case rec.Outcome == audit.OutcomeRefused && (recReason == attest.ReasonInternal || recReason == attest.ReasonUnavailable):
		r.skip("verifier fault")
		return
	case rec.RefSetID == "":
		r.skip("no reference set named")
		return
	}
	pipe := r.pipeline(ctx, idx, rec.RefSetID)
	if pipe == nil {
		return
	}
	ev, err := r.src.ReadEvidence(ctx, rec.EvidenceDigest)
	if err != nil {
		r.skip("evidence unreadable (reported)")
		return
	}
	r.cur = rec
	out, runErr := pipe.Run(ctx, ev)
	r.rep.Reappraised++
	got := describe(out, runErr)
	want := recorded(rec)
	if rec.Step == string(appraisal.StepHeld) || rec.Step == string(appraisal.StepScope) {
		// Refused after the pipeline, on state outside the evidence: the
		// evidence itself must pass, and a hold must be in the log.
		if !got.issued {
			r.rep.add(FindReappraisal, ptr(idx), "the record says %s, after appraisal, but its evidence does not pass appraisal against %s: %s", want, rec.RefSetID, got)
		} else if rec.Step == string(appraisal.StepHeld) && !r.heldByLog(out) {
			r.rep.add(FindReappraisal, ptr(idx), "the record says %s, but the log holds no revocation or quarantine in force for this agent, its workload or its machine", want)
		}
	} else if !same(got, want) {
		r.rep.add(FindReappraisal, ptr(idx), "the record says %s; re-appraising its evidence against %s gives %s", want, rec.RefSetID, got)
	}
	// A nonce is consumed once: a record past the nonce step whose nonce an
	// earlier record consumed means a replay was accepted, or the record lies.
	if rec.Step != string(appraisal.StepDecode) && out != nil && out.Evidence != nil && len(out.Evidence.Nonce) == 32 {
		n := [32]byte(out.Evidence.Nonce)
		if first, ok := r.nonces[n]; ok {
			r.rep.add(FindReappraisal, ptr(idx), "the record says %s, past the nonce step, but its nonce was already consumed by record %d: a replay was accepted, or the record lies", want, first)
		} else {
			r.nonces[n] = idx
		}
	}
}

// pipeline returns the appraisal pipeline for a reference set, loading the
// set from the archive (nil when it is missing or altered: reported).
func (r *reappraiser) pipeline(ctx context.Context, idx uint64, id string) *appraisal.Pipeline {
	if p, ok := r.pipes[id]; ok {
		return p
	}
	if r.bad[id] {
		r.skip("reference set not archived or altered (reported)")
		return nil
	}
	b, err := r.src.ReadRefs(ctx, id)
	if err != nil {
		r.bad[id] = true
		kind := FindRefsMissing
		if !errors.Is(err, fs.ErrNotExist) {
			err = fmt.Errorf("cannot be read: %w", err)
		}
		r.rep.add(kind, ptr(idx), "the reference set %s this record names is not in the archive: %v", id, err)
		return nil
	}
	set, err := policy.ParseCanonical(b)
	if err == nil && set.ID() != id {
		err = fmt.Errorf("it hashes to %s", set.ID())
	}
	if err != nil {
		r.bad[id] = true
		r.rep.add(FindRefsAltered, ptr(idx), "the archived reference set %s is not the one its id names: %v", id, err)
		return nil
	}
	p, err := appraisal.New(appraisal.Options{
		Nonces:       freshThen{},
		AKs:          akRegistry{r},
		Refs:         fixedRefs{set},
		AllowWarning: true,
		Now:          func() time.Time { return r.cur.Time() },
	})
	if err != nil {
		r.bad[id] = true
		r.rep.add(FindRefsAltered, ptr(idx), "the reference set %s cannot be used: %v", id, err)
		return nil
	}
	r.pipes[id] = p
	return p
}

// outcome is what an appraisal came to, in the terms records use.
type outcome struct {
	issued bool
	step   string
	reason attest.Reason
	status string
}

func (o outcome) String() string {
	if o.issued && o.status != "" {
		return fmt.Sprintf("issued (status %s)", o.status)
	}
	if o.issued {
		return "issued"
	}
	return fmt.Sprintf("refused at step %s (%s)", o.step, o.reason)
}

func describe(out *appraisal.Outcome, err error) outcome {
	o := outcome{issued: err == nil}
	if out != nil && out.Appraisal != nil {
		o.status = out.Appraisal.Status().String()
	}
	if err != nil {
		o.reason = attest.ReasonOf(err)
		var se *appraisal.StepError
		if errors.As(err, &se) {
			o.step = string(se.Step)
		}
	}
	return o
}

func recorded(rec *audit.Record) outcome {
	o := outcome{issued: rec.Outcome == audit.OutcomeIssued, step: rec.Step, status: rec.Detail[audit.DetailStatus]}
	if len(rec.Reasons) > 0 && !o.issued {
		o.reason = rec.Reasons[0]
	}
	return o
}

// same compares a re-appraisal with a record. The re-run allows warnings,
// so a record refused for a warning matches a re-run that passed with one.
func same(got, want outcome) bool {
	if want.issued {
		return got.issued && (want.status == "" || got.status == want.status)
	}
	if got.issued {
		return want.reason == attest.ReasonAppraisalWarn && got.status == attest.StatusWarning.String()
	}
	return got.step == want.step && got.reason == want.reason
}

// freshThen passes the nonce step: the nonce was consumed when the record
// was written and cannot be consumed again.
type freshThen struct{}

func (freshThen) ConsumeNonce(context.Context, []byte, time.Time) error { return nil }

type fixedRefs struct{ set *policy.RefSet }

func (f fixedRefs) Refs() *policy.RefSet { return f.set }

// akRegistry answers from the enrollment records seen so far, or, for an
// AK the log has no record of, from the record being re-appraised.
type akRegistry struct{ r *reappraiser }

func (a akRegistry) Enrollment(_ context.Context, digest []byte) (*store.Enrollment, error) {
	if e, ok := a.r.enroll[hex.EncodeToString(digest)]; ok {
		return e, nil
	}
	a.r.rep.Skipped["AK enrollment not in the log: the record's word taken"]++
	rec := a.r.cur
	if rec.Step == string(appraisal.StepAK) && len(rec.Reasons) > 0 {
		switch rec.Reasons[0] {
		case attest.ReasonAKUnknown:
			return nil, store.ErrNotFound
		case attest.ReasonAKRevoked:
			t := rec.Time()
			return &store.Enrollment{AKDigest: digest, RevokedAt: &t, RevokedBy: "(per the record)"}, nil
		}
	}
	return &store.Enrollment{AKDigest: digest, Method: "(per the record)", EnrolledAt: rec.Time()}, nil
}
