package monitor

import (
	"encoding/hex"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// Kind is what produced a signal.
type Kind string

// Signal kinds.
const (
	// KindAttestation: the verifier appraised evidence. Outcome is
	// OutcomeIssued or OutcomeRefused (with Reason).
	KindAttestation Kind = "attestation"
	// KindDecision: the verifier decided an authorization request
	// (POST /v1/authorize, /v1/elevate). Outcome is OutcomePermit or
	// OutcomeDeny.
	KindDecision Kind = "decision"
	// KindRequest: a relying party reports a request that carried a valid
	// credential (POST /v1/signals). Outcome is OutcomeAccepted or
	// OutcomeRefused (with Reason: a failed proof of possession, a revoked
	// credential, scope-insufficient).
	KindRequest Kind = "request"
)

// Outcomes.
const (
	OutcomeIssued   = "issued"
	OutcomeRefused  = "refused"
	OutcomePermit   = "permit"
	OutcomeDeny     = "deny"
	OutcomeAccepted = "accepted"
)

// Signal is one observation of an agent's behaviour. Fill what is known;
// zero fields are ignored by the detectors that would use them.
type Signal struct {
	Kind Kind
	// Time of the event; the monitor's clock when zero. Baselines are
	// learned in signal time, so a replay of old signals is judged as it
	// happened.
	Time time.Time
	// Agent is the agent instance id (credential sub). Empty for an
	// attestation refused before the agent key was checked.
	Agent string
	// AK is the SHA-256 of the machine's attestation key (its enrollment).
	AK []byte
	// Cohort is the agent's image digest: agents of one image share a
	// baseline.
	Cohort string
	// Outcome and Reason of the event (see the Outcome constants).
	Outcome string
	Reason  attest.Reason

	// Action is what the agent did or asked to do ("read", or for relying
	// party reports "METHOD /path"), Resource what it did it to.
	Action   string
	Resource string
	// Intent is the agent's declared intent (credential claim). Its
	// declared actions are DeclaredActions when set, else the monitor
	// configuration's intents entry.
	Intent          string
	DeclaredActions []string
	Delegation      string
	// SourceIP is the network address the request came from.
	SourceIP string
	// CredentialID is the cti of the credential used, if any.
	CredentialID []byte

	// Measurement summarises what an attestation measured (image digest,
	// platform state); compared with the last good attestation of the
	// agent and of the machine.
	Measurement string
	// Image is the image digest an attestation measured, when known (for a
	// refused attestation it may differ from Cohort, the last good image).
	Image string
}

// key is the identity the monitor keeps risk under: the agent instance, or
// the machine when the agent is not known.
func (s *Signal) key() string {
	if s.Agent != "" {
		return s.Agent
	}
	if len(s.AK) > 0 {
		return "ak:" + hex.EncodeToString(s.AK)
	}
	return ""
}

// isDeny reports whether the signal is a refusal of what the agent asked
// to do (as opposed to a failure to prove who it is).
func (s *Signal) isDeny() bool {
	switch s.Kind {
	case KindDecision:
		return s.Outcome == OutcomeDeny
	case KindRequest:
		return s.Outcome == OutcomeRefused && s.Reason == attest.ReasonScopeInsufficient
	}
	return false
}

// isActivity reports whether the signal is something the agent did (it
// counts towards the request rate and the learned habits).
func (s *Signal) isActivity() bool { return s.Kind == KindDecision || s.Kind == KindRequest }
