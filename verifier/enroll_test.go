package verifier_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"log/slog"
	"math/big"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/internal/ekca"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/enroll"
)

const ekcaDir = "../testdata/ekca"

// testCA loads the project's TEST ONLY EK CA.
func testCA(t testing.TB) (root, inter *ekca.CA) {
	t.Helper()
	var err error
	if root, err = ekca.Load(ekcaDir, "root"); err != nil {
		t.Fatal(err)
	}
	if inter, err = ekca.Load(ekcaDir, "intermediate"); err != nil {
		t.Fatal(err)
	}
	return root, inter
}

// enrollEnv is a verifier with enrollment configured and an agent TPM.
type enrollEnv struct {
	srv    *verifier.Server
	client *agentside.Client
	tpm    *agentside.TPM
	clock  *clock
}

type enrollSetup struct {
	spec      string // TPM spec; "" = simulator
	roots     []*x509.Certificate
	allowlist [][]byte
	akRoots   []*x509.Certificate
	// unlimited turns the per-client rate limits off (benchmarks).
	unlimited bool
}

func newEnrollEnv(t testing.TB, s enrollSetup) *enrollEnv {
	t.Helper()
	ctx := context.Background()
	refs, err := firmwarerefs.Load()
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	eo := enroll.Options{}
	if s.roots != nil {
		eo.EKRoots = enroll.NewAnchors(s.roots...)
	}
	if s.akRoots != nil {
		eo.AKRoots = enroll.NewAnchors(s.akRoots...)
	}
	if s.allowlist != nil {
		eo.EKAllowlist = map[[32]byte]bool{}
		for _, d := range s.allowlist {
			eo.EKAllowlist[[32]byte(d)] = true
		}
	}
	cfg := verifier.Config{DataDir: t.TempDir(), Refs: verifier.NewRefHolder(refs), Now: clk.Now,
		Logger: slog.New(slog.DiscardHandler), Enrollment: eo}
	if s.unlimited {
		cfg.RateLimits = verifier.NoRateLimits()
	}
	srv, err := verifier.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	cl, err := agentside.NewClient(hs.URL, hs.Client())
	if err != nil {
		t.Fatal(err)
	}
	spec := s.spec
	if spec == "" {
		spec = agentside.SpecSimulator
	}
	tpm, err := agentside.Open(ctx, spec, agentside.OpenOptions{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	return &enrollEnv{srv: srv, client: cl, tpm: tpm, clock: clk}
}

// provision writes an EK certificate for the TPM's EK of type kt.
func (e *enrollEnv) provision(t testing.TB, ca *ekca.CA, kt agentside.KeyType, o ekca.Options) {
	t.Helper()
	ek, err := e.tpm.EK()
	if err != nil {
		t.Fatal(err)
	}
	pub := ek.Public
	if ek.Type != kt {
		// No certificate of kt yet: EK() returned the ECC EK; for RSA,
		// read the RSA EK by provisioning a placeholder first.
		t.Fatalf("EK type %s, want %s", ek.Type, kt)
	}
	der, err := ca.IssueEK(pub, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.tpm.WriteEKCert(kt, der); err != nil {
		t.Fatal(err)
	}
}

func reasonOf(err error) attest.Reason { return attest.ReasonOf(err) }

// TestEnrollByActivation: an AK whose TPM has an EK certificate from the
// (test) manufacturer CA enrolls by credential activation, then attests; the
// registry records the EK, the method and what the certificate said.
func TestEnrollByActivation(t *testing.T) {
	root, inter := testCA(t)
	e := newEnrollEnv(t, enrollSetup{roots: []*x509.Certificate{root.Cert}})
	e.provision(t, inter, agentside.EKECC, ekca.Options{})
	// The intermediate lives in the TPM's NV chain index.
	if err := e.tpm.WriteEKChainCert(0, inter.Cert.Raw); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := e.tpm.Enroll(ctx, e.client, agentside.EnrollOptions{Name: "host-1"})
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	if res.Method != attest.EnrollMethodActivation || res.Already {
		t.Errorf("result = %+v", res)
	}
	var det map[string]any
	if err := json.Unmarshal([]byte(res.Detail), &det); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Detail, "VOUCHTEST") || !strings.Contains(res.Detail, string(enroll.QuirkCriticalTPMSAN)) {
		t.Errorf("detail = %s", res.Detail)
	}
	list, err := e.srv.Store().Enrollments(ctx)
	if err != nil || len(list) != 1 || list[0].Method != "activation" || len(list[0].EKDigest) != 32 || list[0].Name != "host-1" {
		t.Fatalf("registry = %+v, %v", list, err)
	}
	// Enrolling again is idempotent.
	res2, err := e.tpm.Enroll(ctx, e.client, agentside.EnrollOptions{Name: "host-1"})
	if err != nil || !res2.Already {
		t.Errorf("second Enroll = %+v, %v", res2, err)
	}
	// The enrolled AK attests.
	attestOnce(t, e, bootLog)
}

// attestOnce boots the TPM with log, measures the demo image and attests.
func attestOnce(t testing.TB, e *enrollEnv, logPath string) []byte {
	t.Helper()
	log, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.tpm.Boot(log); err != nil {
		t.Fatal(err)
	}
	if err := e.tpm.MeasureWorkload(demoImage); err != nil {
		t.Fatal(err)
	}
	agent, err := agentside.NewAgent(e.tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	cred, err := agent.Attest(context.Background(), e.client, request)
	if err != nil {
		t.Fatalf("Attest after enrollment: %v", err)
	}
	return cred
}

// TestEnrollRefusals: each bad input is refused with its reason, and
// nothing is enrolled.
func TestEnrollRefusals(t *testing.T) {
	root, inter := testCA(t)
	untrusted, err := ekca.Load(ekcaDir, "untrusted-root")
	if err != nil {
		t.Fatal(err)
	}
	past := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name   string
		issuer *ekca.CA
		opts   ekca.Options
		mutate func(t *testing.T, req *attest.EnrollRequest)
		want   attest.Reason
	}{
		{name: "untrusted root", issuer: untrusted, want: attest.ReasonEKCertUntrusted},
		{name: "expired", issuer: inter, opts: ekca.Options{NotBefore: past, NotAfter: past.Add(24 * time.Hour)}, want: attest.ReasonEKCertExpired},
		{name: "not yet valid", issuer: inter, opts: ekca.Options{NotBefore: time.Now().Add(48 * time.Hour)}, want: attest.ReasonEKCertExpired},
		{name: "malformed", issuer: inter, mutate: func(_ *testing.T, r *attest.EnrollRequest) { r.EKCert = r.EKCert[:len(r.EKCert)/2] }, want: attest.ReasonEKCertMalformed},
		{name: "signature broken", issuer: inter, mutate: func(_ *testing.T, r *attest.EnrollRequest) { r.EKCert[len(r.EKCert)-5] ^= 1 }, want: attest.ReasonEKCertUntrusted},
		{name: "AK not restricted", issuer: inter, mutate: func(t *testing.T, r *attest.EnrollRequest) {
			// Clear restricted (bit 16 of the attributes, big-endian at
			// offset 4 of TPMT_PUBLIC).
			r.AK.Public[5] &^= 0x01
		}, want: attest.ReasonAKAttributes},
		{name: "creation attestation of another key", issuer: inter, mutate: func(_ *testing.T, r *attest.EnrollRequest) {
			r.AK.CreateSignature[len(r.AK.CreateSignature)-3] ^= 1
		}, want: attest.ReasonAKAttributes},
		{name: "EK public of another key", issuer: inter, mutate: func(t *testing.T, r *attest.EnrollRequest) {
			k, err := x509.MarshalPKIXPublicKey(root.Cert.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			r.EKPublic = k
		}, want: attest.ReasonEKKeyMismatch},
		{name: "no certificate, no allowlist", issuer: inter, mutate: func(_ *testing.T, r *attest.EnrollRequest) { r.EKCert = nil }, want: attest.ReasonEKCertMissing},
	}
	e := newEnrollEnv(t, enrollSetup{roots: []*x509.Certificate{root.Cert, inter.Cert}})
	ctx := context.Background()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.provision(t, c.issuer, agentside.EKECC, c.opts)
			req, _, err := e.tpm.EnrollmentRequest(agentside.EnrollOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if c.mutate != nil {
				c.mutate(t, req)
			}
			_, err = e.client.Enroll(ctx, req)
			if got := reasonOf(err); got != c.want {
				t.Errorf("Enroll = %v, want reason %s", err, c.want)
			}
		})
	}
	if list, _ := e.srv.Store().Enrollments(ctx); len(list) != 0 {
		t.Errorf("%d enrollments after refusals", len(list))
	}
}

// TestEnrollActivationRefusals: a challenge answered by another TPM, with
// a wrong secret, twice, or too late, enrolls nothing.
func TestEnrollActivationRefusals(t *testing.T) {
	root, inter := testCA(t)
	e := newEnrollEnv(t, enrollSetup{roots: []*x509.Certificate{root.Cert}})
	e.provision(t, inter, agentside.EKECC, ekca.Options{})
	if err := e.tpm.WriteEKChainCert(0, inter.Cert.Raw); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	challenge := func() (*attest.ActivationChallenge, agentside.KeyType) {
		req, ek, err := e.tpm.EnrollmentRequest(agentside.EnrollOptions{})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := e.client.Enroll(ctx, req)
		if err != nil || resp.Challenge == nil {
			t.Fatalf("Enroll = %+v, %v", resp, err)
		}
		return resp.Challenge, ek.Type
	}

	// A wrong answer (what another TPM would have to guess).
	ch, _ := challenge()
	_, err := e.client.Activate(ctx, &attest.ActivateRequest{ID: ch.ID, Secret: make([]byte, 32)})
	if reasonOf(err) != attest.ReasonActivationFailed {
		t.Errorf("wrong secret = %v", err)
	}
	// The right answer after a wrong one: the challenge is spent.
	ch, kt := challenge()
	secret, err := e.tpm.ActivateCredential(kt, ch.Credential, ch.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Activate(ctx, &attest.ActivateRequest{ID: ch.ID, Secret: secret}); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	// Replayed activation.
	_, err = e.client.Activate(ctx, &attest.ActivateRequest{ID: ch.ID, Secret: secret})
	if reasonOf(err) != attest.ReasonEnrollReplayed {
		t.Errorf("replayed activation = %v", err)
	}
	// Expired challenge.
	ch, kt = challenge()
	secret, err = e.tpm.ActivateCredential(kt, ch.Credential, ch.Secret)
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(enroll.DefaultChallengeTTL + time.Second)
	_, err = e.client.Activate(ctx, &attest.ActivateRequest{ID: ch.ID, Secret: secret})
	if reasonOf(err) != attest.ReasonEnrollChallengeStale {
		t.Errorf("late activation = %v", err)
	}
	_, err = e.client.Activate(ctx, &attest.ActivateRequest{ID: make([]byte, 16), Secret: secret})
	if reasonOf(err) != attest.ReasonEnrollChallengeGone {
		t.Errorf("unknown challenge = %v", err)
	}
}

// TestEnrollModes: without roots enrollment is off; EK allowlist mode for
// TPMs without certificates; a TPM clear (new AK, same EK) supersedes the
// old AK; an operator's revocation sticks.
func TestEnrollModes(t *testing.T) {
	ctx := context.Background()
	t.Run("disabled", func(t *testing.T) {
		_, inter := testCA(t)
		e := newEnrollEnv(t, enrollSetup{})
		e.provision(t, inter, agentside.EKECC, ekca.Options{})
		_, err := e.tpm.Enroll(ctx, e.client, agentside.EnrollOptions{})
		if reasonOf(err) != attest.ReasonEnrollModeDisabled {
			t.Errorf("Enroll without roots = %v", err)
		}
	})
	t.Run("allowlist", func(t *testing.T) {
		e := newEnrollEnv(t, enrollSetup{allowlist: [][]byte{make([]byte, 32)}})
		_, err := e.tpm.Enroll(ctx, e.client, agentside.EnrollOptions{})
		if reasonOf(err) != attest.ReasonEKCertMissing {
			t.Fatalf("Enroll of an EK not on the allowlist = %v", err)
		}
		ek, err := e.tpm.EK()
		if err != nil {
			t.Fatal(err)
		}
		d, err := enroll.EKDigest(ek.Public)
		if err != nil {
			t.Fatal(err)
		}
		e2 := newEnrollEnvSameTPM(t, e, enrollSetup{allowlist: [][]byte{d}})
		res, err := e.tpm.Enroll(ctx, e2.client, agentside.EnrollOptions{})
		if err != nil || res.Method != attest.EnrollMethodEKAllowlist {
			t.Fatalf("Enroll of an allowlisted EK = %+v, %v", res, err)
		}
	})
}

// TestEnrollAKCert: a cloud vTPM's AK certificate chaining to a configured
// AK root enrolls the AK without activation; from another CA it is refused.
func TestEnrollAKCert(t *testing.T) {
	root, _ := testCA(t)
	untrusted, err := ekca.Load(ekcaDir, "untrusted-root")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnrollEnv(t, enrollSetup{akRoots: []*x509.Certificate{root.Cert}})
	pub, err := e.tpm.AKPublic()
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *ekca.CA) []byte {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "instance-1 AK"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	ctx := context.Background()
	if _, err := e.tpm.Enroll(ctx, e.client, agentside.EnrollOptions{AKCert: issue(untrusted)}); reasonOf(err) != attest.ReasonAKCertUntrusted {
		t.Errorf("AK certificate from another CA = %v", err)
	}
	res, err := e.tpm.Enroll(ctx, e.client, agentside.EnrollOptions{AKCert: issue(root)})
	if err != nil || res.Method != attest.EnrollMethodAKCert {
		t.Fatalf("Enroll with an AK certificate = %+v, %v", res, err)
	}
	attestOnce(t, e, bootLog)
}

// newEnrollEnvSameTPM is a second verifier for the TPM of e.
func newEnrollEnvSameTPM(t testing.TB, e *enrollEnv, s enrollSetup) *enrollEnv {
	t.Helper()
	refs, err := firmwarerefs.Load()
	if err != nil {
		t.Fatal(err)
	}
	eo := enroll.Options{}
	if s.allowlist != nil {
		eo.EKAllowlist = map[[32]byte]bool{}
		for _, d := range s.allowlist {
			eo.EKAllowlist[[32]byte(d)] = true
		}
	}
	srv, err := verifier.New(context.Background(), verifier.Config{DataDir: filepath.Join(t.TempDir(), "v2"), Refs: verifier.NewRefHolder(refs),
		Logger: slog.New(slog.DiscardHandler), Enrollment: eo})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	cl, err := agentside.NewClient(hs.URL, hs.Client())
	if err != nil {
		t.Fatal(err)
	}
	return &enrollEnv{srv: srv, client: cl, tpm: e.tpm}
}
