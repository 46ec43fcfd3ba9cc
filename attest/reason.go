package attest

import (
	"errors"
	"fmt"
)

// Reason is the stable identifier of one failure cause. It never changes
// meaning once published: operators alert on it, relying parties branch on it
// and the audit log records it. The problem type URI of a refusal is
// ProblemBase + string(reason).
type Reason string

// ProblemBase prefixes a Reason to form an RFC 9457 problem type URI. The page
// it names documents every reason (docs/problems.md in the repository).
const ProblemBase = "https://vouch.dev/problems/"

// Request and transport problems.
const (
	ReasonRequestMalformed     Reason = "request-malformed"      // body is not the expected CBOR/JSON, or misses a field
	ReasonRequestTooLarge      Reason = "request-too-large"      // body exceeds the size limit
	ReasonUnsupportedMediaType Reason = "unsupported-media-type" // wrong Content-Type
	ReasonAudienceInvalid      Reason = "audience-invalid"       // missing or unacceptable audience
	ReasonInternal             Reason = "internal"               // a verifier fault; nothing the caller did
	ReasonUnavailable          Reason = "unavailable"            // a dependency (store, log) is down; retry later
	ReasonRateLimited          Reason = "rate-limited"           // too many requests from this client address; retry after Retry-After
)

// Freshness.
const (
	ReasonNonceUnknown  Reason = "nonce-unknown"  // the verifier never issued this nonce
	ReasonNonceExpired  Reason = "nonce-expired"  // issued, but its lifetime passed before use
	ReasonNonceReplayed Reason = "nonce-replayed" // issued and already consumed by an earlier attestation
)

// Attestation key trust.
const (
	ReasonAKUnknown    Reason = "ak-unknown"    // the AK is not enrolled
	ReasonAKRevoked    Reason = "ak-revoked"    // the AK was enrolled, and the enrollment revoked
	ReasonAKAttributes Reason = "ak-attributes" // the AK is not a restricted, fixedTPM signing key
	ReasonAKMalformed  Reason = "ak-malformed"  // the AK public area cannot be decoded
)

// Enrollment: why an attestation key becomes trusted (POST /v1/enroll).
const (
	ReasonEKCertMissing        Reason = "ek-cert-missing"           // no EK certificate, and the EK is not on the allowlist
	ReasonEKCertMalformed      Reason = "ek-cert-malformed"         // the EK certificate cannot be parsed, or has an extension the verifier does not understand
	ReasonEKCertUntrusted      Reason = "ek-cert-untrusted"         // the EK certificate does not chain to a configured manufacturer root
	ReasonEKCertExpired        Reason = "ek-cert-expired"           // the EK certificate is outside its validity period
	ReasonEKKeyMismatch        Reason = "ek-key-mismatch"           // the TPM's EK is not the key its EK certificate certifies
	ReasonAKCertUntrusted      Reason = "ak-cert-untrusted"         // the AK certificate does not chain to a configured AK root, or certifies another key
	ReasonEnrollModeDisabled   Reason = "enroll-mode-disabled"      // the enrollment mode needs roots or an allowlist this verifier lacks
	ReasonEnrollChallengeGone  Reason = "enroll-challenge-unknown"  // the activation names no challenge this verifier issued
	ReasonEnrollChallengeStale Reason = "enroll-challenge-expired"  // the activation came after the challenge expired
	ReasonEnrollReplayed       Reason = "enroll-challenge-replayed" // the challenge was already answered
	ReasonActivationFailed     Reason = "enroll-activation-failed"  // the answer is not the secret: the AK is not in the TPM of that EK
)

// TPM quote and event logs.
const (
	ReasonQuoteInvalid      Reason = "quote-invalid"       // signature, nonce or PCR digest of the quote is wrong
	ReasonEventLogMissing   Reason = "eventlog-missing"    // no firmware event log was sent
	ReasonEventLogMalformed Reason = "eventlog-malformed"  // the firmware event log cannot be parsed
	ReasonEventLogReplay    Reason = "eventlog-replay"     // replaying the log does not give the quoted PCRs
	ReasonEventLogEvent     Reason = "eventlog-event-data" // an event's data does not match the digest it was measured with
	ReasonCELMissing        Reason = "cel-missing"         // no canonical event log for the workload (PCR 13)
	ReasonCELMalformed      Reason = "cel-malformed"       // the canonical event log cannot be parsed, or holds unexpected records
	ReasonCELReplay         Reason = "cel-replay"          // replaying the CEL does not give the quoted PCR 13
	ReasonCELRecordDigest   Reason = "cel-record-digest"   // a CEL record's content does not match its digest
)

// Agent key certification.
const (
	ReasonAgentKeyMalformed  Reason = "agent-key-malformed"  // agent key public area cannot be decoded, or is not ECC P-256
	ReasonAgentKeyAttributes Reason = "agent-key-attributes" // agent key is not fixedTPM/fixedParent/sensitiveDataOrigin, or is restricted
	ReasonAgentKeyCertify    Reason = "agent-key-certify"    // TPM2_Certify is not signed by the AK, or certifies another key
	ReasonAgentKeyBinding    Reason = "agent-key-binding"    // TPM2_Certify qualifyingData is not the binding value
)

// Reference values (appraisal).
const (
	ReasonRefsImageDigest Reason = "refs-image-digest" // workload image digest is not allowed
	ReasonRefsImageRef    Reason = "refs-image-ref"    // workload image reference is not allowed
	ReasonRefsBootState   Reason = "refs-boot-state"   // measured boot differs from the expected boot state
	ReasonRefsSecureBoot  Reason = "refs-secure-boot"  // secure boot state is not what the reference requires
	ReasonRefsPCR         Reason = "refs-pcr"          // a PCR differs from its golden value
	ReasonRefsDenied      Reason = "refs-denied"       // a measured component is on a deny list
	ReasonRefsNoProfile   Reason = "refs-no-profile"   // no reference profile matches this platform
	ReasonAppraisalWarn   Reason = "appraisal-warning" // appraisal ended in "warning" and policy refuses warnings

	ReasonRefsFirmware       Reason = "refs-firmware"        // platform firmware (S-CRTM version, firmware blob) is not allowed
	ReasonRefsOptionROM      Reason = "refs-option-rom"      // an option ROM or adapter driver is not allowed
	ReasonRefsEFIApp         Reason = "refs-efi-app"         // an EFI application (shim, boot loader) is not allowed
	ReasonRefsKernel         Reason = "refs-kernel"          // a kernel, initrd or file the boot loader loaded is not allowed
	ReasonRefsLoader         Reason = "refs-loader"          // a boot loader command is not allowed
	ReasonRefsKernelCmdline  Reason = "refs-kernel-cmdline"  // the kernel command line breaks the profile's rules
	ReasonRefsSBAuthority    Reason = "refs-sb-authority"    // PK, KEK, db or a verification authority holds an unexpected entry
	ReasonRefsDBX            Reason = "refs-dbx"             // the dbx lacks revocations the profile or deny list requires
	ReasonRefsWorkloadConfig Reason = "refs-workload-config" // the workload's arguments or environment break its image's rules
)

// Threat intelligence on TPM keys.
const (
	ReasonAKDenied Reason = "ak-denied" // the AK is on the reference set's deny list
	ReasonEKDenied Reason = "ek-denied" // the EK is on the reference set's deny list (enrollment)
)

// Continuous monitoring (issuance refused after a response).
const (
	ReasonAgentQuarantined Reason = "agent-quarantined" // the agent, its workload on that machine, or the machine is quarantined
	ReasonAgentRevoked     Reason = "agent-revoked"     // this agent instance (its key) was revoked; start a fresh instance
	ReasonReporterUnknown  Reason = "reporter-unknown"  // POST /v1/signals without a reporter token the verifier knows
)

// Credential verification (relying party).
const (
	ReasonCredentialMissing     Reason = "credential-missing"       // no credential was presented
	ReasonCredentialMalformed   Reason = "credential-malformed"     // not a COSE_Sign1 CWT of the Vouch profile
	ReasonCredentialKeyUnknown  Reason = "credential-key-unknown"   // kid names no key of the verifier's key set
	ReasonCredentialAlg         Reason = "credential-alg"           // algorithm is not allowed, or does not fit the key's curve
	ReasonCredentialSignature   Reason = "credential-signature"     // signature does not verify
	ReasonCredentialExpired     Reason = "credential-expired"       // exp has passed (beyond the allowed skew)
	ReasonCredentialNotYetValid Reason = "credential-not-yet-valid" // nbf is in the future (beyond the allowed skew)
	ReasonCredentialAudience    Reason = "credential-audience"      // aud is not this relying party
	ReasonCredentialProfile     Reason = "credential-profile"       // eat_profile is not the Vouch profile
	ReasonCredentialRevoked     Reason = "credential-revoked"       // the credential was revoked
	ReasonCredentialReused      Reason = "credential-reused"        // a single-use credential was presented again
	ReasonScopeInsufficient     Reason = "scope-insufficient"       // valid credential, but its scope does not cover this request
	ReasonKeySetInvalid         Reason = "key-set-invalid"          // the verifier's COSE_KeySet cannot be decoded or holds an unacceptable key
)

// Proof of possession (relying party).
const (
	ReasonPoPMissing    Reason = "pop-missing"    // no proof of possession header
	ReasonPoPMalformed  Reason = "pop-malformed"  // the proof is not a COSE_Sign1 over PoP claims
	ReasonPoPSignature  Reason = "pop-signature"  // not signed by the credential's cnf key
	ReasonPoPReplayed   Reason = "pop-replayed"   // this proof id was already used
	ReasonPoPStale      Reason = "pop-stale"      // the proof's time is outside the accepted window
	ReasonPoPTarget     Reason = "pop-target"     // the proof is for another method or URI
	ReasonPoPBody       Reason = "pop-body"       // the body digest does not match the request body
	ReasonPoPCredential Reason = "pop-credential" // the proof is bound to another credential
	ReasonPoPCacheFull  Reason = "pop-cache-full" // replay cache is full; refusing rather than forgetting
)

// Authorization: delegations, intents, policy and environment. Given by the
// verifier at issuance, by POST /v1/authorize and POST /v1/elevate, and by
// the admin API.
const (
	ReasonDelegationMissing    Reason = "delegation-missing"     // no delegation named, so nothing can be granted
	ReasonDelegationUnknown    Reason = "delegation-unknown"     // no delegation has this id
	ReasonDelegationExpired    Reason = "delegation-expired"     // the delegation's validity ended, or has not begun
	ReasonDelegationSuspended  Reason = "delegation-suspended"   // the delegating user suspended the delegation
	ReasonDelegationRevoked    Reason = "delegation-revoked"     // the delegation was revoked
	ReasonDelegationAgent      Reason = "delegation-agent"       // the delegation is not for this agent (image digest / agent id)
	ReasonIntentUnknown        Reason = "intent-unknown"         // intent not in the catalogue, or not the delegation's intent
	ReasonIntentAction         Reason = "intent-action"          // the action is not one the intent may need
	ReasonResourceNotDelegated Reason = "resource-not-delegated" // the resource is outside the delegation's resources
	ReasonScopeEmpty           Reason = "scope-empty"            // delegation ∩ intent ∩ policy grants nothing on the requested resources
	ReasonPolicyDenied         Reason = "policy-denied"          // the Cedar policy set forbids the request, or no policy permits it
	ReasonNetworkDenied        Reason = "network-denied"         // the source address is outside the allowed networks
	ReasonTimeWindow           Reason = "time-window"            // the request is outside the allowed time window
	ReasonElevationDenied      Reason = "elevation-denied"       // just-in-time elevation is not possible for this action or credential
	ReasonUserUnauthenticated  Reason = "user-unauthenticated"   // admin API request without a valid user signature or client certificate
	ReasonUserForbidden        Reason = "user-forbidden"         // the authenticated user may not do this
)

// Error is a refusal with a stable Reason and a message for the operator.
// It wraps the underlying cause, if any.
type Error struct {
	Reason Reason
	// Detail says what failed and what to fix. It is complete on its own:
	// Error() does not append Err, so Detail should mention the cause where
	// it helps ([Errorf] with %w does that).
	Detail string
	Err    error // underlying cause, may be nil; for errors.Is/As
}

func (e *Error) Error() string { return string(e.Reason) + ": " + e.Detail }

func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same Reason, so that
// errors.Is(err, &attest.Error{Reason: attest.ReasonNonceReplayed}) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Reason == e.Reason
}

// Errorf returns an *Error with the given reason and a formatted detail. A %w
// verb in format makes the wrapped error the cause.
func Errorf(r Reason, format string, args ...any) *Error {
	wrapped := fmt.Errorf(format, args...)
	return &Error{Reason: r, Detail: wrapped.Error(), Err: errors.Unwrap(wrapped)}
}

// ReasonOf returns the Reason of the first *Error in err's chain, or
// ReasonInternal when there is none.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonInternal
}
