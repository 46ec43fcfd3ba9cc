package attest

import (
	"bytes"
	"errors"
	"testing"

	"github.com/veraison/go-cose"
)

// mustTyped fails unless err is nil or an *Error.
func mustTyped(t *testing.T, what string, err error) {
	t.Helper()
	var e *Error
	if err != nil && !errors.As(err, &e) {
		t.Fatalf("%s: error %v (%T) is not an *attest.Error", what, err, err)
	}
}

func FuzzDecodeEvidence(f *testing.F) {
	req, err := EncodeRequest(&Request{Audience: testAudience, Intent: "summarise", Resources: []string{`Document::"customer-A/*"`}, Delegation: "d-1"})
	if err != nil {
		f.Fatal(err)
	}
	ev, err := EncodeEvidence(&Evidence{Version: 1, Nonce: make([]byte, NonceSize), Request: req, TPM: []byte{1}, AgentKey: []byte{2}, CertifyInfo: []byte{3}, CertifySig: []byte{4}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ev)
	f.Add(req)
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeEvidence(data)
		mustTyped(t, "DecodeEvidence", err)
		if err == nil {
			// Decoded evidence re-encodes, and its request decodes or is refused cleanly.
			if _, err := EncodeEvidence(e); err != nil {
				t.Fatalf("decoded evidence does not re-encode: %v", err)
			}
			_, err := DecodeRequest(e.Request)
			mustTyped(t, "DecodeRequest(evidence.Request)", err)
		}
		r, err := DecodeRequest(data)
		mustTyped(t, "DecodeRequest", err)
		if err == nil {
			if _, err := EncodeRequest(r); err != nil {
				t.Fatalf("decoded request does not re-encode: %v", err)
			}
		}
	})
}

func FuzzVerifyCredential(f *testing.F) {
	is, ag := newIssuer(f), newAgent(f)
	good := is.sign(f, claimsFor(ag, testNow))
	f.Add(good)
	f.Add(good[1:])
	f.Add(signRaw(f, is.key, cose.AlgorithmES256, cose.ProtectedHeader{cose.HeaderLabelKeyID: is.kid}, nil, []byte{0xa1, 0x19, 0x01, 0x09, 0x60}))
	opts := CredentialOptions{Audience: []string{testAudience}, Now: fixed(testNow)}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := VerifyCredential(data, is.keys, opts)
		mustTyped(t, "VerifyCredential", err)
		if err == nil && (c == nil || c.Subject == "" || c.Confirm.Key == nil) {
			t.Fatalf("accepted credential with claims %+v", c)
		}
	})
}

func FuzzVerifyPoP(f *testing.F) {
	ag := newAgent(f)
	cred := []byte("credential")
	f.Add(makePoP(f, ag.key, "POST", testTarget, []byte("body"), cred, testNow))
	f.Add(makePoP(f, derSigner{ag.key}, "GET", testTarget, nil, cred, testNow))
	f.Add([]byte{0xd2, 0x84, 0x40, 0xa0, 0xf6, 0x40})
	f.Fuzz(func(t *testing.T, data []byte) {
		// A fresh verifier: the seeds must pass their checks, not be replays.
		v := NewPoPVerifier(PoPOptions{Now: fixed(testNow), CacheSize: 16})
		pc, err := v.Verify(data, &ag.key.PublicKey, "POST", testTarget, []byte("body"), cred)
		mustTyped(t, "PoPVerifier.Verify", err)
		if err == nil {
			if pc == nil || len(pc.ID) != PoPIDSize {
				t.Fatalf("accepted proof with claims %+v", pc)
			}
			if _, err := v.Verify(data, &ag.key.PublicKey, "POST", testTarget, []byte("body"), cred); ReasonOf(err) != ReasonPoPReplayed {
				t.Fatalf("replay not refused: %v", err)
			}
		}
	})
}

func FuzzDecodeKeySet(f *testing.F) {
	is1, is2 := newIssuer(f), newIssuer(f)
	b, _ := is1.keys.MarshalCBOR()
	f.Add(b)
	two, _ := NewKeySet(is1.keys.raw[0], is2.keys.raw[0])
	b, _ = two.MarshalCBOR()
	f.Add(b)
	f.Add([]byte{0x81, 0xf6})
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, err := DecodeKeySet(data)
		mustTyped(t, "DecodeKeySet", err)
		if err != nil {
			return
		}
		for _, k := range ks.raw {
			pub, ok := ks.Lookup(k.ID)
			if !ok || pub == nil {
				t.Fatalf("kid %x not found", k.ID)
			}
			if !pub.Curve.IsOnCurve(pub.X, pub.Y) {
				t.Fatalf("kid %x: point not on curve", k.ID)
			}
		}
		// A decoded set re-encodes and decodes to the same kids.
		enc, err := ks.MarshalCBOR()
		if err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		again, err := DecodeKeySet(enc)
		if err != nil || again.Len() != ks.Len() {
			t.Fatalf("re-decoding: %v", err)
		}
	})
}

// FuzzCredentialPayload signs each input as a credential payload with the
// trusted key, so that claims decoding — unreachable for FuzzVerifyCredential
// behind the signature — is fuzzed too.
func FuzzCredentialPayload(f *testing.F) {
	is, ag := newIssuer(f), newAgent(f)
	f.Add(mustMarshal(f, claimsFor(ag, testNow)))
	f.Add([]byte{0xa1, 0x08, 0xa1, 0x01, 0xa3, 0x01, 0x02, 0x20, 0x01, 0x21, 0x40})
	opts := CredentialOptions{Audience: []string{testAudience}, Now: fixed(testNow)}
	hdr := cose.ProtectedHeader{cose.HeaderLabelKeyID: is.kid}
	f.Fuzz(func(t *testing.T, payload []byte) {
		if len(payload) > MaxCredentialSize-200 {
			return
		}
		raw := signRaw(t, is.key, cose.AlgorithmES256, hdr, nil, payload)
		c, err := VerifyCredential(raw, is.keys, opts)
		mustTyped(t, "VerifyCredential", err)
		if err == nil {
			if _, err := ECDSAPublic(c.Confirm.Key); err != nil {
				t.Fatalf("accepted a credential whose cnf key is unusable: %v", err)
			}
		}
	})
}

// FuzzPoPPayload signs each input as a proof payload with the cnf key.
func FuzzPoPPayload(f *testing.F) {
	ag := newAgent(f)
	pc, _ := NewPoPClaims("GET", testTarget, nil, []byte("c"), testNow)
	f.Add(mustMarshal(f, pc))
	hdr := cose.ProtectedHeader{cose.HeaderLabelContentType: PoPContentType}
	f.Fuzz(func(t *testing.T, payload []byte) {
		if len(payload) > MaxPoPSize-200 {
			return
		}
		raw := signRaw(t, ag.key, cose.AlgorithmES256, hdr, nil, payload)
		v := NewPoPVerifier(PoPOptions{Now: fixed(testNow), CacheSize: 16})
		_, err := v.Verify(raw, &ag.key.PublicKey, "GET", testTarget, nil, []byte("c"))
		mustTyped(t, "PoPVerifier.Verify", err)
	})
}

// FuzzScopeEntry: parsing never panics, a parsed entry prints back to what
// was parsed, and an entry always allows what it names when that is concrete.
func FuzzScopeEntry(f *testing.F) {
	for _, s := range []string{`documents:read:Document::"customer-A/*"`, `a:b:C::"x"`, `a:b:C::D::"*"`, `x`, `a:b:C::""`, `a:b:C::"a*b"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseScopeEntry(s)
		if err != nil {
			return
		}
		if e.String() != s {
			t.Fatalf("%q parsed to %+v, prints %q", s, e, e.String())
		}
		if _, err := ParseResource(e.Resource.String()); err != nil {
			t.Fatalf("resource %q of a parsed entry does not parse: %v", e.Resource, err)
		}
		if !e.Resource.IsPattern() && !ScopeAllows([]string{s}, e.Action, e.Resource) {
			t.Fatalf("entry %q does not allow what it names", s)
		}
		if !e.Resource.Covers(e.Resource) {
			t.Fatalf("%s does not cover itself", e.Resource)
		}
	})
}

// FuzzReadEventStream: the server-sent events parser the revocation
// follower reads the verifier's stream with is bounded and never panics.
func FuzzReadEventStream(f *testing.F) {
	f.Add([]byte("event: revocation\nid: 1\ndata: {\"id\":1}\n\nevent: heartbeat\ndata: {}\n\n"))
	f.Add([]byte(": comment\r\ndata: a\r\ndata: b\r\n\r\n"))
	f.Add([]byte("data"))
	f.Fuzz(func(t *testing.T, b []byte) {
		n := 0
		err := ReadEventStream(bytes.NewReader(b), func(ev Event) error {
			n++
			if len(ev.Data) > maxSSELine {
				t.Fatalf("event data of %d bytes passed the bound", len(ev.Data))
			}
			return nil
		})
		if err == nil {
			t.Fatal("ReadEventStream must end with the reader's error (EOF)")
		}
	})
}
