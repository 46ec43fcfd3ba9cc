package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"
	"time"
)

func BenchmarkSignCredential(b *testing.B) {
	is, ag := newIssuer(b), newAgent(b)
	c := claimsFor(ag, time.Now())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := SignCredential(is.key, is.kid, c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyCredential(b *testing.B) {
	is, ag := newIssuer(b), newAgent(b)
	raw := is.sign(b, claimsFor(ag, testNow))
	opts := CredentialOptions{Audience: []string{testAudience}, Now: fixed(testNow)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := VerifyCredential(raw, is.keys, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyPoP verifies distinct proofs (each id recorded in the
// replay cache), as a relying party does.
func BenchmarkVerifyPoP(b *testing.B) {
	ag := newAgent(b)
	cred := []byte("credential")
	body := []byte(`{"q":"x"}`)
	const n = 4096
	pops := make([][]byte, n)
	for i := range pops {
		pops[i] = makePoP(b, ag.key, "POST", testTarget, body, cred, testNow)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var v *PoPVerifier
	i := 0
	for b.Loop() {
		if i%n == 0 {
			b.StopTimer()
			v = NewPoPVerifier(PoPOptions{Now: fixed(testNow)})
			b.StartTimer()
		}
		if _, err := v.Verify(pops[i%n], &ag.key.PublicKey, "POST", testTarget, body, cred); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkECDSAP256Verify is the floor: one bare P-256 verification.
func BenchmarkECDSAP256Verify(b *testing.B) {
	k := newKey(b, elliptic.P256())
	d := sha256.Sum256([]byte("x"))
	sig, _ := ecdsa.SignASN1(rand.Reader, k, d[:])
	for b.Loop() {
		if !ecdsa.VerifyASN1(&k.PublicKey, d[:], sig) {
			b.Fatal("verify")
		}
	}
}

// BenchmarkReplayCacheAdd measures the cache alone, in parallel.
func BenchmarkReplayCacheAdd(b *testing.B) {
	c := newReplayCache(DefaultPoPCacheSize)
	now := testNow
	b.RunParallel(func(pb *testing.PB) {
		var id [PoPIDSize]byte
		rand.Read(id[:])
		var ctr uint64
		for pb.Next() {
			ctr++
			id[0], id[1], id[2], id[3] = byte(ctr), byte(ctr>>8), byte(ctr>>16), byte(ctr>>24)
			// A short retention keeps the cache from filling during long runs.
			c.add(id, now.Add(time.Duration(ctr)*time.Microsecond), time.Millisecond)
		}
	})
}
