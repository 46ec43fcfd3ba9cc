package attest

import (
	"time"

	"github.com/veraison/go-cose"
)

// CredentialMediaType is the Content-Type of an encoded credential (RFC 8392).
const CredentialMediaType = "application/cwt"

// Profile is the eat_profile (RFC 9711) of every Vouch credential.
const Profile = "tag:vouch.dev,2026:credential/v1"

// Submodule names in a credential's submods claim.
const (
	SubmodTPM      = "tpm"      // platform: AK, quote, measured boot
	SubmodWorkload = "workload" // the agent's image, from the canonical event log
	SubmodTEE      = "tee"      // confidential-computing report, when present
)

// Claims is the CWT claims set (RFC 8392) of a Vouch credential.
//
//	claims = {
//	  1 => tstr,            ; iss: verifier id
//	  2 => tstr,            ; sub: agent instance id (RFC 9679 thumbprint URI of the cnf key)
//	  3 => tstr,            ; aud: relying party
//	  4 => int, 5 => int, 6 => int,   ; exp, nbf, iat (seconds since the epoch)
//	  7 => bstr .size 16,   ; cti: credential id, key of its audit entry
//	  8 => { 1 => COSE_Key },         ; cnf: proof-of-possession key (RFC 8747)
//	  ? 9 => [* tstr],      ; scope: granted "action:resource" entries
//	  10 => bstr,           ; eat_nonce: the challenge nonce
//	  265 => tstr,          ; eat_profile
//	  266 => { * tstr => appraisal },   ; submods: "tpm", "workload", "tee"
//	  1004 => verifier-id,
//	  ? -65537 => tstr,     ; delegation id
//	  ? -65538 => tstr,     ; intent
//	  ? -65539 => uint,     ; audit log index of the issuance record
//	  ? -65540 => bool,     ; single use (just-in-time elevation)
//	}
type Claims struct {
	Issuer     string               `cbor:"1,keyasint"`
	Subject    string               `cbor:"2,keyasint"`
	Audience   string               `cbor:"3,keyasint"`
	Expiry     int64                `cbor:"4,keyasint"`
	NotBefore  int64                `cbor:"5,keyasint"`
	IssuedAt   int64                `cbor:"6,keyasint"`
	ID         []byte               `cbor:"7,keyasint"`
	Confirm    Confirmation         `cbor:"8,keyasint"`
	Scope      []string             `cbor:"9,keyasint,omitempty"`
	Nonce      []byte               `cbor:"10,keyasint"`
	Profile    string               `cbor:"265,keyasint"`
	Submods    map[string]Appraisal `cbor:"266,keyasint"`
	VerifierID VerifierID           `cbor:"1004,keyasint"`
	Delegation string               `cbor:"-65537,keyasint,omitempty"`
	Intent     string               `cbor:"-65538,keyasint,omitempty"`
	LogIndex   *uint64              `cbor:"-65539,keyasint,omitempty"`
	SingleUse  bool                 `cbor:"-65540,keyasint,omitempty"`
}

// ExpiresAt, NotBeforeTime and IssuedAtTime return the time claims as times.
func (c *Claims) ExpiresAt() time.Time     { return time.Unix(c.Expiry, 0) }
func (c *Claims) NotBeforeTime() time.Time { return time.Unix(c.NotBefore, 0) }
func (c *Claims) IssuedAtTime() time.Time  { return time.Unix(c.IssuedAt, 0) }

// Confirmation is the cnf claim (RFC 8747): the key whose holder the
// credential was issued to.
type Confirmation struct {
	Key *cose.Key `cbor:"1,keyasint"`
}

// VerifierID is ear.verifier-id: who built the verifier that appraised.
type VerifierID struct {
	Developer string `cbor:"0,keyasint"`
	Build     string `cbor:"1,keyasint"`
}

// Appraisal is one EAR appraisal (draft-fv-rats-ear) of a submodule.
//
//	appraisal = {
//	  1000 => status,            ; 0 none, 2 affirming, 32 warning, 96 contraindicated
//	  ? 1001 => trust-vector,    ; AR4SI trustworthiness vector
//	  ? 1003 => tstr,            ; appraisal policy id (reference set content hash)
//	  ? 1005 => attester-claims, ; what was appraised, e.g. the image digest
//	  ? -65541 => [* reason],    ; why a claim is not affirming
//	}
type Appraisal struct {
	Status      Status          `cbor:"1000,keyasint"`
	TrustVector TrustVector     `cbor:"1001,keyasint,omitempty"`
	PolicyID    string          `cbor:"1003,keyasint,omitempty"`
	Claims      *AttesterClaims `cbor:"1005,keyasint,omitempty"`
	Reasons     []ClaimReason   `cbor:"-65541,keyasint,omitempty"`
}

// ClaimReason explains one non-affirming trustworthiness claim.
type ClaimReason struct {
	Reason Reason `cbor:"1,keyasint"`
	Claim  string `cbor:"2,keyasint,omitempty"` // trust vector claim name, e.g. "executables"
	Detail string `cbor:"3,keyasint,omitempty"`
}

// AttesterClaims are the appraised facts a relying party may want to see.
type AttesterClaims struct {
	ImageDigest *Digest `cbor:"1,keyasint,omitempty"`
	ImageRef    string  `cbor:"2,keyasint,omitempty"`
	AKDigest    *Digest `cbor:"3,keyasint,omitempty"` // SHA-256 of the AK's SubjectPublicKeyInfo
	Platform    string  `cbor:"4,keyasint,omitempty"` // reference profile that matched
	SecureBoot  *bool   `cbor:"5,keyasint,omitempty"`
	PCRBank     string  `cbor:"6,keyasint,omitempty"` // bank the quote was verified on, e.g. "sha256"
}

// Digest is a hash value as [COSE algorithm, bytes] (e.g. [-16, h] for SHA-256).
type Digest struct {
	_     struct{} `cbor:",toarray"`
	Alg   int64
	Value []byte
}

// COSE hash algorithm identifiers (RFC 9054).
const (
	HashSHA256 int64 = -16
	HashSHA384 int64 = -43
	HashSHA512 int64 = -44
)

// Status is an EAR appraisal status, the AR4SI tier of the worst claim.
type Status int8

// EAR status values.
const (
	StatusNone            Status = 0
	StatusAffirming       Status = 2
	StatusWarning         Status = 32
	StatusContraindicated Status = 96
)

func (s Status) String() string {
	switch s {
	case StatusNone:
		return "none"
	case StatusAffirming:
		return "affirming"
	case StatusWarning:
		return "warning"
	case StatusContraindicated:
		return "contraindicated"
	}
	return "unknown"
}

// TierOf returns the status tier an AR4SI claim value falls into.
func TierOf(v int8) Status {
	a := int(v)
	if a < 0 {
		a = -a
	}
	switch {
	case a <= 1:
		return StatusNone
	case a < 32:
		return StatusAffirming
	case a < 96:
		return StatusWarning
	}
	return StatusContraindicated
}

// TrustVector is the AR4SI trustworthiness vector. Each value is an AR4SI
// claim value; 0 means no claim was made.
type TrustVector struct {
	InstanceIdentity int8 `cbor:"0,keyasint,omitempty"`
	Configuration    int8 `cbor:"1,keyasint,omitempty"`
	Executables      int8 `cbor:"2,keyasint,omitempty"`
	FileSystem       int8 `cbor:"3,keyasint,omitempty"`
	Hardware         int8 `cbor:"4,keyasint,omitempty"`
	RuntimeOpaque    int8 `cbor:"5,keyasint,omitempty"`
	StorageOpaque    int8 `cbor:"6,keyasint,omitempty"`
	SourcedData      int8 `cbor:"7,keyasint,omitempty"`
}

// Status returns the worst tier among the claims of v.
func (v TrustVector) Status() Status {
	worst := StatusNone
	for _, c := range v.Values() {
		if t := TierOf(c.Value); t > worst {
			worst = t
		}
	}
	return worst
}

// NamedClaim is one trust vector entry with its AR4SI name.
type NamedClaim struct {
	Name  string
	Value int8
}

// Values returns the vector's claims in AR4SI order, with their names.
func (v TrustVector) Values() []NamedClaim {
	return []NamedClaim{
		{"instance-identity", v.InstanceIdentity},
		{"configuration", v.Configuration},
		{"executables", v.Executables},
		{"file-system", v.FileSystem},
		{"hardware", v.Hardware},
		{"runtime-opaque", v.RuntimeOpaque},
		{"storage-opaque", v.StorageOpaque},
		{"sourced-data", v.SourcedData},
	}
}

// AR4SI claim values used by Vouch (draft-ietf-rats-ar4si §2.3). Values are
// per claim; the same number means different things in different claims.
const (
	ClaimNone             int8 = 0
	ClaimVerifierError    int8 = 1
	ClaimCryptoFailed     int8 = 99 // any claim: evidence failed cryptographic validation
	IdentityTrusted       int8 = 2  // instance-identity: recognised, not compromised
	IdentityUnrecognized  int8 = 97 // instance-identity: not recognised
	IdentityCompromised   int8 = 96 // instance-identity: recognised but known bad
	ConfigApproved        int8 = 2  // configuration: approved
	ConfigUnsafe          int8 = 32 // configuration: known to be unsafe
	ConfigUnsupportable   int8 = 96 // configuration: not acceptable
	ExecApprovedRuntime   int8 = 2  // executables: approved boot and runtime
	ExecApprovedBoot      int8 = 3  // executables: approved boot only
	ExecUnrecognized      int8 = 33 // executables: unrecognised runtime
	ExecContraindicated   int8 = 96 // executables: known bad or not allowed
	HardwareGenuine       int8 = 2  // hardware: genuine
	HardwareUnsafe        int8 = 32 // hardware: known vulnerable
	HardwareContraindicat int8 = 96 // hardware: not acceptable
	RuntimeIsolated       int8 = 2  // runtime-opaque: memory protected (TEE)
	RuntimeVisible        int8 = 32 // runtime-opaque: memory visible to the host
	StorageHWKeys         int8 = 2  // storage-opaque: keys held by hardware (TPM)
	SourcedTrusted        int8 = 2  // sourced-data: from trusted sources
)
