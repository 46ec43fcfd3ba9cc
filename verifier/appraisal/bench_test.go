package appraisal

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/verifier/issuer"
	"github.com/vouch-dev/vouch/verifier/store"
)

// BenchmarkAppraisal is issue 2's "full appraisal of one evidence in
// process": every pipeline step on genuine evidence from the simulator (the
// nonce consumed in a real SQLite store, AK lookup, quote and firmware-log
// replay, CEL replay, agent-key certification, reference values), then the
// credential built and signed. Its cost floor is BenchmarkSignatureFloor:
// two ECDSA P-256 verifications (quote, certification) and one signature.
// Audit-log durability (issue 5) is measured by verifier's
// BenchmarkAttestAuditCost. The evidence, one fresh nonce and quote per
// iteration, is produced before the timer starts.
func BenchmarkAppraisal(b *testing.B) {
	ctx := context.Background()
	tpm, err := agentside.Open(ctx, agentside.SpecSimulator, agentside.OpenOptions{StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer tpm.Close()
	log, err := os.ReadFile("../../testdata/eventlogs/rhel8-uefi.bin")
	if err != nil {
		b.Fatal(err)
	}
	if err := tpm.Boot(log); err != nil {
		b.Fatal(err)
	}
	if err := tpm.MeasureWorkload(agentside.Workload{ImageRef: "ghcr.io/vouch-dev/demo-agent:v1",
		ImageDigest: "sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d"}); err != nil {
		b.Fatal(err)
	}
	agent, err := agentside.NewAgent(tpm)
	if err != nil {
		b.Fatal(err)
	}
	defer agent.Close()
	dir := b.TempDir()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "vouch.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	spki, _ := x509.MarshalPKIXPublicKey(agent.AKPublic())
	d := sha256.Sum256(spki)
	if err := st.Enroll(ctx, store.Enrollment{AKDigest: d[:], AKPublic: spki, Method: "operator", EnrolledAt: time.Now()}); err != nil {
		b.Fatal(err)
	}
	refs, err := firmwarerefs.Load()
	if err != nil {
		b.Fatal(err)
	}
	keys, err := issuer.LoadOrCreate(dir)
	if err != nil {
		b.Fatal(err)
	}
	p, err := New(Options{Nonces: st, AKs: st, Refs: staticRefs{refs}})
	if err != nil {
		b.Fatal(err)
	}
	req := &attest.Request{Audience: "https://docs.example"}
	bodies := make([][]byte, b.N)
	for i := range bodies {
		nonce := make([]byte, attest.NonceSize)
		copy(nonce, []byte{byte(i), byte(i >> 8), byte(i >> 16), 'b', 'e', 'n', 'c', 'h'})
		now := time.Now()
		if err := st.PutNonce(ctx, nonce, now, now.Add(time.Hour)); err != nil {
			b.Fatal(err)
		}
		ev, err := agent.Evidence(nonce, req)
		if err != nil {
			b.Fatal(err)
		}
		if bodies[i], err = attest.EncodeEvidence(ev); err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out, err := p.Run(ctx, bodies[i])
		if err != nil {
			b.Fatal(err)
		}
		id, _ := issuer.NewID()
		now := time.Now()
		c := &attest.Claims{Issuer: "bench", Subject: out.AgentKey.Subject, Audience: out.Request.Audience,
			Expiry: now.Add(time.Minute).Unix(), NotBefore: now.Unix(), IssuedAt: now.Unix(), ID: id,
			Confirm: attest.Confirmation{Key: out.AgentKey.COSE}, Nonce: out.Evidence.Nonce, Profile: attest.Profile,
			Submods: out.Appraisal.Submods, VerifierID: attest.VerifierID{Developer: "vouch.dev", Build: "bench"}}
		if _, err := keys.Sign(c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSignatureFloor is what an appraisal cannot avoid: two ECDSA
// P-256 verifications and one signature.
func BenchmarkSignatureFloor(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := sha256.Sum256([]byte("floor"))
	sig, _ := ecdsa.SignASN1(rand.Reader, k, digest[:])
	for b.Loop() {
		ecdsa.VerifyASN1(&k.PublicKey, digest[:], sig)
		ecdsa.VerifyASN1(&k.PublicKey, digest[:], sig)
		if _, err := ecdsa.SignASN1(rand.Reader, k, digest[:]); err != nil {
			b.Fatal(err)
		}
	}
}
