package verifier_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/internal/ekca"
	"github.com/vouch-dev/vouch/internal/testenv"
)

// verifyCred checks a credential against the verifier's keys, as a
// relying party does.
func verifyCred(t testing.TB, e *enrollEnv, cred []byte) *attest.Claims {
	t.Helper()
	b, err := e.srv.Keys().KeySet().MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	ks, err := attest.DecodeKeySet(b)
	if err != nil {
		t.Fatal(err)
	}
	claims, err := attest.VerifyCredential(cred, ks, attest.CredentialOptions{Audience: []string{request.Audience}, Now: e.clock.Now})
	if err != nil {
		t.Fatalf("VerifyCredential: %v", err)
	}
	return claims
}

// TestSWTPMEndToEnd runs the whole flow on swtpm (libtpms): the EK
// certificate from the test manufacturer CA in swtpm's NV, enrollment by
// credential activation, a TPM clear with tpm2_clear (tpm2-tools) that
// gives a new AK which supersedes the old one, the old AK refused,
// attestation, and the credential verified by a relying party.
func TestSWTPMEndToEnd(t *testing.T) {
	root, inter := testCA(t)
	sw := testenv.StartSWTPM(t, "")
	e := newEnrollEnv(t, enrollSetup{spec: sw.Spec, roots: []*x509.Certificate{root.Cert}})
	e.provision(t, inter, agentside.EKECC, ekca.Options{})
	if err := e.tpm.WriteEKChainCert(0, inter.Cert.Raw); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	first, err := e.tpm.Enroll(ctx, e.client, agentside.EnrollOptions{Name: "swtpm"})
	if err != nil {
		t.Fatalf("Enroll on swtpm: %v", err)
	}
	if first.Method != attest.EnrollMethodActivation {
		t.Errorf("method %s", first.Method)
	}

	// Another TPM (the simulator) cannot answer swtpm's challenge: its EK
	// differs, so TPM2_ActivateCredential fails inside the TPM.
	req, ek, err := e.tpm.EnrollmentRequest(agentside.EnrollOptions{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.client.Enroll(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	sim, err := agentside.Open(ctx, agentside.SpecSimulator, agentside.OpenOptions{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sim.ActivateCredential(ek.Type, resp.Challenge.Credential, resp.Challenge.Secret); err == nil {
		t.Error("the simulator answered swtpm's activation challenge")
	}
	sim.Close()

	// TPM clear with an independent tool: the owner hierarchy (and the
	// AK) changes, the endorsement hierarchy (and the EK) does not.
	tpm2clear := testenv.LookTool(t, "tpm2_clear", "tpm2-tools")
	if err := e.tpm.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tpm2clear, "-c", "p")
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+sw.TCTI())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tpm2_clear: %v\n%s", err, out)
	}
	if e.tpm, err = agentside.Open(ctx, sw.Spec, agentside.OpenOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.tpm.Close() })
	second, err := e.tpm.Enroll(ctx, e.client, agentside.EnrollOptions{Name: "swtpm"})
	if err != nil {
		t.Fatalf("re-enroll after TPM clear: %v", err)
	}
	if second.AKDigest == first.AKDigest || second.EKDigest != first.EKDigest {
		t.Fatalf("after a clear: AK %s → %s, EK %s → %s", first.AKDigest[:8], second.AKDigest[:8], first.EKDigest[:8], second.EKDigest[:8])
	}
	if len(second.Superseded) != 1 || second.Superseded[0] != first.AKDigest {
		t.Errorf("superseded = %v, want the first AK", second.Superseded)
	}
	list, err := e.srv.Store().Enrollments(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range list {
		active := en.Active()
		if isFirst := strings.HasPrefix(first.AKDigest, hex.EncodeToString(en.AKDigest)); isFirst == active {
			t.Errorf("enrollment %x active=%v", en.AKDigest[:8], active)
		}
	}

	cred := attestOnce(t, e, bootLog)
	claims := verifyCred(t, e, cred)
	if claims.Audience != request.Audience {
		t.Errorf("aud %q", claims.Audience)
	}

	// An operator's revocation sticks: the TPM cannot enroll again alone.
	akd, _ := hex.DecodeString(second.AKDigest)
	if err := e.srv.Store().RevokeEnrollment(ctx, akd, "alice", "decommissioned", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.tpm.Enroll(ctx, e.client, agentside.EnrollOptions{}); attest.ReasonOf(err) != attest.ReasonAKRevoked {
		t.Errorf("re-enroll after an operator's revocation = %v", err)
	}
}

// TestSWTPMSetupEKCert: a TPM state manufactured by swtpm_setup
// --create-ek-cert (RSA EK certificate by swtpm's local CA) enrolls when
// that CA is configured as an EK root, and not otherwise.
func TestSWTPMSetupEKCert(t *testing.T) {
	state := t.TempDir()
	ca := testenv.SWTPMSetup(t, state, false)
	sw := testenv.StartSWTPM(t, state)
	rootCert := readCert(t, ca.RootCert)
	ctx := context.Background()

	e := newEnrollEnv(t, enrollSetup{spec: sw.Spec, roots: []*x509.Certificate{readCert(t, "../testdata/ekca/root.pem")}})
	if _, err := e.tpm.Enroll(ctx, e.client, agentside.EnrollOptions{}); attest.ReasonOf(err) != attest.ReasonEKCertUntrusted {
		t.Fatalf("swtpm's EK certificate with another root = %v", err)
	}
	ek, err := e.tpm.EK()
	if err != nil {
		t.Fatal(err)
	}
	if ek.Type != agentside.EKRSA || ek.Cert == nil {
		t.Fatalf("EK %s, certificate %v", ek.Type, ek.Cert != nil)
	}
	e.tpm.Close()

	// swtpm's CA is its local root and the issuer it signs EK
	// certificates with (not in NV): both go into --ek-roots.
	e2 := newEnrollEnv(t, enrollSetup{spec: sw.Spec, roots: []*x509.Certificate{rootCert, readCert(t, ca.IssuerCert)}})
	res, err := e2.tpm.Enroll(ctx, e2.client, agentside.EnrollOptions{Name: "swtpm_setup"})
	if err != nil {
		t.Fatalf("Enroll with swtpm_localca's root: %v", err)
	}
	t.Logf("swtpm_setup EK certificate: %s", res.Detail)
	if res.Method != attest.EnrollMethodActivation || !strings.Contains(res.Detail, "swtpm") {
		t.Errorf("result %+v", res)
	}
}

func readCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: not PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
