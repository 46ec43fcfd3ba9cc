// Package attest holds the wire formats every Vouch party shares — evidence,
// credentials, proofs of possession, stable failure reasons — and the
// relying-party side: verifying a credential and the per-request proof of
// possession that goes with it, offline, with only the verifier's public keys.
//
// # Evidence
//
// An agent sends one CBOR map (media type application/vnd.vouch.evidence+cbor),
// encoded with the core deterministic encoding of RFC 8949 §4.2:
//
//	evidence = {
//	  1 => 1,                  ; version
//	  2 => bstr .size 32,      ; nonce from POST /v1/challenge
//	  3 => bstr .cbor request, ; the attestation request (see below)
//	  4 => bstr,               ; go-tpm-tools attest.Attestation protobuf:
//	                           ;   AK public, one quote per PCR bank, TCG firmware
//	                           ;   event log, canonical event log (PCR 13), AK cert
//	  5 => bstr,               ; agent key TPMT_PUBLIC
//	  6 => bstr,               ; TPM2_Certify attestation (TPMS_ATTEST) of the agent key by the AK
//	  7 => bstr,               ; TPM2_Certify signature (TPMT_SIGNATURE)
//	}
//
//	request = {
//	  1 => tstr,               ; audience: the relying party the credential is for
//	  ? 2 => tstr,             ; intent the agent asks to act under
//	  ? 3 => [* tstr],         ; resources it asks for, typed ids ("Document::\"customer-A/*\"")
//	  ? 4 => tstr,             ; delegation id it acts under
//	}
//
// The quote's extraData and the certification's qualifyingData are both the
// [Binding] of nonce, agent key and request, so one signature by the AK ties
// freshness, the platform state, the agent key and what the agent asked for.
//
// # Credential
//
// A COSE_Sign1 (tag 18) whose protected header carries alg (ES256) and kid, and
// whose payload is the CWT claims set described by [Claims]. Relying parties
// check it with [VerifyCredential] against the verifier's COSE_KeySet
// (GET /v1/keys).
//
// # Proof of possession
//
// Every request to a relying party carries a fresh COSE_Sign1 made with the key
// in the credential's cnf claim over [PoPClaims] (method, target URI, time, a
// fresh id, body digest, credential digest). [PoPVerifier] checks it and keeps a
// replay cache; [Middleware] does both checks for an [net/http] server.
//
// # Failures
//
// Every refusal carries a [Reason]: a stable identifier that appears in
// problem+json responses (RFC 9457), logs, metrics and the audit log.
package attest
