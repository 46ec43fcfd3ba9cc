package verifier_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

	"github.com/vouch-dev/vouch/attest"
)

// BenchmarkAttest measures one full attestation in process: the HTTP
// handler, every appraisal step (nonce consumed in SQLite, AK lookup, quote
// and firmware-log replay, CEL replay, certification, reference values),
// signing the credential and recording it. The evidence (one fresh nonce
// and TPM quote per iteration) is produced on the simulator before the timer
// starts.
func BenchmarkAttest(b *testing.B) {
	e := newEnv(b, demoImage, true, noRateLimits)
	h := e.srv.Handler()
	ctx := context.Background()
	bodies := make([][]byte, b.N)
	for i := range bodies {
		ch, err := e.client.Challenge(ctx)
		if err != nil {
			b.Fatal(err)
		}
		ev, err := e.agent.Evidence(ch.Nonce, request)
		if err != nil {
			b.Fatal(err)
		}
		bodies[i], _ = attest.Marshal(ev)
	}
	runtime.GC()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req := httptest.NewRequest(http.MethodPost, "/v1/attest", bytes.NewReader(bodies[i]))
		req.Header.Set("Content-Type", attest.EvidenceMediaType)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("attest: %d %s", rec.Code, rec.Body)
		}
	}
}

// BenchmarkSignatureBaseline is the floor BenchmarkAttest is compared with:
// the two ECDSA P-256 verifications (quote, certification) and the one
// signature (credential) that an attestation cannot avoid.
func BenchmarkSignatureBaseline(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d := sha256.Sum256([]byte("baseline"))
	sig, _ := ecdsa.SignASN1(rand.Reader, k, d[:])
	for b.Loop() {
		ecdsa.VerifyASN1(&k.PublicKey, d[:], sig)
		ecdsa.VerifyASN1(&k.PublicKey, d[:], sig)
		if _, err := ecdsa.SignASN1(rand.Reader, k, d[:]); err != nil {
			b.Fatal(err)
		}
	}
}
