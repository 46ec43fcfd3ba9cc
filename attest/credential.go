package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/veraison/go-cose"
)

// CredentialIDSize is the size of a credential's cti claim.
const CredentialIDSize = 16

// Defaults of [CredentialOptions].
const (
	DefaultCredentialSkew        = 5 * time.Second
	DefaultCredentialMaxLifetime = time.Hour
)

// SignCredential signs c as a Vouch credential: a tagged COSE_Sign1 (tag 18)
// with protected header {1: -7 (ES256), 4: kid} and the deterministic CBOR
// of c as payload. key must be an ECDSA P-256 key; kid names its public key
// in the verifier's COSE_KeySet.
//
// It refuses claims that no relying party would accept whatever the time:
// a profile other than [Profile], an empty audience, a cti that is not 16
// bytes, a cnf that is not a P-256 public key, a sub other than
// [SubjectOf] the cnf key, or exp not after iat.
func SignCredential(key crypto.Signer, kid []byte, c *Claims) ([]byte, error) {
	if key == nil {
		return nil, fmt.Errorf("signing credential: no key")
	}
	if pub, ok := key.Public().(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("signing credential: only ECDSA P-256 keys are supported, got %T", key.Public())
	}
	if len(kid) == 0 {
		return nil, fmt.Errorf("signing credential: no kid")
	}
	if c == nil {
		return nil, fmt.Errorf("signing credential: no claims")
	}
	if _, err := checkClaimsShape(c); err != nil {
		return nil, fmt.Errorf("signing credential: %w", err)
	}
	if c.Expiry <= c.IssuedAt {
		return nil, fmt.Errorf("signing credential: exp %d is not after iat %d", c.Expiry, c.IssuedAt)
	}
	payload, err := Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("signing credential: encoding claims: %w", err)
	}
	signer, err := cose.NewSigner(cose.AlgorithmES256, key)
	if err != nil {
		return nil, fmt.Errorf("signing credential: %w", err)
	}
	headers := cose.Headers{Protected: cose.ProtectedHeader{
		cose.HeaderLabelAlgorithm: cose.AlgorithmES256,
		cose.HeaderLabelKeyID:     bytes.Clone(kid),
	}}
	msg, err := cose.Sign1(rand.Reader, signer, headers, payload, nil)
	if err != nil {
		return nil, fmt.Errorf("signing credential: %w", err)
	}
	if len(msg) > MaxCredentialSize {
		return nil, fmt.Errorf("signing credential: it is %d bytes; relying parties accept at most %d", len(msg), MaxCredentialSize)
	}
	return msg, nil
}

// CredentialOptions are what a relying party accepts in a credential.
type CredentialOptions struct {
	// Audience lists the aud values this relying party answers to. Required:
	// a credential for another relying party must never be accepted here.
	Audience []string
	// Issuer, when set, is the only accepted iss.
	Issuer string
	// Algorithms allowed in the protected header. Default: ES256 only.
	// ES384 and ES512 may be listed; each is verified only with a key on its
	// own curve.
	Algorithms []cose.Algorithm
	// Skew is the clock difference tolerated on exp, nbf and iat. Zero means
	// DefaultCredentialSkew; a negative value means none.
	Skew time.Duration
	// MaxLifetime refuses credentials whose exp - iat is longer, so that a
	// misconfigured issuer cannot hand out long-lived bearer credentials.
	// Zero means DefaultCredentialMaxLifetime; negative means no limit.
	MaxLifetime time.Duration
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

var defaultAlgorithms = []cose.Algorithm{cose.AlgorithmES256}

// curveOf returns the only curve a credential algorithm may be verified with.
func curveOf(alg cose.Algorithm) elliptic.Curve {
	switch alg {
	case cose.AlgorithmES256:
		return elliptic.P256()
	case cose.AlgorithmES384:
		return elliptic.P384()
	case cose.AlgorithmES512:
		return elliptic.P521()
	}
	return nil
}

// VerifyCredential checks a credential as a relying party and returns its
// claims. In order: size, COSE_Sign1 structure (tag 18), protected alg in
// the allow-list, protected kid in keys, key curve fits alg, signature,
// claims decoding (unknown claims are ignored), eat_profile, iss (if
// configured), aud, exp/nbf/iat against the clock with skew, cti, cnf and
// sub. Every failure is an *Error whose Reason is one of the
// ReasonCredential* values (ReasonInternal for bad options).
func VerifyCredential(raw []byte, keys *KeySet, opts CredentialOptions) (*Claims, error) {
	c, _, err := verifyCredential(raw, keys, &opts)
	return c, err
}

// verifyCredential is VerifyCredential that also returns the parsed cnf key.
func verifyCredential(raw []byte, keys *KeySet, opts *CredentialOptions) (*Claims, *ecdsa.PublicKey, error) {
	if len(opts.Audience) == 0 {
		return nil, nil, Errorf(ReasonInternal, "relying party misconfigured: CredentialOptions.Audience is empty")
	}
	if len(raw) == 0 {
		return nil, nil, Errorf(ReasonCredentialMissing, "no credential was presented")
	}
	if len(raw) > MaxCredentialSize {
		return nil, nil, Errorf(ReasonCredentialMalformed, "credential is %d bytes; at most %d are accepted", len(raw), MaxCredentialSize)
	}
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(raw); err != nil {
		return nil, nil, Errorf(ReasonCredentialMalformed, "credential is not a tagged COSE_Sign1 (CBOR tag 18): %w", err)
	}
	if msg.Payload == nil {
		return nil, nil, Errorf(ReasonCredentialMalformed, "credential has a detached payload; the CWT claims must be embedded")
	}
	if _, crit := msg.Headers.Protected[cose.HeaderLabelCritical]; crit {
		return nil, nil, Errorf(ReasonCredentialMalformed, "credential protected header has crit parameters; this relying party understands none")
	}

	alg, err := msg.Headers.Protected.Algorithm()
	if err != nil {
		return nil, nil, Errorf(ReasonCredentialAlg, "credential protected header has no usable alg: %w", err)
	}
	algs := opts.Algorithms
	if len(algs) == 0 {
		algs = defaultAlgorithms
	}
	allowed := false
	for _, a := range algs {
		if a == alg {
			allowed = true
			break
		}
	}
	if !allowed {
		return nil, nil, Errorf(ReasonCredentialAlg, "credential algorithm %v is not allowed here (allowed: %v)", alg, algs)
	}
	curve := curveOf(alg)
	if curve == nil {
		return nil, nil, Errorf(ReasonInternal, "relying party misconfigured: algorithm %v in CredentialOptions.Algorithms cannot be verified by this package", alg)
	}

	kid, ok := msg.Headers.Protected[cose.HeaderLabelKeyID].([]byte)
	if !ok || len(kid) == 0 {
		if _, inUnprotected := msg.Headers.Unprotected[cose.HeaderLabelKeyID]; inUnprotected {
			return nil, nil, Errorf(ReasonCredentialMalformed, "credential kid is in the unprotected header; it must be in the protected header")
		}
		return nil, nil, Errorf(ReasonCredentialMalformed, "credential protected header has no kid (a byte string naming the verifier key)")
	}
	pub, ok := keys.Lookup(kid)
	if !ok {
		return nil, nil, Errorf(ReasonCredentialKeyUnknown, "credential kid %x is not in the verifier's key set (%d keys); refresh the key set from the verifier's /v1/keys, or check that the credential comes from the verifier this relying party trusts", kid, keys.Len())
	}
	if pub.Curve != curve {
		return nil, nil, Errorf(ReasonCredentialAlg, "credential algorithm %v does not fit key %x on curve %s", alg, kid, pub.Curve.Params().Name)
	}
	var verifier cose.Verifier = es256Verifier{pub} // keys in a KeySet were validated when it was built
	if alg != cose.AlgorithmES256 {
		if verifier, err = cose.NewVerifier(alg, pub); err != nil {
			return nil, nil, Errorf(ReasonCredentialAlg, "key %x cannot verify %v: %w", kid, alg, err)
		}
	}
	if err := msg.Verify(nil, verifier); err != nil {
		return nil, nil, Errorf(ReasonCredentialSignature, "credential signature does not verify with verifier key %x: the credential was altered or not issued by this verifier", kid)
	}

	var c Claims
	if err := lenientDecMode.Unmarshal(msg.Payload, &c); err != nil {
		return nil, nil, Errorf(ReasonCredentialMalformed, "credential payload is not a Vouch CWT claims set: %w", err)
	}
	if err := checkClaims(&c, opts); err != nil {
		return nil, nil, err
	}
	cnf, err := checkClaimsShape(&c)
	if err != nil {
		return nil, nil, err
	}
	return &c, cnf, nil
}

// checkClaims checks the relying-party dependent claims: profile, issuer,
// audience and time.
func checkClaims(c *Claims, opts *CredentialOptions) error {
	if c.Profile != Profile {
		return Errorf(ReasonCredentialProfile, "credential eat_profile is %q; this relying party accepts %q", c.Profile, Profile)
	}
	if opts.Issuer != "" && c.Issuer != opts.Issuer {
		return Errorf(ReasonCredentialMalformed, "credential issuer is %q; this relying party accepts only %q", c.Issuer, opts.Issuer)
	}
	audOK := false
	for _, a := range opts.Audience {
		if c.Audience == a {
			audOK = true
			break
		}
	}
	if !audOK {
		return Errorf(ReasonCredentialAudience, "credential audience is %q; this relying party is %q: ask the verifier for a credential with this audience", c.Audience, opts.Audience)
	}

	now := time.Now()
	if opts.Now != nil {
		now = opts.Now()
	}
	skew := credentialSkew(opts)
	maxLife := opts.MaxLifetime
	if maxLife == 0 {
		maxLife = DefaultCredentialMaxLifetime
	}
	if c.Expiry == 0 || c.IssuedAt == 0 {
		return Errorf(ReasonCredentialMalformed, "credential lacks exp or iat")
	}
	if c.IssuedAt > c.Expiry || c.NotBefore > c.Expiry {
		return Errorf(ReasonCredentialMalformed, "credential times are inconsistent: iat %d, nbf %d, exp %d", c.IssuedAt, c.NotBefore, c.Expiry)
	}
	if maxLife > 0 && c.Expiry-c.IssuedAt > int64(maxLife/time.Second) {
		return Errorf(ReasonCredentialMalformed, "credential lifetime is %d s; this relying party accepts at most %v", c.Expiry-c.IssuedAt, maxLife)
	}
	if !now.Before(c.ExpiresAt().Add(skew)) {
		return Errorf(ReasonCredentialExpired, "credential expired at %s (now %s, skew %v): obtain a fresh one from the verifier", c.ExpiresAt().UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), skew)
	}
	if now.Before(c.NotBeforeTime().Add(-skew)) {
		return Errorf(ReasonCredentialNotYetValid, "credential is not valid before %s (now %s, skew %v): check the clocks of verifier and relying party", c.NotBeforeTime().UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), skew)
	}
	if now.Before(c.IssuedAtTime().Add(-skew)) {
		return Errorf(ReasonCredentialNotYetValid, "credential was issued at %s, in the future (now %s, skew %v): check the clocks of verifier and relying party", c.IssuedAtTime().UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), skew)
	}
	return nil
}

// credentialSkew returns the effective clock skew of opts.
func credentialSkew(opts *CredentialOptions) time.Duration {
	switch {
	case opts.Skew == 0:
		return DefaultCredentialSkew
	case opts.Skew < 0:
		return 0
	}
	return opts.Skew
}

// checkClaimsShape checks what a credential must hold whatever the relying
// party and the time: profile, audience present, cti size, cnf key and sub.
// It returns the cnf key.
func checkClaimsShape(c *Claims) (*ecdsa.PublicKey, error) {
	if c.Profile != Profile {
		return nil, Errorf(ReasonCredentialProfile, "credential eat_profile is %q; expected %q", c.Profile, Profile)
	}
	if c.Audience == "" {
		return nil, Errorf(ReasonCredentialAudience, "credential has no audience")
	}
	if len(c.ID) != CredentialIDSize {
		return nil, Errorf(ReasonCredentialMalformed, "credential cti is %d bytes; it must be %d", len(c.ID), CredentialIDSize)
	}
	k := c.Confirm.Key
	if k == nil {
		return nil, Errorf(ReasonCredentialMalformed, "credential has no cnf key (claim 8, {1: COSE_Key})")
	}
	if hasPrivate(k) {
		return nil, Errorf(ReasonCredentialMalformed, "credential cnf key carries private key material")
	}
	pub, err := ECDSAPublic(k)
	if err != nil {
		return nil, Errorf(ReasonCredentialMalformed, "credential cnf key is not a P-256 public key: %w", err)
	}
	sub, err := SubjectOf(k)
	if err != nil {
		return nil, Errorf(ReasonCredentialMalformed, "credential cnf key: %w", err)
	}
	if c.Subject != sub {
		return nil, Errorf(ReasonCredentialMalformed, "credential sub %q is not the thumbprint URI of its cnf key (%q)", c.Subject, sub)
	}
	return pub, nil
}
