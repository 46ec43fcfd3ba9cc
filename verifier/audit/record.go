// Package audit is the verifier's tamper-evident record of every decision:
// the audit Record schema, the transparency log records are appended to
// (TLog: an RFC 6962 Merkle tree on github.com/transparency-dev/tessera's
// POSIX storage, C2SP tlog-tiles layout, checkpoints as Ed25519 signed
// notes), the content-addressed archive of the evidence and reference sets
// decisions were made on (Archive), and the HTTP handler that serves all of
// it to auditors. The auditor itself is package verifier/audit/auditor.
//
// Records are CBOR (core deterministic encoding), one per log entry, at most
// MaxRecordSize bytes:
//
//	record = {
//	  0 => 1,               ; schema version
//	  1 => tstr,            ; kind: "attestation", "issuance", "decision", "revocation",
//	                        ;       "quarantine", "release", "enrollment", "config", "alert"
//	  2 => int,             ; time, milliseconds since the epoch (verifier clock)
//	  3 => tstr,            ; outcome: "issued", "refused", "permit", "deny", "revoked", ...
//	  ? 4 => [* tstr],      ; reason ids (attest.Reason)
//	  ? 5 => agent,         ; who
//	  ? 6 => tstr,          ; delegating user, where known
//	  ? 7 => tstr,          ; action (the request's intent)
//	  ? 8 => [* tstr],      ; resources
//	  ? 9 => bstr .size 32, ; SHA-256 of the raw evidence (key of the evidence archive)
//	  ? 10 => tstr,         ; reference-set id ("sha256:<hex>", key of the refs archive)
//	  ? 11 => tstr,         ; authorization policy id
//	  12 => tstr,           ; verifier build
//	  ? 13 => credential,   ; the credential issued
//	  ? 14 => tstr,         ; delegation id
//	  ? 15 => { * tstr => tstr }, ; further detail (status, profile, score, ...)
//	  ? 16 => tstr,         ; failing appraisal step ("decode", "nonce", "ak", ...)
//	}
//	agent = { ? 1 => tstr, ? 2 => bstr, ? 3 => bstr, ? 4 => tstr }
//	        ; agent id (sub), agent key thumbprint, AK digest, image digest
//	credential = { 1 => bstr, 2 => tstr, 3 => [* tstr], 4 => int, ? 5 => bool, ? 6 => tstr }
//	        ; cti, aud, scope, exp (seconds), single use, sub
//
// An attestation that ends in a credential is ONE record: kind
// "attestation", outcome "issued", with the credential (13). Kind
// "issuance" is for credentials issued without a fresh attestation. The
// record is appended, and durably sequenced, before the credential is
// signed; the credential then carries the record's index in its private
// claim -65539 (attest.Claims.LogIndex) and the response in the
// Vouch-Log-Index header. The record holds the credential's cti, sub, aud,
// scope and exp but not its signature: a record means "the verifier
// decided to issue this credential", written before the credential existed.
package audit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// SchemaVersion is the record schema this package writes and reads.
const SchemaVersion = 1

// MaxRecordSize bounds an encoded record: the largest entry C2SP tlog-tiles
// allows (its entries carry a 16-bit length).
const MaxRecordSize = 1<<16 - 1

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

// Outcomes of attestation records. Other kinds use their own words
// ("permit", "deny", "revoked", "enrolled", "loaded", ...).
const (
	OutcomeIssued  = "issued"
	OutcomeRefused = "refused"
)

// Well-known Detail keys.
const (
	DetailStatus  = "status"  // EAR status of the appraisal: "affirming", "warning", ...
	DetailProfile = "profile" // reference profile that matched
	DetailEvent   = "event"   // config records: "start", "refs-loaded", ...
	DetailError   = "error"   // the refusal's detail text
	// DetailRevocationKind says what a revocation record revokes: one of
	// the RevocationOf* values.
	DetailRevocationKind = "kind"
)

// What a revocation record (KindRevocation) revokes. Auditors rebuild
// enrollment and hold state from them.
const (
	RevocationOfCredential = "credential" // one credential (Credential set)
	RevocationOfAgent      = "agent"      // an agent instance and its credentials (Agent.ID)
	RevocationOfAK         = "ak"         // an AK's enrollment (Agent.AKDigest)
)

// Record is one audit record.
type Record struct {
	Version        int               `cbor:"0,keyasint"`
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
	Step           string            `cbor:"16,keyasint,omitempty"`
}

// Time returns the record's time.
func (r *Record) Time() time.Time { return time.UnixMilli(r.TimeMillis) }

// Agent identifies the agent a record is about.
type Agent struct {
	ID          string `cbor:"1,keyasint,omitempty" json:"id,omitempty"`           // credential sub
	KeyDigest   []byte `cbor:"2,keyasint,omitempty" json:"key_digest,omitempty"`   // RFC 9679 thumbprint of the agent key
	AKDigest    []byte `cbor:"3,keyasint,omitempty" json:"ak_digest,omitempty"`    // SHA-256 of the AK SubjectPublicKeyInfo
	ImageDigest string `cbor:"4,keyasint,omitempty" json:"image_digest,omitempty"` // workload image
}

// Credential summarises an issued credential.
type Credential struct {
	ID        []byte   `cbor:"1,keyasint" json:"cti"`
	Audience  string   `cbor:"2,keyasint" json:"aud"`
	Scope     []string `cbor:"3,keyasint,omitempty" json:"scope,omitempty"`
	Expiry    int64    `cbor:"4,keyasint" json:"exp"`
	SingleUse bool     `cbor:"5,keyasint,omitempty" json:"single_use,omitempty"`
	Subject   string   `cbor:"6,keyasint,omitempty" json:"sub,omitempty"`
}

// Enqueuer is a Log that also takes records without waiting for them to
// be durable: such a record is sequenced with the next batch (within the
// log's batch age, 5 ms by default), and a crash in that window loses it.
// The verifier enqueues the records it writes at request rate —
// authorization decisions, the monitor's alerts and revocations — where
// waiting for every fsync would cap decisions at a few hundred per second;
// it appends and waits for everything that grants (issued credentials,
// elevations, enrollments).
type Enqueuer interface {
	Enqueue(ctx context.Context, r *Record) error
}

// Log is where records go. Append returns only once the record is durably
// sequenced, with its index in the log.
type Log interface {
	Append(ctx context.Context, r *Record) (index uint64, err error)
}

// Validate checks the fields every record must have.
func (r *Record) Validate() error {
	switch {
	case r.Version != SchemaVersion:
		return fmt.Errorf("audit record: schema version %d, want %d", r.Version, SchemaVersion)
	case r.Kind == "":
		return errors.New("audit record: no kind")
	case r.TimeMillis <= 0:
		return errors.New("audit record: no time")
	case r.Outcome == "":
		return errors.New("audit record: no outcome")
	case r.Build == "":
		return errors.New("audit record: no verifier build")
	case r.EvidenceDigest != nil && len(r.EvidenceDigest) != 32:
		return fmt.Errorf("audit record: evidence digest of %d bytes, want 32", len(r.EvidenceDigest))
	case r.Credential != nil && len(r.Credential.ID) == 0:
		return errors.New("audit record: credential without cti")
	}
	return nil
}

// Encode validates r and returns its deterministic CBOR encoding.
func Encode(r *Record) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	b, err := attest.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("audit record: %w", err)
	}
	if len(b) > MaxRecordSize {
		return nil, fmt.Errorf("audit record: %d bytes, at most %d fit a log entry", len(b), MaxRecordSize)
	}
	return b, nil
}

// Decode decodes and validates one encoded record (a log entry). Decoding is
// strict: unknown fields, duplicate keys and trailing bytes are errors, so an
// entry decodes only if it is a record exactly as a verifier wrote it.
func Decode(b []byte) (*Record, error) {
	if len(b) > MaxRecordSize {
		return nil, fmt.Errorf("audit record: %d bytes, more than %d", len(b), MaxRecordSize)
	}
	var r Record
	if err := attest.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("audit record: %w", err)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}
