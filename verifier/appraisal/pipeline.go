// Package appraisal turns one evidence into verified facts and an appraisal,
// as a sequence of small named steps: decode → nonce → ak → quote (with the
// firmware event log) → workload (canonical event log, PCR 13) → agent-key
// (TPM2_Certify) → reference-values.
//
// The first steps verify (cryptography: signatures, replays, bindings) and
// produce typed results; only the last step validates those results against
// policy (package policy). A failure stops the pipeline and is a *StepError
// naming the step, wrapping an *attest.Error with a stable reason.
package appraisal

import (
	"context"
	"errors"
	"fmt"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/verifier/store"
)

// Step names one stage of the pipeline. Names are stable: they label metrics
// and audit records.
type Step string

// The steps, in order.
const (
	StepDecode          Step = "decode"
	StepNonce           Step = "nonce"
	StepAK              Step = "ak"
	StepQuote           Step = "quote"
	StepWorkload        Step = "workload"
	StepAgentKey        Step = "agent-key"
	StepReferenceValues Step = "reference-values"
)

// Steps lists every step in pipeline order.
var Steps = []Step{StepDecode, StepNonce, StepAK, StepQuote, StepWorkload, StepAgentKey, StepReferenceValues}

// Decisions the verifier takes after the pipeline passed, on state outside
// the evidence; refusals by them name these steps in audit records, so an
// auditor knows that re-appraising the evidence must pass.
const (
	// StepHeld refuses an agent instance that was revoked, or an agent,
	// workload or machine that is quarantined (continuous monitoring).
	StepHeld Step = "held"
	// StepScope refuses what the delegation, intent and authorization
	// policy do not grant (package verifier/access).
	StepScope Step = "scope"
)

// StepError is a refusal by one step.
type StepError struct {
	Step Step
	Err  error // an *attest.Error, or an internal failure
}

func (e *StepError) Error() string { return fmt.Sprintf("%s: %v", e.Step, e.Err) }
func (e *StepError) Unwrap() error { return e.Err }

// NonceConsumer consumes a challenge nonce exactly once.
type NonceConsumer interface {
	ConsumeNonce(ctx context.Context, nonce []byte, now time.Time) error
}

// AKRegistry answers whether an attestation key is enrolled.
type AKRegistry interface {
	Enrollment(ctx context.Context, akDigest []byte) (*store.Enrollment, error)
}

// RefSource returns the reference values in force. It may change between
// calls (live reload); one Run uses one set throughout.
type RefSource interface {
	Refs() *policy.RefSet
}

// Options configure a Pipeline.
type Options struct {
	Nonces NonceConsumer
	AKs    AKRegistry
	Refs   RefSource
	// AllowWarning issues credentials for appraisals whose status is
	// "warning". Off by default: only "affirming" passes.
	AllowWarning bool
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
	// Observe, if set, is called after every step with its duration and
	// error (nil on success); metrics hang here.
	Observe func(step Step, d time.Duration, err error)
}

// Pipeline appraises evidence. It is safe for concurrent use.
type Pipeline struct {
	opts    Options
	replays *lru.Cache[[32]byte, replayResult]
}

// replayCacheSize bounds the cache of firmware-log replays. A machine's log
// only changes when it reboots, so a fleet needs about one entry per machine
// and boot.
const replayCacheSize = 8192

// New returns a pipeline.
func New(opts Options) (*Pipeline, error) {
	if opts.Nonces == nil || opts.AKs == nil || opts.Refs == nil {
		return nil, errors.New("appraisal: Nonces, AKs and Refs are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	replays, err := lru.New[[32]byte, replayResult](replayCacheSize)
	if err != nil {
		return nil, err
	}
	return &Pipeline{opts: opts, replays: replays}, nil
}

// Outcome is everything the pipeline established. Fields are filled step by
// step; after a refusal, the fields of the steps that passed are set.
type Outcome struct {
	Evidence  *attest.Evidence
	Request   *attest.Request
	Binding   []byte
	AK        *AKResult
	Quote     *QuoteResult
	Workload  *WorkloadResult
	AgentKey  *AgentKeyResult
	Appraisal *policy.Result
	RefSetID  string
}

// Run appraises one encoded evidence. It returns the outcome — partial on
// refusal — and a *StepError when any step refuses.
func (p *Pipeline) Run(ctx context.Context, raw []byte) (*Outcome, error) {
	out := &Outcome{}
	refs := p.opts.Refs.Refs()
	out.RefSetID = refs.ID()
	steps := []struct {
		name Step
		fn   func(context.Context, *Outcome) error
	}{
		{StepDecode, func(_ context.Context, o *Outcome) error { return decode(raw, o) }},
		{StepNonce, p.checkNonce},
		{StepAK, func(ctx context.Context, o *Outcome) error { return p.checkAK(ctx, refs, o) }},
		{StepQuote, func(_ context.Context, o *Outcome) error { return p.verifyQuote(refs, o) }},
		{StepWorkload, func(_ context.Context, o *Outcome) error { return verifyWorkload(o) }},
		{StepAgentKey, func(_ context.Context, o *Outcome) error { return verifyAgentKey(o) }},
		{StepReferenceValues, func(_ context.Context, o *Outcome) error { return p.appraise(refs, o) }},
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return out, &StepError{Step: s.name, Err: attest.Errorf(attest.ReasonUnavailable, "attestation abandoned: %w", err)}
		}
		start := time.Now()
		err := s.fn(ctx, out)
		if p.opts.Observe != nil {
			p.opts.Observe(s.name, time.Since(start), err)
		}
		if err != nil {
			return out, &StepError{Step: s.name, Err: err}
		}
	}
	return out, nil
}

func decode(raw []byte, o *Outcome) error {
	ev, err := attest.DecodeEvidence(raw)
	if err != nil {
		return err
	}
	req, err := attest.DecodeRequest(ev.Request)
	if err != nil {
		return err
	}
	o.Evidence, o.Request = ev, req
	o.Binding = attest.Binding(ev.Nonce, ev.AgentKey, ev.Request)
	return nil
}

func (p *Pipeline) checkNonce(ctx context.Context, o *Outcome) error {
	return p.opts.Nonces.ConsumeNonce(ctx, o.Evidence.Nonce, p.opts.Now())
}

func (p *Pipeline) appraise(refs *policy.RefSet, o *Outcome) error {
	facts := &policy.Facts{
		Verify:     o.Quote.Verify,
		PCRs:       o.Quote.PCRs,
		SecureBoot: o.Quote.Machine.GetSecureBoot().GetEnabled(),
		Boot:       o.Quote.Boot,
		AKDigest:   o.AK.Digest,
		Workload:   o.Workload.Workload,
	}
	res := policy.Appraise(refs, facts)
	o.Appraisal = res
	switch st := res.Status(); {
	case st == attest.StatusAffirming:
		return nil
	case st == attest.StatusWarning && p.opts.AllowWarning:
		return nil
	case st == attest.StatusWarning:
		err := res.Error()
		return attest.Errorf(attest.ReasonAppraisalWarn, "appraisal ended in warning and this verifier issues only for affirming results: %v", err)
	default:
		return res.Error()
	}
}
