package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veraison/go-cose"
)

const testTarget = "https://docs.example/v1/documents/customer-A%2F1?fields=title"

func TestPoPVerify(t *testing.T) {
	ag, stranger := newAgent(t), newAgent(t)
	cred := []byte("the credential bytes")
	body := []byte(`{"question":"what is in it?"}`)
	now := testNow
	pop := func(at time.Time) []byte {
		return makePoP(t, ag.key, "POST", testTarget, body, cred, at)
	}
	claimsPoP := func(mutate func(*PoPClaims)) []byte {
		pc, err := NewPoPClaims("POST", testTarget, body, cred, now)
		if err != nil {
			t.Fatal(err)
		}
		mutate(pc)
		b, err := SignPoP(ag.key, pc)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	popHeader := cose.ProtectedHeader{cose.HeaderLabelContentType: PoPContentType}
	validPayload := func() []byte {
		pc, _ := NewPoPClaims("POST", testTarget, body, cred, now)
		return mustMarshal(t, pc)
	}
	extraField := func() []byte {
		var m map[int]any
		if err := Unmarshal(validPayload(), &m); err != nil {
			t.Fatal(err)
		}
		m[7] = "extra"
		return signRaw(t, ag.key, cose.AlgorithmES256, popHeader, nil, mustMarshal(t, m))
	}
	good := pop(now)
	tests := []struct {
		name   string
		pop    []byte
		method string
		target string
		body   []byte
		cred   []byte
		want   Reason
	}{
		{name: "valid", pop: pop(now)},
		{name: "iat at max age", pop: pop(now.Add(-30 * time.Second))},
		{name: "iat too old", pop: pop(now.Add(-31 * time.Second)), want: ReasonPoPStale},
		{name: "iat at future skew", pop: pop(now.Add(5 * time.Second))},
		{name: "iat too far in the future", pop: pop(now.Add(6 * time.Second)), want: ReasonPoPStale},
		{name: "another URI", pop: pop(now), target: "https://docs.example/v1/documents/customer-B%2F1?fields=title", want: ReasonPoPTarget},
		{name: "another query", pop: pop(now), target: "https://docs.example/v1/documents/customer-A%2F1?fields=all", want: ReasonPoPTarget},
		{name: "another origin", pop: pop(now), target: "https://evil.example/v1/documents/customer-A%2F1?fields=title", want: ReasonPoPTarget},
		{name: "another method", pop: pop(now), method: "DELETE", want: ReasonPoPTarget},
		{name: "another body", pop: pop(now), body: []byte(`{"question":"delete it"}`), want: ReasonPoPBody},
		{name: "no body", pop: pop(now), body: []byte{}, want: ReasonPoPBody},
		{name: "another credential", pop: pop(now), cred: []byte("another credential"), want: ReasonPoPCredential},
		{name: "signed by another key", pop: makePoP(t, stranger.key, "POST", testTarget, body, cred, now), want: ReasonPoPSignature},
		{name: "signature byte changed", pop: flipByte(good, len(good)-1), want: ReasonPoPSignature},
		{name: "payload byte changed", pop: flipByte(good, bytes.Index(good, []byte("docs.example"))), want: ReasonPoPSignature},
		{name: "garbage", pop: []byte("garbage"), want: ReasonPoPMalformed},
		{name: "truncated", pop: good[:len(good)-3], want: ReasonPoPMalformed},
		{name: "untagged", pop: good[1:], want: ReasonPoPMalformed},
		{name: "oversized", pop: make([]byte, MaxPoPSize+1), want: ReasonPoPMalformed},
		{name: "empty", pop: nil, want: ReasonPoPMissing},
		{name: "unknown field", pop: extraField(), want: ReasonPoPMalformed},
		{name: "no content type", pop: signRaw(t, ag.key, cose.AlgorithmES256, nil, nil, validPayload()), want: ReasonPoPMalformed},
		{name: "other content type", pop: signRaw(t, ag.key, cose.AlgorithmES256, cose.ProtectedHeader{cose.HeaderLabelContentType: CredentialMediaType}, nil, validPayload()), want: ReasonPoPMalformed},
		{name: "ES384", pop: signRaw(t, ag.key, cose.AlgorithmES384, cose.ProtectedHeader{cose.HeaderLabelContentType: PoPContentType}, nil, validPayload()), want: ReasonPoPMalformed},
		{name: "short id", pop: claimsPoP(func(p *PoPClaims) { p.ID = p.ID[:8] }), want: ReasonPoPMalformed},
		{name: "short digest", pop: claimsPoP(func(p *PoPClaims) { p.BodyDigest = p.BodyDigest[:20] }), want: ReasonPoPMalformed},
		{name: "no method", pop: claimsPoP(func(p *PoPClaims) { p.Method = "" }), want: ReasonPoPMalformed},
		{name: "lower-case method", pop: claimsPoP(func(p *PoPClaims) { p.Method = "post" }), want: ReasonPoPTarget},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := NewPoPVerifier(PoPOptions{Now: fixed(now)})
			method, target, b, c := "POST", testTarget, body, cred
			if tc.method != "" {
				method = tc.method
			}
			if tc.target != "" {
				target = tc.target
			}
			if tc.body != nil {
				b = tc.body
			}
			if tc.cred != nil {
				c = tc.cred
			}
			pc, err := v.Verify(tc.pop, &ag.key.PublicKey, method, target, b, c)
			wantReason(t, err, tc.want)
			if tc.want == "" {
				if pc == nil || pc.Target != testTarget {
					t.Fatalf("claims %+v", pc)
				}
				// The same proof again is a replay.
				_, err := v.Verify(tc.pop, &ag.key.PublicKey, method, target, b, c)
				wantReason(t, err, ReasonPoPReplayed)
			} else if n := v.cache.len(); n != 0 {
				t.Fatalf("refused proof left %d entries in the replay cache", n)
			}
		})
	}
}

func flipByte(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

// TestPoPRefusedNotRecorded: a proof refused for another reason (here the
// target) is not recorded, so the legitimate request still passes; a proof
// with a bad signature never reaches the cache.
func TestPoPRefusedNotRecorded(t *testing.T) {
	ag := newAgent(t)
	v := NewPoPVerifier(PoPOptions{Now: fixed(testNow)})
	p := makePoP(t, ag.key, "GET", testTarget, nil, []byte("c"), testNow)
	_, err := v.Verify(p, &ag.key.PublicKey, "GET", "https://docs.example/other", nil, []byte("c"))
	wantReason(t, err, ReasonPoPTarget)
	_, err = v.Verify(p, &ag.key.PublicKey, "GET", testTarget, nil, []byte("c"))
	wantReason(t, err, "")
	_, err = v.Verify(p, &newAgent(t).key.PublicKey, "GET", testTarget, nil, []byte("c"))
	wantReason(t, err, ReasonPoPSignature)
	if n := v.cache.len(); n != 1 {
		t.Fatalf("cache holds %d ids, want 1", n)
	}
}

// derSigner is a crypto.Signer like a TPM key's: not an *ecdsa.PrivateKey,
// and its Sign returns an ASN.1 DER signature.
type derSigner struct{ k *ecdsa.PrivateKey }

func (s derSigner) Public() crypto.PublicKey { return &s.k.PublicKey }
func (s derSigner) Sign(r io.Reader, digest []byte, _ crypto.SignerOpts) ([]byte, error) {
	return ecdsa.SignASN1(r, s.k, digest)
}

func TestPoPFromDERSigner(t *testing.T) {
	ag := newAgent(t)
	p := makePoP(t, derSigner{ag.key}, "PUT", testTarget, []byte("x"), []byte("c"), testNow)
	v := NewPoPVerifier(PoPOptions{Now: fixed(testNow)})
	if _, err := v.Verify(p, &ag.key.PublicKey, "PUT", testTarget, []byte("x"), []byte("c")); err != nil {
		t.Fatal(err)
	}
}

func TestPoPVerifyBadKey(t *testing.T) {
	v := NewPoPVerifier(PoPOptions{})
	p := makePoP(t, newAgent(t).key, "GET", testTarget, nil, nil, time.Now())
	_, err := v.Verify(p, nil, "GET", testTarget, nil, nil)
	wantReason(t, err, ReasonInternal)
	_, err = v.Verify(p, &newKey(t, elliptic.P384()).PublicKey, "GET", testTarget, nil, nil)
	wantReason(t, err, ReasonInternal)
}

func TestReplayCacheExpiryAndFull(t *testing.T) {
	now := testNow
	clock := func() time.Time { return now }
	v := NewPoPVerifier(PoPOptions{Now: clock, CacheSize: 4})
	ag := newAgent(t)
	verify := func(at time.Time) error {
		p := makePoP(t, ag.key, "GET", testTarget, nil, nil, at)
		_, err := v.Verify(p, &ag.key.PublicKey, "GET", testTarget, nil, nil)
		return err
	}
	for i := 0; i < 4; i++ {
		wantReason(t, verify(now), "")
	}
	// Full of ids still in their window: fail closed.
	wantReason(t, verify(now), ReasonPoPCacheFull)
	// Within the window nothing is forgotten.
	now = now.Add(35 * time.Second)
	wantReason(t, verify(now), ReasonPoPCacheFull)
	// Once the window (MaxAge+FutureSkew+1s) has passed, room comes back.
	now = now.Add(1*time.Second + time.Nanosecond)
	wantReason(t, verify(now), "")
	if n := v.cache.len(); n != 1 {
		t.Fatalf("cache holds %d, want 1", n)
	}
}

// TestReplayWindowCoversAcceptance: an id is remembered at least as long as a
// proof carrying it can be accepted, whatever its iat within the window.
func TestReplayWindowCoversAcceptance(t *testing.T) {
	ag := newAgent(t)
	for _, iatOffset := range []time.Duration{-30 * time.Second, 0, 5 * time.Second} {
		now := testNow
		v := NewPoPVerifier(PoPOptions{Now: func() time.Time { return now }})
		p := makePoP(t, ag.key, "GET", testTarget, nil, nil, testNow.Add(iatOffset))
		if _, err := v.Verify(p, &ag.key.PublicKey, "GET", testTarget, nil, nil); err != nil {
			t.Fatal(err)
		}
		for step := time.Duration(0); step <= 40*time.Second; step += 500 * time.Millisecond {
			now = testNow.Add(step)
			_, err := v.Verify(p, &ag.key.PublicKey, "GET", testTarget, nil, nil)
			if r := ReasonOf(err); r != ReasonPoPReplayed && r != ReasonPoPStale {
				t.Fatalf("iat %+v, replay at +%v: %v", iatOffset, step, err)
			}
		}
	}
}

func TestReplayCacheConcurrent(t *testing.T) {
	c := newReplayCache(1 << 14)
	var ids [64][PoPIDSize]byte
	for i := range ids {
		rand.Read(ids[i][:])
	}
	var accepted atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, id := range ids {
				if c.add(id, testNow, time.Minute) == "" {
					accepted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if accepted.Load() != int64(len(ids)) {
		t.Fatalf("%d ids accepted, want each of %d exactly once", accepted.Load(), len(ids))
	}
}

// TestReplayCacheSweeps checks that the queue is compacted and memory does
// not grow with the number of ids seen over time.
func TestReplayCacheSweeps(t *testing.T) {
	c := newReplayCache(1 << 12)
	now := testNow
	var id [PoPIDSize]byte
	for i := 0; i < 200_000; i++ {
		now = now.Add(time.Millisecond)
		h := sha256.Sum256([]byte{byte(i), byte(i >> 8), byte(i >> 16)})
		copy(id[:], h[:])
		if r := c.add(id, now, 2*time.Second); r != "" {
			t.Fatalf("add %d: %s", i, r)
		}
	}
	if n := c.len(); n > 2100 {
		t.Fatalf("%d live entries; want about 2000", n)
	}
	for i := range c.shards {
		if q := cap(c.shards[i].queue); q > 4*c.perShard {
			t.Fatalf("shard %d queue capacity %d, per-shard limit %d", i, q, c.perShard)
		}
	}
}
