// Package attest holds the wire formats every Vouch party shares — evidence,
// credentials, proofs of possession, stable failure reasons — and the
// relying-party side: verifying a credential and the per-request proof of
// possession that goes with it, offline, with only the verifier's public keys.
//
// All CBOR is written with the core deterministic encoding of RFC 8949 §4.2
// ([Marshal]) and read with a strict, bounded decoder ([Unmarshal]):
// duplicate keys, indefinite lengths and trailing bytes are refused, and so
// are unknown fields except in the credential claims set, which may grow.
//
// # Evidence
//
// An agent sends one CBOR map (media type application/vnd.vouch.evidence+cbor):
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
// A credential (media type application/cwt) is made by [SignCredential]:
//
//	credential = #6.18([            ; COSE_Sign1_Tagged, RFC 9052
//	  protected: bstr .cbor {
//	    1 => -7,                    ; alg: ES256 (the allow-list is CredentialOptions.Algorithms)
//	    4 => bstr,                  ; kid: a key of the verifier's COSE_KeySet
//	  },
//	  unprotected: {},
//	  payload: bstr .cbor claims,
//	  signature: bstr .size 64,     ; r ‖ s
//	])
//
//	claims = {
//	  1 => tstr,                    ; iss: verifier id
//	  2 => tstr,                    ; sub: "urn:ietf:params:oauth:ckt:sha-256:" + base64url(RFC 9679 thumbprint of the cnf key)
//	  3 => tstr,                    ; aud: relying party
//	  4 => int, 5 => int, 6 => int, ; exp, nbf, iat (seconds since the epoch)
//	  7 => bstr .size 16,           ; cti: credential id, key of its audit entry
//	  8 => { 1 => COSE_Key },       ; cnf: proof-of-possession key (RFC 8747), EC2 P-256, public only
//	  ? 9 => [* tstr],              ; scope: granted "action:resource" entries
//	  10 => bstr,                   ; eat_nonce: the challenge nonce
//	  265 => tstr,                  ; eat_profile: Profile
//	  266 => { * tstr => appraisal },; submods: "tpm", "workload", "tee"
//	  1004 => verifier-id,
//	  ? -65537 => tstr,             ; delegation id
//	  ? -65538 => tstr,             ; intent
//	  ? -65539 => uint,             ; audit log index of the issuance record
//	  ? -65540 => bool,             ; single use (just-in-time elevation)
//	  * int => any,                 ; claims a relying party does not know are ignored
//	}
//
//	appraisal = {                   ; EAR (draft-fv-rats-ear)
//	  1000 => status,               ; 0 none, 2 affirming, 32 warning, 96 contraindicated
//	  ? 1001 => trust-vector,
//	  ? 1003 => tstr,               ; appraisal policy id (reference set content hash)
//	  ? 1005 => attester-claims,
//	  ? -65541 => [* claim-reason],
//	}
//	trust-vector = {                ; AR4SI, each value -128..127, absent = no claim
//	  ? 0 => int, ; instance-identity    ? 1 => int, ; configuration
//	  ? 2 => int, ; executables          ? 3 => int, ; file-system
//	  ? 4 => int, ; hardware             ? 5 => int, ; runtime-opaque
//	  ? 6 => int, ; storage-opaque       ? 7 => int, ; sourced-data
//	}
//	attester-claims = {
//	  ? 1 => digest,                ; workload image digest
//	  ? 2 => tstr,                  ; workload image reference
//	  ? 3 => digest,                ; SHA-256 of the AK's SubjectPublicKeyInfo
//	  ? 4 => tstr,                  ; reference profile that matched
//	  ? 5 => bool,                  ; secure boot enabled
//	  ? 6 => tstr,                  ; PCR bank the quote was verified on
//	}
//	claim-reason = { 1 => tstr, ? 2 => tstr, ? 3 => tstr }  ; reason, trust vector claim, detail
//	digest = [ alg: int, value: bstr ]                      ; COSE hash alg, e.g. -16 SHA-256
//	verifier-id = { 0 => tstr, 1 => tstr }                  ; developer, build
//
// The verifier publishes its keys at GET /v1/keys as a COSE_KeySet (media
// type application/cose-key-set), read by [DecodeKeySet]:
//
//	key-set = [+ { 1 => 2, ? 3 => -7, 2 => bstr, -1 => 1, -2 => bstr .size 32, -3 => bstr .size 32 }]
//	          ; kty EC2, alg ES256, kid, crv P-256, x, y; no d
//
// # Proof of possession
//
// Every request to a relying party carries a fresh proof made with the key in
// the credential's cnf claim ([NewPoPClaims], [SignPoP]), unpadded base64url
// in the Vouch-PoP header, next to "Authorization: Vouch <base64url credential>":
//
//	pop = #6.18([
//	  protected: bstr .cbor { 1 => -7, 3 => "application/vnd.vouch.pop+cbor" },
//	  unprotected: {},
//	  payload: bstr .cbor pop-claims,
//	  signature: bstr .size 64,
//	])
//
//	pop-claims = {                  ; no other keys
//	  1 => tstr,                    ; HTTP method, upper case
//	  2 => tstr,                    ; target URI: TargetURI, scheme://host[:port]/path[?query]
//	  3 => int,                     ; iat, seconds since the epoch
//	  4 => bstr .size 16,           ; id: random, never reused
//	  5 => bstr .size 32,           ; SHA-256 of the request body (of "" when there is none)
//	  6 => bstr .size 32,           ; SHA-256 of the credential bytes sent with it
//	}
//
// # Relying-party flow
//
//  1. Get the verifier's keys: [NewRemoteKeys] (cached, refreshed every few
//     minutes and, rate-limited, on an unknown kid) or [StaticKeys].
//  2. [VerifyCredential] with the relying party's audience: structure, alg,
//     kid, key curve, signature, profile, audience, time with skew, cti,
//     cnf and sub.
//  3. [PoPVerifier.Verify] with the cnf key: signature, method, target URI
//     (this service's external origin + the request URI), iat window, body
//     and credential digests, and the replay cache, which is bounded and
//     fails closed when full.
//  4. Revocation and scope, for which [MiddlewareOptions] has hooks.
//
// [NewMiddleware] does all four for a net/http server and puts the [Claims]
// into the request context ([ClaimsFromContext]):
//
//	keys, _ := attest.NewRemoteKeys(attest.RemoteKeysOptions{URL: "https://vouchd.example/v1/keys"})
//	protect, err := attest.NewMiddleware(attest.MiddlewareOptions{
//		Keys:       keys,
//		Credential: attest.CredentialOptions{Audience: []string{"https://docs.example"}},
//		Origin:     "https://docs.example",
//	})
//	...
//	http.ListenAndServe(addr, protect(mux))
//
// # Authorization
//
// A credential's scope (claim 9) lists "action:resource" entries ([ScopeEntry]):
// an action "service:verb" and a resource in Cedar's entity syntax, whose id
// may end in "*" as a prefix pattern ([ParseResource]):
//
//	documents:read:Document::"customer-A/*"
//
// A relying party authorizes each request in one of two modes, both
// [MiddlewareOptions.Authorize] hooks fed by a [RequestMapper] that names the
// request's action and resource:
//
//   - offline, [ScopeAuthorizer]: the scope must cover them ([ScopeAllows]);
//     nothing else is consulted.
//   - remote, [NewRemoteAuthorizer]: the verifier decides (POST /v1/authorize,
//     JSON [AuthorizeRequest] → [Decision]), re-checking credential, proof,
//     delegation status, intent, environment and Cedar policy every time.
//
// See docs/authorization.md for the trade-offs.
//
// # Failures
//
// Every refusal carries a [Reason]: a stable identifier that appears in
// problem+json responses (RFC 9457), logs, metrics and the audit log. The
// middleware answers 401 (credential or proof), 403 (authorization), 413
// (body too large) or 503 (keys, revocation or replay cache unavailable),
// always with a WWW-Authenticate: Vouch error="<reason>" header.
package attest
