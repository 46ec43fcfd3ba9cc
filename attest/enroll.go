package attest

import "time"

// Enrollment API (JSON; byte strings are standard base64):
//
//	POST /v1/enroll           EnrollRequest    → 201 EnrollResponse
//	POST /v1/enroll/activate  ActivateRequest  → 201 EnrollmentResult
//
// An agent asks to enroll its AK with its EK certificate (or, for TPMs
// without one, its allowlisted EK public key). The verifier checks the EK
// certificate chain and the AK's creation attestation, and answers with a
// credential-activation challenge (TPM2_MakeCredential): a secret encrypted
// to the EK and bound to the AK's name. Only the TPM that holds both keys
// can recover it (TPM2_ActivateCredential); sending it back proves the AK
// lives in that TPM, and the verifier enrolls the AK. With an AK certificate
// from a trusted cloud CA (AKCert), the AK is enrolled at once.

// Paths of the enrollment API.
const (
	EnrollPath   = "/v1/enroll"
	ActivatePath = "/v1/enroll/activate"
)

// MaxEnrollRequestSize bounds an enrollment request body.
const MaxEnrollRequestSize = 64 << 10

// EnrollRequest is the body of POST /v1/enroll.
type EnrollRequest struct {
	// EKCert is the EK certificate as read from the TPM's NV index
	// (0x01c00002 RSA, 0x01c0000a ECC): DER, possibly with the TCG NV
	// header or padding.
	EKCert []byte `json:"ek_cert,omitempty"`
	// EKChain holds intermediate CA certificates (DER) the TPM stores in NV.
	EKChain [][]byte `json:"ek_chain,omitempty"`
	// EKPublic is the TPM's EK public key (DER SubjectPublicKeyInfo): the
	// key the certificate certifies, or the allowlisted key of a TPM
	// without a certificate.
	EKPublic []byte `json:"ek_public"`
	// AK is the attestation key and the TPM's attestation of its creation
	// (go-attestation AttestationParameters).
	AK AKParameters `json:"ak"`
	// AKCert is a certificate of the AK by a cloud provider's CA (vTPMs).
	AKCert []byte `json:"ak_cert,omitempty"`
	// Name is a label for the machine, free text.
	Name string `json:"name,omitempty"`
}

// AKParameters describe an AK: its TPMT_PUBLIC, and the TPMS_CREATION_DATA
// of its creation certified by itself (TPM2_CertifyCreation), which proves
// the TPM created it with the attributes its public area shows.
type AKParameters struct {
	Public            []byte `json:"public"`
	CreateData        []byte `json:"create_data"`
	CreateAttestation []byte `json:"create_attestation"`
	CreateSignature   []byte `json:"create_signature"`
}

// EnrollResponse is the answer to POST /v1/enroll: a challenge to
// activate, or (AK certificate mode) the enrollment itself.
type EnrollResponse struct {
	Challenge *ActivationChallenge `json:"challenge,omitempty"`
	Enrolled  *EnrollmentResult    `json:"enrolled,omitempty"`
}

// ActivationChallenge is a credential-activation challenge: Credential and
// Secret are TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET (go-attestation
// EncryptedCredential) for TPM2_ActivateCredential.
type ActivationChallenge struct {
	ID         []byte    `json:"id"`
	Credential []byte    `json:"credential"`
	Secret     []byte    `json:"secret"`
	Method     string    `json:"method"`
	ExpiresAt  time.Time `json:"expires_at"`
}

// ActivateRequest is the body of POST /v1/enroll/activate.
type ActivateRequest struct {
	ID     []byte `json:"id"`
	Secret []byte `json:"secret"` // what TPM2_ActivateCredential returned
}

// EnrollmentResult says which AK is now trusted, and why.
type EnrollmentResult struct {
	AKDigest   string    `json:"ak_digest"` // hex SHA-256 of the AK SubjectPublicKeyInfo
	EKDigest   string    `json:"ek_digest,omitempty"`
	Method     string    `json:"method"` // "activation", "ek-allowlist", "ak-cert"
	EnrolledAt time.Time `json:"enrolled_at"`
	// Already is true when the AK was enrolled by this EK before.
	Already bool `json:"already,omitempty"`
	// Superseded lists the AKs (hex digests) of the same TPM this
	// enrollment revoked: the TPM was cleared and has a new AK.
	Superseded []string `json:"superseded,omitempty"`
	// Detail is the JSON the registry records (EK issuer, serial, TPM
	// manufacturer/model/version, quirks tolerated).
	Detail string `json:"detail,omitempty"`
}

// Enrollment methods.
const (
	EnrollMethodActivation  = "activation"   // EK certificate chains to a manufacturer root; AK proven by activation
	EnrollMethodEKAllowlist = "ek-allowlist" // EK public key on the allowlist; AK proven by activation
	EnrollMethodAKCert      = "ak-cert"      // AK certificate chains to a cloud provider's root
	EnrollMethodOperator    = "operator"     // an operator's word (vouch agents enroll)
)
