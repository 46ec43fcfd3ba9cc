package verifier_test

import (
	"context"
	"crypto/x509"
	"os"
	"testing"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/internal/ekca"
	"github.com/vouch-dev/vouch/internal/testenv"
)

// swtpmBenchEnv is a verifier with the test EK root and an agent on a fresh
// swtpm whose EK certificate is provisioned.
func swtpmBenchEnv(b *testing.B) *enrollEnv {
	b.Helper()
	root, inter := testCA(b)
	sw := testenv.StartSWTPM(b, "")
	e := newEnrollEnv(b, enrollSetup{spec: sw.Spec, roots: []*x509.Certificate{root.Cert}, unlimited: true})
	e.provision(b, inter, agentside.EKECC, ekca.Options{})
	if err := e.tpm.WriteEKChainCert(0, inter.Cert.Raw); err != nil {
		b.Fatal(err)
	}
	return e
}

// BenchmarkSWTPMEnroll measures one whole enrollment against swtpm over
// loopback HTTP: read the EK certificate and chain from NV, create the AK
// and certify its creation, POST /v1/enroll (EK chain validation,
// MakeCredential), TPM2_ActivateCredential, POST /v1/enroll/activate.
// Iterations after the first re-enroll the same AK (already enrolled), which
// runs the same steps.
func BenchmarkSWTPMEnroll(b *testing.B) {
	e := swtpmBenchEnv(b)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.tpm.Enroll(ctx, e.client, agentside.EnrollOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSWTPMAttest measures one whole attestation against swtpm over
// loopback HTTP: POST /v1/challenge, quote of every bank and TPM2_Certify of
// the agent key on swtpm, POST /v1/attest (full appraisal), credential.
func BenchmarkSWTPMAttest(b *testing.B) {
	e := swtpmBenchEnv(b)
	ctx := context.Background()
	if _, err := e.tpm.Enroll(ctx, e.client, agentside.EnrollOptions{}); err != nil {
		b.Fatal(err)
	}
	log, err := os.ReadFile(bootLog)
	if err != nil {
		b.Fatal(err)
	}
	if err := e.tpm.Boot(log); err != nil {
		b.Fatal(err)
	}
	if err := e.tpm.MeasureWorkload(demoImage); err != nil {
		b.Fatal(err)
	}
	agent, err := agentside.NewAgent(e.tpm)
	if err != nil {
		b.Fatal(err)
	}
	defer agent.Close()
	b.ResetTimer()
	for b.Loop() {
		if _, err := agent.Attest(ctx, e.client, request); err != nil {
			b.Fatal(err)
		}
	}
}
