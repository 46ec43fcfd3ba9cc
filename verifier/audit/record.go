// Package audit defines what the verifier records about every decision and
// the log it records it in. Records are CBOR (deterministic encoding), one per
// attestation outcome, issued credential, authorization decision, revocation,
// quarantine, enrollment and configuration change.
//
//	record = {
//	  1 => tstr,            ; kind: "attestation", "issuance", "decision", "revocation",
//	                        ;       "quarantine", "release", "enrollment", "config", "alert"
//	  2 => int,             ; time, milliseconds since the epoch
//	  3 => tstr,            ; outcome: "issued", "refused", "permit", "deny", "revoked", ...
//	  ? 4 => [* tstr],      ; reason ids (attest.Reason)
//	  ? 5 => agent,         ; who
//	  ? 6 => tstr,          ; delegating user, where known
//	  ? 7 => tstr,          ; action
//	  ? 8 => [* tstr],      ; resources
//	  ? 9 => bstr,          ; SHA-256 of the evidence (key of the evidence archive)
//	  ? 10 => tstr,         ; reference-set id
//	  ? 11 => tstr,         ; authorization policy id
//	  12 => tstr,           ; verifier build
//	  ? 13 => credential,   ; for issuance: the credential issued
//	  ? 14 => tstr,         ; delegation id
//	  ? 15 => { * tstr => tstr }, ; further detail (step, profile, alert score, ...)
//	}
//	agent = { ? 1 => tstr, ? 2 => bstr, ? 3 => bstr, ? 4 => tstr }
//	        ; agent id (sub), agent key thumbprint, AK digest, image digest
//	credential = { 1 => bstr, 2 => tstr, 3 => [* tstr], 4 => int, ? 5 => bool }
//	        ; cti, aud, scope, exp (seconds), single use
package audit

import (
	"context"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// Kind is what a record is about.
type Kind string

// Record kinds.
const (
	KindAttestation Kind = "attestation"
	KindIssuance    Kind = "issuance"
	KindDecision    Kind = "decision"
	KindRevocation  Kind = "revocation"
	KindQuarantine  Kind = "quarantine"
	KindRelease     Kind = "release"
	KindEnrollment  Kind = "enrollment"
	KindConfig      Kind = "config"
	KindAlert       Kind = "alert"
)

// Record is one audit record.
type Record struct {
	Kind           Kind              `cbor:"1,keyasint"`
	TimeMillis     int64             `cbor:"2,keyasint"`
	Outcome        string            `cbor:"3,keyasint"`
	Reasons        []attest.Reason   `cbor:"4,keyasint,omitempty"`
	Agent          *Agent            `cbor:"5,keyasint,omitempty"`
	User           string            `cbor:"6,keyasint,omitempty"`
	Action         string            `cbor:"7,keyasint,omitempty"`
	Resources      []string          `cbor:"8,keyasint,omitempty"`
	EvidenceDigest []byte            `cbor:"9,keyasint,omitempty"`
	RefSetID       string            `cbor:"10,keyasint,omitempty"`
	PolicyID       string            `cbor:"11,keyasint,omitempty"`
	Build          string            `cbor:"12,keyasint"`
	Credential     *Credential       `cbor:"13,keyasint,omitempty"`
	Delegation     string            `cbor:"14,keyasint,omitempty"`
	Detail         map[string]string `cbor:"15,keyasint,omitempty"`
}

// Time returns the record's time.
func (r *Record) Time() time.Time { return time.UnixMilli(r.TimeMillis) }

// Agent identifies the agent a record is about.
type Agent struct {
	ID          string `cbor:"1,keyasint,omitempty"` // credential sub
	KeyDigest   []byte `cbor:"2,keyasint,omitempty"` // RFC 9679 thumbprint of the agent key
	AKDigest    []byte `cbor:"3,keyasint,omitempty"` // SHA-256 of the AK SubjectPublicKeyInfo
	ImageDigest string `cbor:"4,keyasint,omitempty"`
}

// Credential summarises an issued credential.
type Credential struct {
	ID        []byte   `cbor:"1,keyasint"`
	Audience  string   `cbor:"2,keyasint"`
	Scope     []string `cbor:"3,keyasint,omitempty"`
	Expiry    int64    `cbor:"4,keyasint"`
	SingleUse bool     `cbor:"5,keyasint,omitempty"`
}

// Log is where records go. Append returns only once the record is durably
// sequenced, with its index in the log.
type Log interface {
	Append(ctx context.Context, r *Record) (index uint64, err error)
}
