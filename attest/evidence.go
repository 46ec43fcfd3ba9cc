package attest

import (
	"crypto/sha256"
	"fmt"
	"unicode/utf8"
)

// EvidenceMediaType is the Content-Type of an encoded [Evidence].
const EvidenceMediaType = "application/vnd.vouch.evidence+cbor"

// EvidenceVersion is the only evidence version this package reads and writes.
const EvidenceVersion = 1

// NonceSize is the size of a verifier challenge nonce.
const NonceSize = 32

// Field limits of a [Request]. They keep the request small enough to log and
// audit whole.
const (
	MaxAudienceLen  = 256
	MaxIntentLen    = 128
	MaxResourceLen  = 512
	MaxResources    = 64
	MaxDelegationID = 128
)

// Evidence is what an agent sends to POST /v1/attest. See the package
// documentation for its CDDL.
type Evidence struct {
	Version     int    `cbor:"1,keyasint"`
	Nonce       []byte `cbor:"2,keyasint"`
	Request     []byte `cbor:"3,keyasint"` // deterministic CBOR of a Request
	TPM         []byte `cbor:"4,keyasint"` // go-tpm-tools attest.Attestation, protobuf
	AgentKey    []byte `cbor:"5,keyasint"` // TPMT_PUBLIC
	CertifyInfo []byte `cbor:"6,keyasint"` // TPMS_ATTEST
	CertifySig  []byte `cbor:"7,keyasint"` // TPMT_SIGNATURE
}

// Request is what the agent asks for. Its encoding is covered by the binding,
// so the TPM signs what was asked together with the platform state.
type Request struct {
	Audience   string   `cbor:"1,keyasint"`
	Intent     string   `cbor:"2,keyasint,omitempty"`
	Resources  []string `cbor:"3,keyasint,omitempty"`
	Delegation string   `cbor:"4,keyasint,omitempty"`
}

// Validate checks the request's fields against their limits.
func (r *Request) Validate() error {
	if r.Audience == "" {
		return Errorf(ReasonAudienceInvalid, "the request names no audience; pass the relying party's identifier (e.g. --audience https://docs.example)")
	}
	if err := checkText("audience", r.Audience, MaxAudienceLen); err != nil {
		return Errorf(ReasonAudienceInvalid, "%v", err)
	}
	if err := checkText("intent", r.Intent, MaxIntentLen); err != nil {
		return Errorf(ReasonRequestMalformed, "%v", err)
	}
	if err := checkText("delegation", r.Delegation, MaxDelegationID); err != nil {
		return Errorf(ReasonRequestMalformed, "%v", err)
	}
	if len(r.Resources) > MaxResources {
		return Errorf(ReasonRequestMalformed, "the request names %d resources; at most %d are allowed", len(r.Resources), MaxResources)
	}
	for i, res := range r.Resources {
		if res == "" {
			return Errorf(ReasonRequestMalformed, "resource %d is empty", i)
		}
		if err := checkText(fmt.Sprintf("resource %d", i), res, MaxResourceLen); err != nil {
			return Errorf(ReasonRequestMalformed, "%v", err)
		}
	}
	return nil
}

func checkText(field, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%s is %d bytes long; at most %d are allowed", field, len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not valid UTF-8", field)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s contains a control character", field)
		}
	}
	return nil
}

// EncodeRequest returns the deterministic encoding of r, after validating it.
func EncodeRequest(r *Request) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return Marshal(r)
}

// DecodeRequest decodes and validates an encoded Request.
func DecodeRequest(data []byte) (*Request, error) {
	var r Request
	if err := Unmarshal(data, &r); err != nil {
		return nil, Errorf(ReasonRequestMalformed, "the attestation request is not a valid CBOR request map: %w", err)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// EncodeEvidence returns the deterministic encoding of e.
func EncodeEvidence(e *Evidence) ([]byte, error) {
	b, err := Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encoding evidence: %w", err)
	}
	if len(b) > MaxEvidenceSize {
		return nil, Errorf(ReasonRequestTooLarge, "evidence is %d bytes; the verifier accepts at most %d", len(b), MaxEvidenceSize)
	}
	return b, nil
}

// DecodeEvidence decodes an encoded Evidence and checks that every field is
// present and of a plausible size. It does no cryptography.
func DecodeEvidence(data []byte) (*Evidence, error) {
	if len(data) > MaxEvidenceSize {
		return nil, Errorf(ReasonRequestTooLarge, "evidence is %d bytes; the verifier accepts at most %d", len(data), MaxEvidenceSize)
	}
	var e Evidence
	if err := Unmarshal(data, &e); err != nil {
		return nil, Errorf(ReasonRequestMalformed, "evidence is not a valid CBOR evidence map: %w", err)
	}
	if e.Version != EvidenceVersion {
		return nil, Errorf(ReasonRequestMalformed, "evidence version %d is not supported; this verifier reads version %d", e.Version, EvidenceVersion)
	}
	if len(e.Nonce) != NonceSize {
		return nil, Errorf(ReasonRequestMalformed, "evidence nonce is %d bytes; a verifier nonce is %d", len(e.Nonce), NonceSize)
	}
	for _, f := range []struct {
		name string
		v    []byte
	}{
		{"request (3)", e.Request},
		{"tpm attestation (4)", e.TPM},
		{"agent key (5)", e.AgentKey},
		{"certify info (6)", e.CertifyInfo},
		{"certify signature (7)", e.CertifySig},
	} {
		if len(f.v) == 0 {
			return nil, Errorf(ReasonRequestMalformed, "evidence field %s is missing or empty", f.name)
		}
	}
	return &e, nil
}

// bindingLabel separates Vouch bindings from any other use of the same TPM key.
const bindingLabel = "vouch/attest/v1"

// Binding returns
//
//	SHA-256("vouch/attest/v1" ‖ nonce ‖ SHA-256(agentKeyPublic) ‖ SHA-256(request))
//
// where agentKeyPublic is the agent key's TPMT_PUBLIC and request the encoded
// Request. It is the extraData of the quote and the qualifyingData of the
// agent key certification.
func Binding(nonce, agentKeyPublic, request []byte) []byte {
	keyDigest := sha256.Sum256(agentKeyPublic)
	reqDigest := sha256.Sum256(request)
	h := sha256.New()
	h.Write([]byte(bindingLabel))
	h.Write(nonce)
	h.Write(keyDigest[:])
	h.Write(reqDigest[:])
	return h.Sum(nil)
}
