package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"math/big"
	"time"

	"github.com/veraison/go-cose"
)

// Defaults of [PoPOptions].
const (
	DefaultPoPMaxAge     = 30 * time.Second
	DefaultPoPFutureSkew = 5 * time.Second
)

// PoPOptions configure a [PoPVerifier].
type PoPOptions struct {
	// MaxAge is how old a proof's iat may be. Default DefaultPoPMaxAge.
	MaxAge time.Duration
	// FutureSkew is how far in the future a proof's iat may be (client clock
	// ahead). Zero means DefaultPoPFutureSkew; negative means none.
	FutureSkew time.Duration
	// CacheSize is the replay cache capacity in proof ids. Default
	// DefaultPoPCacheSize. When it is full of ids still inside their window,
	// proofs are refused with ReasonPoPCacheFull (fail closed).
	CacheSize int
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

// PoPVerifier checks proofs of possession and remembers their ids for as long
// as they could be accepted (MaxAge + FutureSkew), so that each proof is
// accepted at most once by this process. It is safe for concurrent use.
//
// The replay cache is in memory and per process: relying-party replicas
// behind a load balancer each keep their own, so a proof captured in transit
// could be replayed once against each replica within its window. The
// proof is bound to method, target URI, body and credential, which limits
// what such a replay can do; deployments that need more should route a
// client to one replica.
type PoPVerifier struct {
	maxAge, futureSkew time.Duration
	now                func() time.Time
	cache              *replayCache
}

// NewPoPVerifier returns a verifier with the given options.
func NewPoPVerifier(opts PoPOptions) *PoPVerifier {
	v := &PoPVerifier{maxAge: opts.MaxAge, futureSkew: opts.FutureSkew, now: opts.Now}
	if v.maxAge <= 0 {
		v.maxAge = DefaultPoPMaxAge
	}
	if v.futureSkew == 0 {
		v.futureSkew = DefaultPoPFutureSkew
	} else if v.futureSkew < 0 {
		v.futureSkew = 0
	}
	if v.now == nil {
		v.now = time.Now
	}
	v.cache = newReplayCache(opts.CacheSize)
	return v
}

// Verify checks that pop is a proof of possession of cnf for this request:
// a tagged COSE_Sign1, ES256, content type PoPContentType, signed by cnf,
// whose strictly decoded [PoPClaims] name this method and target URI (see
// [TargetURI]), an iat within [now-MaxAge, now+FutureSkew], the SHA-256 of
// body and of the credential bytes presented with it, and an id never
// accepted before within the window. The id is recorded only when every
// other check has passed. Failures are *Error with a ReasonPoP* reason.
func (v *PoPVerifier) Verify(pop []byte, cnf *ecdsa.PublicKey, method, target string, body, credential []byte) (*PoPClaims, error) {
	bd := sha256.Sum256(body)
	return v.VerifyDigest(pop, cnf, method, target, bd[:], credential)
}

// VerifyDigest is [PoPVerifier.Verify] for a party that holds the SHA-256
// of the request body rather than the body: the verifier deciding for a
// relying party (POST /v1/authorize) is one.
func (v *PoPVerifier) VerifyDigest(pop []byte, cnf *ecdsa.PublicKey, method, target string, bodyDigest, credential []byte) (*PoPClaims, error) {
	if len(pop) == 0 {
		return nil, Errorf(ReasonPoPMissing, "no proof of possession was presented; send a fresh one in the %s header with every request", PoPHeader)
	}
	if len(pop) > MaxPoPSize {
		return nil, Errorf(ReasonPoPMalformed, "proof of possession is %d bytes; at most %d are accepted", len(pop), MaxPoPSize)
	}
	if cnf == nil || cnf.Curve != elliptic.P256() {
		return nil, Errorf(ReasonInternal, "proof of possession checked without a P-256 confirmation key")
	}
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(pop); err != nil {
		return nil, Errorf(ReasonPoPMalformed, "proof of possession is not a tagged COSE_Sign1 (CBOR tag 18): %w", err)
	}
	if msg.Payload == nil {
		return nil, Errorf(ReasonPoPMalformed, "proof of possession has a detached payload")
	}
	if _, crit := msg.Headers.Protected[cose.HeaderLabelCritical]; crit {
		return nil, Errorf(ReasonPoPMalformed, "proof of possession protected header has crit parameters; none are understood")
	}
	if alg, err := msg.Headers.Protected.Algorithm(); err != nil || alg != cose.AlgorithmES256 {
		return nil, Errorf(ReasonPoPMalformed, "proof of possession protected alg must be ES256 (-7)")
	}
	if ct, _ := msg.Headers.Protected[cose.HeaderLabelContentType].(string); ct != PoPContentType {
		return nil, Errorf(ReasonPoPMalformed, "proof of possession protected content type must be %q", PoPContentType)
	}
	if err := msg.Verify(nil, es256Verifier{cnf}); err != nil {
		return nil, Errorf(ReasonPoPSignature, "proof of possession is not signed by the credential's cnf key: sign it with the key the credential was issued to")
	}

	var pc PoPClaims
	if err := Unmarshal(msg.Payload, &pc); err != nil {
		return nil, Errorf(ReasonPoPMalformed, "proof of possession payload is not a PoP claims map: %w", err)
	}
	if pc.Method == "" || pc.Target == "" {
		return nil, Errorf(ReasonPoPMalformed, "proof of possession lacks method or target")
	}
	if len(pc.ID) != PoPIDSize {
		return nil, Errorf(ReasonPoPMalformed, "proof of possession id is %d bytes; it must be %d random bytes", len(pc.ID), PoPIDSize)
	}
	if len(pc.BodyDigest) != sha256.Size || len(pc.CredentialDigest) != sha256.Size {
		return nil, Errorf(ReasonPoPMalformed, "proof of possession digests must be SHA-256 (32 bytes)")
	}
	if pc.Method != method {
		return nil, Errorf(ReasonPoPTarget, "proof of possession is for method %q; the request is %q", pc.Method, method)
	}
	if pc.Target != target {
		return nil, Errorf(ReasonPoPTarget, "proof of possession is for %q; this request is %q (sign the URI the request is sent to: scheme://host[:port]/path?query)", pc.Target, target)
	}
	now := v.now()
	iat := time.Unix(pc.IssuedAt, 0)
	if now.Sub(iat) > v.maxAge {
		return nil, Errorf(ReasonPoPStale, "proof of possession was made at %s, more than %v ago (now %s): make a fresh proof for every request, and check the client clock", iat.UTC().Format(time.RFC3339), v.maxAge, now.UTC().Format(time.RFC3339))
	}
	if iat.Sub(now) > v.futureSkew {
		return nil, Errorf(ReasonPoPStale, "proof of possession is dated %s, more than %v in the future (now %s): check the client clock", iat.UTC().Format(time.RFC3339), v.futureSkew, now.UTC().Format(time.RFC3339))
	}
	if !bytes.Equal(pc.BodyDigest, bodyDigest) {
		return nil, Errorf(ReasonPoPBody, "proof of possession body digest does not match the request body")
	}
	cd := sha256.Sum256(credential)
	if !bytes.Equal(pc.CredentialDigest, cd[:]) {
		return nil, Errorf(ReasonPoPCredential, "proof of possession is bound to another credential: sign the digest of the credential sent with this request")
	}
	var id [PoPIDSize]byte
	copy(id[:], pc.ID)
	// Retain ids for the whole window in which a proof made now could still
	// be accepted, plus the second iat truncates.
	switch v.cache.add(id, now, v.maxAge+v.futureSkew+time.Second) {
	case ReasonPoPReplayed:
		return nil, Errorf(ReasonPoPReplayed, "proof of possession id %x was already used: make a fresh proof for every request", pc.ID)
	case ReasonPoPCacheFull:
		return nil, Errorf(ReasonPoPCacheFull, "the relying party's replay cache is full; retry shortly")
	}
	return &pc, nil
}

// es256Verifier is a cose.Verifier for an ECDSA P-256 key that was already
// validated (on the curve) when it was parsed, so that each verification
// costs one ECDSA verify and no key re-validation.
type es256Verifier struct{ key *ecdsa.PublicKey }

func (es256Verifier) Algorithm() cose.Algorithm { return cose.AlgorithmES256 }

func (v es256Verifier) Verify(content, sig []byte) error {
	d := sha256.Sum256(content)
	return v.VerifyDigest(d[:], sig)
}

func (v es256Verifier) VerifyDigest(digest, sig []byte) error {
	if len(sig) != 64 {
		return cose.ErrVerification
	}
	if !ecdsa.Verify(v.key, digest, new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return cose.ErrVerification
	}
	return nil
}
