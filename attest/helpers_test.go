package attest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/veraison/go-cose"
)

// testNow is the fixed clock of most tests.
var testNow = time.Unix(1_800_000_000, 0)

const testAudience = "https://docs.example"

func newKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testIssuer is a verifier signing key and the key set publishing it.
type testIssuer struct {
	key  *ecdsa.PrivateKey
	kid  []byte
	keys *KeySet
}

func newIssuer(t testing.TB) *testIssuer {
	t.Helper()
	k := newKey(t, elliptic.P256())
	ck, err := PublicCOSEKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	ks, err := NewKeySet(ck)
	if err != nil {
		t.Fatal(err)
	}
	return &testIssuer{key: k, kid: ck.ID, keys: ks}
}

// testAgent is an agent's proof-of-possession key.
type testAgent struct {
	key *ecdsa.PrivateKey
	cnf *cose.Key
	sub string
}

func newAgent(t testing.TB) *testAgent {
	t.Helper()
	k := newKey(t, elliptic.P256())
	ck, err := PublicCOSEKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	ck.ID = nil
	sub, err := SubjectOf(ck)
	if err != nil {
		t.Fatal(err)
	}
	return &testAgent{key: k, cnf: ck, sub: sub}
}

// claimsFor returns valid claims for agent, issued at now for 60 s.
func claimsFor(a *testAgent, now time.Time) *Claims {
	idx := uint64(42)
	return &Claims{
		Issuer:    "https://vouchd.example",
		Subject:   a.sub,
		Audience:  testAudience,
		Expiry:    now.Unix() + 60,
		NotBefore: now.Unix(),
		IssuedAt:  now.Unix(),
		ID:        []byte("0123456789abcdef"),
		Confirm:   Confirmation{Key: a.cnf},
		Scope:     []string{"read:Document::\"customer-A/1\""},
		Nonce:     make([]byte, NonceSize),
		Profile:   Profile,
		Submods: map[string]Appraisal{
			SubmodTPM: {Status: StatusAffirming, TrustVector: TrustVector{InstanceIdentity: IdentityTrusted, Hardware: HardwareGenuine}},
		},
		VerifierID: VerifierID{Developer: "vouch", Build: "test"},
		Intent:     "summarise",
		LogIndex:   &idx,
	}
}

func (is *testIssuer) sign(t testing.TB, c *Claims) []byte {
	t.Helper()
	raw, err := SignCredential(is.key, is.kid, c)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// signRaw signs any payload with any headers, bypassing SignCredential's
// checks, to build hostile inputs.
func signRaw(t testing.TB, key crypto.Signer, alg cose.Algorithm, protected cose.ProtectedHeader, unprotected cose.UnprotectedHeader, payload []byte) []byte {
	t.Helper()
	s, err := cose.NewSigner(alg, key)
	if err != nil {
		t.Fatal(err)
	}
	if protected == nil {
		protected = cose.ProtectedHeader{}
	}
	protected[cose.HeaderLabelAlgorithm] = alg
	msg, err := cose.Sign1(rand.Reader, s, cose.Headers{Protected: protected, Unprotected: unprotected}, payload, nil)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// makePoP signs a proof for one request at the given time.
func makePoP(t testing.TB, key crypto.Signer, method, target string, body, cred []byte, at time.Time) []byte {
	t.Helper()
	pc, err := NewPoPClaims(method, target, body, cred, at)
	if err != nil {
		t.Fatal(err)
	}
	p, err := SignPoP(key, pc)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// wantReason fails unless err is an *Error with reason want.
func wantReason(t testing.TB, err error, want Reason) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("accepted; want refusal %s", want)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *attest.Error", err, err)
	}
	if e.Reason != want {
		t.Fatalf("reason %s (%s); want %s", e.Reason, e.Detail, want)
	}
	if e.Detail == "" {
		t.Fatalf("reason %s has no detail", e.Reason)
	}
}
