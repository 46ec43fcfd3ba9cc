package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

func TestVerifyCredentialValid(t *testing.T) {
	is, ag := newIssuer(t), newAgent(t)
	want := claimsFor(ag, testNow)
	raw := is.sign(t, want)
	if raw[0] != 0xd2 {
		t.Fatalf("credential does not start with tag 18: %x", raw[:2])
	}
	got, err := VerifyCredential(raw, is.keys, CredentialOptions{Audience: []string{testAudience}, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	if got.Subject != ag.sub || got.Audience != testAudience || !bytes.Equal(got.ID, want.ID) || got.Intent != "summarise" ||
		got.Submods[SubmodTPM].Status != StatusAffirming || got.LogIndex == nil || *got.LogIndex != 42 {
		t.Fatalf("claims differ: %+v", got)
	}
	// The protected header is {alg: ES256, kid}.
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(raw); err != nil {
		t.Fatal(err)
	}
	if alg, _ := msg.Headers.Protected.Algorithm(); alg != cose.AlgorithmES256 {
		t.Fatalf("alg %v", alg)
	}
	if kid, _ := msg.Headers.Protected[cose.HeaderLabelKeyID].([]byte); !bytes.Equal(kid, is.kid) {
		t.Fatalf("kid %x, want %x", kid, is.kid)
	}
	if !bytes.Equal(msg.Payload, mustMarshal(t, want)) {
		t.Fatal("payload is not the deterministic encoding of the claims")
	}
}

func TestSignCredentialRefuses(t *testing.T) {
	is, ag := newIssuer(t), newAgent(t)
	good := claimsFor(ag, testNow)
	if _, err := SignCredential(newKey(t, elliptic.P384()), is.kid, good); err == nil {
		t.Error("P-384 key accepted")
	}
	if _, err := SignCredential(is.key, nil, good); err == nil {
		t.Error("empty kid accepted")
	}
	if _, err := SignCredential(is.key, is.kid, nil); err == nil {
		t.Error("nil claims accepted")
	}
	for name, mutate := range map[string]func(*Claims){
		"profile":  func(c *Claims) { c.Profile = "other" },
		"cti":      func(c *Claims) { c.ID = c.ID[:8] },
		"sub":      func(c *Claims) { c.Subject = "someone" },
		"cnf":      func(c *Claims) { c.Confirm.Key = nil },
		"audience": func(c *Claims) { c.Audience = "" },
		"exp":      func(c *Claims) { c.Expiry = c.IssuedAt },
	} {
		c := claimsFor(ag, testNow)
		mutate(c)
		if _, err := SignCredential(is.key, is.kid, c); err == nil {
			t.Errorf("%s: bad claims accepted", name)
		}
	}
}

func TestVerifyCredentialRefusals(t *testing.T) {
	is, ag := newIssuer(t), newAgent(t)
	other := newIssuer(t)
	now := testNow
	good := is.sign(t, claimsFor(ag, now))
	payload := mustMarshal(t, claimsFor(ag, now))
	es256 := func(extra cose.ProtectedHeader) cose.ProtectedHeader {
		h := cose.ProtectedHeader{cose.HeaderLabelKeyID: is.kid}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	withClaims := func(mutate func(*Claims)) []byte {
		c := claimsFor(ag, now)
		mutate(c)
		b, err := Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return signRaw(t, is.key, cose.AlgorithmES256, es256(nil), nil, b)
	}
	flip := func(b []byte, i int) []byte {
		c := bytes.Clone(b)
		c[i] ^= 0x01
		return c
	}
	kidAt := bytes.Index(good, is.kid)
	issAt := bytes.Index(good, []byte("vouchd.example"))
	algAt := bytes.Index(good, []byte{0x01, 0x26}) + 1 // {1: -7}
	if kidAt < 0 || issAt < 0 || algAt < 1 {
		t.Fatal("test cannot locate header and payload bytes")
	}
	p384 := newKey(t, elliptic.P384())
	// A key set holding a P-384 key: NewKeySet refuses to build one, so the
	// curve check in VerifyCredential is the last line of defence.
	p384Set := &KeySet{keys: map[string]*ecdsa.PublicKey{"p384": &p384.PublicKey}}
	es384set, err := NewKeySet(mustCOSE(t, is.key, []byte("k384")))
	if err != nil {
		t.Fatal(err)
	}
	extraClaim := func() []byte {
		var m map[int]any
		if err := Unmarshal(payload, &m); err != nil {
			t.Fatal(err)
		}
		m[999] = "a claim from the future"
		m[-70000] = []any{1, 2, 3}
		return signRaw(t, is.key, cose.AlgorithmES256, es256(nil), nil, mustMarshal(t, m))
	}

	tests := []struct {
		name string
		raw  []byte
		keys *KeySet
		opts func(*CredentialOptions)
		want Reason
	}{
		{name: "valid", raw: good},
		{name: "second accepted audience", raw: good, opts: func(o *CredentialOptions) { o.Audience = []string{"https://other", testAudience} }},
		{name: "unknown claims tolerated", raw: extraClaim()},
		{name: "header byte changed (kid)", raw: flip(good, kidAt), want: ReasonCredentialKeyUnknown},
		{name: "header byte changed (alg)", raw: flip(good, algAt), want: ReasonCredentialAlg},
		{name: "payload byte changed", raw: flip(good, issAt), want: ReasonCredentialSignature},
		{name: "signature first byte changed", raw: flip(good, len(good)-64), want: ReasonCredentialSignature},
		{name: "signature last byte changed", raw: flip(good, len(good)-1), want: ReasonCredentialSignature},
		{name: "wrong audience", raw: good, opts: func(o *CredentialOptions) { o.Audience = []string{"https://evil.example"} }, want: ReasonCredentialAudience},
		{name: "no audience configured", raw: good, opts: func(o *CredentialOptions) { o.Audience = nil }, want: ReasonInternal},
		{name: "issuer pinned, matches", raw: good, opts: func(o *CredentialOptions) { o.Issuer = "https://vouchd.example" }},
		{name: "issuer pinned, differs", raw: good, opts: func(o *CredentialOptions) { o.Issuer = "https://other-vouchd" }, want: ReasonCredentialMalformed},
		{name: "expired at exp+skew", raw: good, opts: at(now.Add(65 * time.Second)), want: ReasonCredentialExpired},
		{name: "valid just before exp+skew", raw: good, opts: at(now.Add(65*time.Second - time.Nanosecond))},
		{name: "expired, no skew", raw: good, opts: func(o *CredentialOptions) { o.Now = fixed(now.Add(60 * time.Second)); o.Skew = -1 }, want: ReasonCredentialExpired},
		{name: "larger skew accepts", raw: good, opts: func(o *CredentialOptions) { o.Now = fixed(now.Add(80 * time.Second)); o.Skew = 30 * time.Second }},
		{name: "valid at nbf-skew", raw: good, opts: at(now.Add(-5 * time.Second))},
		{name: "not yet valid before nbf-skew", raw: good, opts: at(now.Add(-5*time.Second - time.Nanosecond)), want: ReasonCredentialNotYetValid},
		{name: "nbf later than iat", raw: withClaims(func(c *Claims) { c.NotBefore += 30 }), want: ReasonCredentialNotYetValid},
		{name: "iat in the future", raw: withClaims(func(c *Claims) { c.IssuedAt += 30; c.NotBefore = 0 }), want: ReasonCredentialNotYetValid},
		{name: "iat after exp", raw: withClaims(func(c *Claims) { c.IssuedAt = c.Expiry + 1 }), want: ReasonCredentialMalformed},
		{name: "no exp", raw: withClaims(func(c *Claims) { c.Expiry = 0 }), want: ReasonCredentialMalformed},
		{name: "lifetime over maximum", raw: withClaims(func(c *Claims) { c.Expiry = c.IssuedAt + 7200 }), want: ReasonCredentialMalformed},
		{name: "lifetime limit off", raw: withClaims(func(c *Claims) { c.Expiry = c.IssuedAt + 7200 }), opts: func(o *CredentialOptions) { o.MaxLifetime = -1 }},
		{name: "signed by an unknown key", raw: signRaw(t, other.key, cose.AlgorithmES256, es256(nil), nil, payload), want: ReasonCredentialSignature},
		{name: "kid unknown", raw: other.sign(t, claimsFor(ag, now)), want: ReasonCredentialKeyUnknown},
		{name: "empty key set", raw: good, keys: &KeySet{}, want: ReasonCredentialKeyUnknown},
		{name: "nil key set", raw: good, keys: nil, want: ReasonCredentialKeyUnknown},
		{name: "ES256 header with a P-384 key", raw: signRaw(t, p384, cose.AlgorithmES256, cose.ProtectedHeader{cose.HeaderLabelKeyID: []byte("p384")}, nil, payload), keys: p384Set, want: ReasonCredentialAlg},
		{name: "ES384 allowed but key is P-256", raw: signRaw(t, is.key, cose.AlgorithmES384, cose.ProtectedHeader{cose.HeaderLabelKeyID: []byte("k384")}, nil, payload), keys: es384set,
			opts: func(o *CredentialOptions) { o.Algorithms = []cose.Algorithm{cose.AlgorithmES256, cose.AlgorithmES384} }, want: ReasonCredentialAlg},
		{name: "ES384 not allowed", raw: signRaw(t, p384, cose.AlgorithmES384, cose.ProtectedHeader{cose.HeaderLabelKeyID: []byte("p384")}, nil, payload), keys: p384Set, want: ReasonCredentialAlg},
		{name: "ES384 allowed with a P-384 key", raw: signRaw(t, p384, cose.AlgorithmES384, cose.ProtectedHeader{cose.HeaderLabelKeyID: []byte("p384")}, nil, payload), keys: p384Set,
			opts: func(o *CredentialOptions) { o.Algorithms = []cose.Algorithm{cose.AlgorithmES384} }},
		{name: "alg EdDSA", raw: withAlg(t, good, cose.AlgorithmEdDSA), want: ReasonCredentialAlg},
		{name: "alg unverifiable but allowed", raw: withAlg(t, good, cose.AlgorithmPS256), opts: func(o *CredentialOptions) { o.Algorithms = []cose.Algorithm{cose.AlgorithmPS256} }, want: ReasonInternal},
		{name: "no kid", raw: signRaw(t, is.key, cose.AlgorithmES256, nil, nil, payload), want: ReasonCredentialMalformed},
		{name: "kid unprotected", raw: signRaw(t, is.key, cose.AlgorithmES256, nil, cose.UnprotectedHeader{cose.HeaderLabelKeyID: is.kid}, payload), want: ReasonCredentialMalformed},
		{name: "crit header", raw: signRaw(t, is.key, cose.AlgorithmES256, es256(cose.ProtectedHeader{cose.HeaderLabelCritical: []any{int64(99)}, int64(99): 1}), nil, payload), want: ReasonCredentialMalformed},
		{name: "untagged", raw: good[1:], want: ReasonCredentialMalformed},
		{name: "garbage", raw: []byte("not a credential at all"), want: ReasonCredentialMalformed},
		{name: "truncated", raw: good[:len(good)-1], want: ReasonCredentialMalformed},
		{name: "trailing bytes", raw: append(bytes.Clone(good), 0x00), want: ReasonCredentialMalformed},
		{name: "oversized", raw: make([]byte, MaxCredentialSize+1), want: ReasonCredentialMalformed},
		{name: "empty", raw: nil, want: ReasonCredentialMissing},
		{name: "payload not a map", raw: signRaw(t, is.key, cose.AlgorithmES256, es256(nil), nil, []byte{0x83, 1, 2, 3}), want: ReasonCredentialMalformed},
		{name: "payload with duplicate key", raw: signRaw(t, is.key, cose.AlgorithmES256, es256(nil), nil, []byte{0xa2, 0x01, 0x61, 'a', 0x01, 0x61, 'b'}), want: ReasonCredentialMalformed},
		{name: "wrong profile", raw: withClaims(func(c *Claims) { c.Profile = "tag:evil.example,2026:credential/v1" }), want: ReasonCredentialProfile},
		{name: "sub not matching cnf", raw: withClaims(func(c *Claims) { c.Subject = newAgent(t).sub }), want: ReasonCredentialMalformed},
		{name: "cnf missing", raw: withClaims(func(c *Claims) { c.Confirm.Key = nil }), want: ReasonCredentialMalformed},
		{name: "cnf with private key", raw: withClaims(func(c *Claims) { c.Confirm.Key = privateCOSE(t, ag) }), want: ReasonCredentialMalformed},
		{name: "cnf point not on curve", raw: withClaims(func(c *Claims) { c.Confirm.Key = offCurve(t, ag) }), want: ReasonCredentialMalformed},
		{name: "cti too short", raw: withClaims(func(c *Claims) { c.ID = c.ID[:15] }), want: ReasonCredentialMalformed},
		{name: "cnf crv not an integer (go-cose panic)", raw: signRaw(t, is.key, cose.AlgorithmES256, es256(nil), nil,
			setClaim(t, payload, 8, map[int]any{1: map[int]any{1: 2, -1: "P-256", -2: make([]byte, 32), -3: make([]byte, 32)}})), want: ReasonCredentialMalformed},
		{name: "cnf crv simple value", raw: signRaw(t, is.key, cose.AlgorithmES256, es256(nil), nil,
			setClaim(t, payload, 8, map[int]any{1: map[int]any{1: 2, -1: cbor.SimpleValue(20 + 16), -2: make([]byte, 32), -3: make([]byte, 32)}})), want: ReasonCredentialMalformed},
		{name: "audience as array", raw: signRaw(t, is.key, cose.AlgorithmES256, es256(nil), nil, setClaim(t, payload, 3, []string{testAudience})), want: ReasonCredentialMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := CredentialOptions{Audience: []string{testAudience}, Now: fixed(now)}
			if tc.opts != nil {
				tc.opts(&opts)
			}
			keys := is.keys
			if tc.keys != nil || tc.name == "nil key set" {
				keys = tc.keys
			}
			c, err := VerifyCredential(tc.raw, keys, opts)
			wantReason(t, err, tc.want)
			if tc.want == "" && c == nil {
				t.Fatal("no claims")
			}
		})
	}
}

// TestVerifyCredentialEveryByte flips each byte of a credential in turn: no
// variant may be accepted, and each refusal is an *Error.
func TestVerifyCredentialEveryByte(t *testing.T) {
	is, ag := newIssuer(t), newAgent(t)
	good := is.sign(t, claimsFor(ag, testNow))
	opts := CredentialOptions{Audience: []string{testAudience}, Now: fixed(testNow)}
	counts := map[Reason]int{}
	for i := range good {
		for _, mask := range []byte{0x01, 0x80} {
			b := bytes.Clone(good)
			b[i] ^= mask
			_, err := VerifyCredential(b, is.keys, opts)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("byte %d ^%#x: accepted or untyped error: %v", i, mask, err)
			}
			counts[e.Reason]++
		}
	}
	t.Logf("refusals by reason: %v", counts)
}

func at(now time.Time) func(*CredentialOptions) {
	return func(o *CredentialOptions) { o.Now = fixed(now) }
}

func fixed(now time.Time) func() time.Time { return func() time.Time { return now } }

func mustCOSE(t testing.TB, k crypto.Signer, kid []byte) *cose.Key {
	t.Helper()
	ck, err := PublicCOSEKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	ck.ID = kid
	return ck
}

// withAlg re-signs nothing: it rewrites the protected alg of raw, which
// leaves a credential whose signature no longer matters.
func withAlg(t testing.TB, raw []byte, alg cose.Algorithm) []byte {
	t.Helper()
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(raw); err != nil {
		t.Fatal(err)
	}
	msg.Headers.RawProtected = nil
	msg.Headers.Protected[cose.HeaderLabelAlgorithm] = alg
	b, err := msg.MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func setClaim(t testing.TB, payload []byte, label int, v any) []byte {
	t.Helper()
	var m map[int]any
	if err := Unmarshal(payload, &m); err != nil {
		t.Fatal(err)
	}
	m[label] = v
	return mustMarshal(t, m)
}

func privateCOSE(t testing.TB, a *testAgent) *cose.Key {
	t.Helper()
	k, err := cose.NewKeyFromPrivate(a.key)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// offCurve returns the agent's cnf key with y changed so the point is not on
// P-256, keeping the sub claim consistent with it.
func offCurve(t testing.TB, a *testAgent) *cose.Key {
	t.Helper()
	_, x, y, _ := a.cnf.EC2()
	y = bytes.Clone(y)
	y[31] ^= 1
	k, err := cose.NewKeyEC2(cose.AlgorithmES256, x, y, nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSubjectLeadingZeros(t *testing.T) {
	// Keys whose x or y starts with a zero octet used to get a 31-byte
	// coordinate from cose.NewKeyFromPublic and no thumbprint.
	found := 0
	for found < 2 {
		k := newKey(t, elliptic.P256())
		b, _ := k.PublicKey.Bytes()
		if b[1] != 0 && b[33] != 0 {
			continue
		}
		found++
		ck, err := PublicCOSEKey(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := SubjectOf(ck); err != nil {
			t.Fatal(err)
		}
		// A key whose coordinates were trimmed by another encoder gets the
		// same thumbprint.
		trimmed, _ := cose.NewKeyFromPublic(k.Public())
		a, _ := Thumbprint(ck)
		b2, err := Thumbprint(trimmed)
		if err != nil || !bytes.Equal(a, b2) {
			t.Fatalf("thumbprints differ: %x %x %v", a, b2, err)
		}
		if _, err := ECDSAPublic(trimmed); err != nil {
			t.Fatal(err)
		}
	}
}
