package verifier_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-eventlog/cel"
	pb "github.com/google/go-tpm-tools/proto/attest"
	"google.golang.org/protobuf/proto"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/internal/tamper"
	"github.com/vouch-dev/vouch/verifier/store"
)

// demoImage is the image the built-in reference set allows.
var demoImage = agentside.Workload{
	ImageRef:    "ghcr.io/vouch-dev/demo-agent:v1",
	ImageDigest: "sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d",
}

const bootLog = "../testdata/eventlogs/rhel8-uefi.bin"

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type env struct {
	srv    *verifier.Server
	http   *httptest.Server
	client *agentside.Client
	clock  *clock
	tpm    *agentside.TPM
	agent  *agentside.Agent
}

// newEnv starts a verifier on loopback and an agent on the simulator booted
// from a real RHEL 8 firmware log, measuring img. The AK is enrolled unless
// enroll is false.
func newEnv(t testing.TB, img agentside.Workload, enroll bool, mods ...func(*verifier.Config)) *env {
	t.Helper()
	ctx := context.Background()
	refs, err := firmwarerefs.Load()
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	cfg := verifier.Config{DataDir: t.TempDir(), Refs: verifier.NewRefHolder(refs), Now: clk.Now, Logger: slog.New(slog.DiscardHandler)}
	for _, m := range mods {
		m(&cfg)
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
	tpm, err := agentside.Open(ctx, agentside.SpecSimulator, agentside.OpenOptions{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	agent := bootAndMeasure(t, tpm, img)
	t.Cleanup(func() { agent.Close() })
	e := &env{srv: srv, http: hs, client: cl, clock: clk, tpm: tpm, agent: agent}
	if enroll {
		e.enroll(t)
	}
	return e
}

func (e *env) enroll(t testing.TB) {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(e.agent.AKPublic())
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(spki)
	if err := e.srv.Store().Enroll(context.Background(), store.Enrollment{AKDigest: d[:], AKPublic: spki, Method: "operator", EnrolledBy: "test", EnrolledAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

var request = &attest.Request{Audience: "https://docs.example"}

// noRateLimits is a newEnv option for tests and benchmarks that attest far
// faster from their one loopback address than the default per-client limit
// (10 requests a second, bursts of 20) allows. The limits have their own
// tests (ratelimit_test.go).
func noRateLimits(c *verifier.Config) { c.RateLimits = verifier.NoRateLimits() }

// evidence returns fresh evidence for a new challenge.
func (e *env) evidence(t *testing.T) *attest.Evidence {
	t.Helper()
	ch, err := e.client.Challenge(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ev, err := e.agent.Evidence(ch.Nonce, request)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// post sends raw evidence and returns the credential or the refusal.
func (e *env) post(t *testing.T, contentType string, body []byte) ([]byte, error) {
	t.Helper()
	resp, err := e.http.Client().Post(e.http.URL+"/v1/attest", contentType, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, attest.ReadProblem(resp)
	}
	return io.ReadAll(resp.Body)
}

func (e *env) postEvidence(t *testing.T, ev *attest.Evidence) ([]byte, error) {
	t.Helper()
	b, err := attest.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return e.post(t, attest.EvidenceMediaType, b)
}

func (e *env) keys(t *testing.T) *attest.KeySet {
	t.Helper()
	resp, err := e.http.Client().Get(e.http.URL + "/v1/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != attest.KeySetMediaType {
		t.Fatalf("/v1/keys Content-Type = %q", ct)
	}
	b, _ := io.ReadAll(resp.Body)
	ks, err := attest.DecodeKeySet(b)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func TestAttestIssuesCredential(t *testing.T) {
	e := newEnv(t, demoImage, true)
	cred, err := e.agent.Attest(context.Background(), e.client, request)
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	claims, err := attest.VerifyCredential(cred, e.keys(t), attest.CredentialOptions{Audience: []string{request.Audience}, Now: e.clock.Now})
	if err != nil {
		t.Fatalf("VerifyCredential: %v", err)
	}
	ck, err := attest.PublicCOSEKey(e.agent.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	wantSub, _ := attest.SubjectOf(ck)
	if claims.Subject != wantSub {
		t.Errorf("sub = %s, want the agent key's thumbprint %s", claims.Subject, wantSub)
	}
	if got := claims.Expiry - claims.IssuedAt; got != 60 {
		t.Errorf("lifetime = %ds, want 60", got)
	}
	tpmA, wl := claims.Submods[attest.SubmodTPM], claims.Submods[attest.SubmodWorkload]
	if tpmA.Status != attest.StatusAffirming || wl.Status != attest.StatusAffirming {
		t.Fatalf("statuses tpm=%v workload=%v, want affirming", tpmA.Status, wl.Status)
	}
	if tpmA.Claims.Platform != "rhel8-uefi" || !*tpmA.Claims.SecureBoot {
		t.Errorf("tpm claims = %+v", tpmA.Claims)
	}
	if fmt.Sprintf("sha256:%x", wl.Claims.ImageDigest.Value) != demoImage.ImageDigest || wl.Claims.ImageRef != demoImage.ImageRef {
		t.Errorf("workload claims = %+v", wl.Claims)
	}
	refs, _ := firmwarerefs.Load()
	if tpmA.PolicyID != refs.ID() {
		t.Errorf("policy id = %s, want %s", tpmA.PolicyID, refs.ID())
	}
	rec, err := e.srv.Store().CredentialByID(context.Background(), claims.ID)
	if err != nil || rec.Subject != claims.Subject {
		t.Fatalf("issued credential not recorded: %+v, %v", rec, err)
	}
}

// TestRefusals feeds the verifier evidence an attacker could produce and
// checks each is refused with the right reason.
func TestRefusals(t *testing.T) {
	e := newEnv(t, demoImage, true, noRateLimits) // a dozen attestations within the second
	events := func(ev *attest.Evidence) (*pb.Attestation, []tamper.Event) {
		var att pb.Attestation
		if err := proto.Unmarshal(ev.TPM, &att); err != nil {
			t.Fatal(err)
		}
		evs, err := tamper.ParseLog(att.EventLog)
		if err != nil {
			t.Fatal(err)
		}
		return &att, evs
	}
	setTPM := func(ev *attest.Evidence, att *pb.Attestation) {
		b, err := proto.Marshal(att)
		if err != nil {
			t.Fatal(err)
		}
		ev.TPM = b
	}
	const (
		evSeparator      = 0x4
		evVariableConfig = 0x80000001
		evBootApp        = 0x80000003
	)
	tests := []struct {
		name   string
		mutate func(*attest.Evidence)
		want   attest.Reason
	}{
		{"nonce from nobody", func(ev *attest.Evidence) { ev.Nonce = bytes.Repeat([]byte{7}, 32) }, attest.ReasonNonceUnknown},
		{"firmware event digest byte changed", func(ev *attest.Evidence) {
			att, evs := events(ev)
			app, ok := tamper.Find(evs, 4, evBootApp)
			if !ok {
				t.Fatal("no boot application event")
			}
			att.EventLog = tamper.FlipDigestByte(att.EventLog, app)
			setTPM(ev, att)
		}, attest.ReasonEventLogReplay},
		{"firmware event data changed under its digest", func(ev *attest.Evidence) {
			att, evs := events(ev)
			sb, ok := tamper.Find(evs, 7, evVariableConfig)
			if !ok {
				t.Fatal("no secure boot variable event")
			}
			att.EventLog = tamper.FlipDataByte(att.EventLog, sb)
			setTPM(ev, att)
		}, attest.ReasonEventLogEvent},
		{"firmware event removed", func(ev *attest.Evidence) {
			att, evs := events(ev)
			sep, ok := tamper.Find(evs, 4, evSeparator)
			if !ok {
				t.Fatal("no separator")
			}
			att.EventLog = tamper.Remove(att.EventLog, sep)
			setTPM(ev, att)
		}, attest.ReasonEventLogReplay},
		{"firmware event type unknown to the parser", func(ev *attest.Evidence) {
			att, evs := events(ev)
			app, ok := tamper.Find(evs, 4, evBootApp)
			if !ok {
				t.Fatal("no boot application event")
			}
			att.EventLog = tamper.SetType(att.EventLog, app, 0x30303030)
			setTPM(ev, att)
		}, attest.ReasonEventLogMalformed},
		{"firmware log missing", func(ev *attest.Evidence) {
			att, _ := events(ev)
			att.EventLog = nil
			setTPM(ev, att)
		}, attest.ReasonEventLogMissing},
		{"CEL record content changed", func(ev *attest.Evidence) {
			att, _ := events(ev)
			log, err := cel.DecodeToCEL(bytes.NewBuffer(att.CanonicalEventLog))
			if err != nil {
				t.Fatal(err)
			}
			v := log.Records()[1].Content.Value // the image digest record
			v[len(v)-1] ^= 0x01
			var buf bytes.Buffer
			if err := log.EncodeCEL(&buf); err != nil {
				t.Fatal(err)
			}
			att.CanonicalEventLog = buf.Bytes()
			setTPM(ev, att)
		}, attest.ReasonCELRecordDigest},
		{"CEL missing", func(ev *attest.Evidence) {
			att, _ := events(ev)
			att.CanonicalEventLog = nil
			setTPM(ev, att)
		}, attest.ReasonCELMissing},
		{"quote of another nonce", func(ev *attest.Evidence) {
			att, _ := events(ev)
			other := e.evidence(t) // a real quote by the same AK, for another challenge
			var oatt pb.Attestation
			proto.Unmarshal(other.TPM, &oatt)
			att.Quotes = oatt.Quotes
			setTPM(ev, att)
		}, attest.ReasonQuoteInvalid},
		{"certify qualifyingData of another attestation", func(ev *attest.Evidence) {
			other := e.evidence(t)
			ev.CertifyInfo, ev.CertifySig = other.CertifyInfo, other.CertifySig
		}, attest.ReasonAgentKeyBinding},
		{"certify signature corrupted", func(ev *attest.Evidence) {
			ev.CertifySig = bytes.Clone(ev.CertifySig)
			ev.CertifySig[len(ev.CertifySig)-1] ^= 0x01
		}, attest.ReasonAgentKeyCertify},
		{"request changed after signing", func(ev *attest.Evidence) {
			r, _ := attest.EncodeRequest(&attest.Request{Audience: "https://elsewhere.example"})
			ev.Request = r
		}, attest.ReasonQuoteInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := e.evidence(t)
			tc.mutate(ev)
			_, err := e.postEvidence(t, ev)
			if got := attest.ReasonOf(err); got != tc.want {
				t.Fatalf("refusal = %v (reason %s), want reason %s", err, got, tc.want)
			}
			t.Logf("refused: %v", err)
		})
	}
}

func TestNonceFreshness(t *testing.T) {
	e := newEnv(t, demoImage, true)
	t.Run("replayed", func(t *testing.T) {
		ev := e.evidence(t)
		if _, err := e.postEvidence(t, ev); err != nil {
			t.Fatalf("first use: %v", err)
		}
		_, err := e.postEvidence(t, ev)
		if attest.ReasonOf(err) != attest.ReasonNonceReplayed {
			t.Fatalf("replay = %v, want nonce-replayed", err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		ev := e.evidence(t)
		e.clock.Advance(verifier.DefaultNonceTTL + time.Second)
		_, err := e.postEvidence(t, ev)
		if attest.ReasonOf(err) != attest.ReasonNonceExpired {
			t.Fatalf("late use = %v, want nonce-expired", err)
		}
	})
}

func TestUnknownAK(t *testing.T) {
	e := newEnv(t, demoImage, false)
	_, err := e.agent.Attest(context.Background(), e.client, request)
	if attest.ReasonOf(err) != attest.ReasonAKUnknown {
		t.Fatalf("unenrolled AK: %v, want ak-unknown", err)
	}
	e.enroll(t)
	spki, _ := x509.MarshalPKIXPublicKey(e.agent.AKPublic())
	d := sha256.Sum256(spki)
	if err := e.srv.Store().RevokeEnrollment(context.Background(), d[:], "test", "decommissioned", time.Now()); err != nil {
		t.Fatal(err)
	}
	_, err = e.agent.Attest(context.Background(), e.client, request)
	if attest.ReasonOf(err) != attest.ReasonAKRevoked {
		t.Fatalf("revoked AK: %v, want ak-revoked", err)
	}
}

func TestImageNotAllowed(t *testing.T) {
	img := agentside.Workload{ImageRef: "ghcr.io/vouch-dev/demo-agent:evil", ImageDigest: "sha256:" + fmt.Sprintf("%064x", 1)}
	e := newEnv(t, img, true)
	_, err := e.agent.Attest(context.Background(), e.client, request)
	if attest.ReasonOf(err) != attest.ReasonRefsImageDigest {
		t.Fatalf("unknown image: %v, want refs-image-digest", err)
	}
	var pe *attest.ProblemError
	if !errorsAs(err, &pe) || pe.Problem.Appraisal[attest.SubmodWorkload].Status != attest.StatusContraindicated {
		t.Fatalf("problem document lacks the contraindicated workload appraisal: %+v", err)
	}
}

func TestMalformedBodies(t *testing.T) {
	e := newEnv(t, demoImage, true)
	good, err := attest.Marshal(e.evidence(t))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, ct string
		body     []byte
		want     attest.Reason
	}{
		{"garbage", attest.EvidenceMediaType, []byte("not cbor at all"), attest.ReasonRequestMalformed},
		{"truncated", attest.EvidenceMediaType, good[:len(good)/2], attest.ReasonRequestMalformed},
		{"trailing bytes", attest.EvidenceMediaType, append(bytes.Clone(good), 0x00), attest.ReasonRequestMalformed},
		{"empty", attest.EvidenceMediaType, nil, attest.ReasonRequestMalformed},
		{"oversized", attest.EvidenceMediaType, bytes.Repeat([]byte{0}, attest.MaxEvidenceSize+1), attest.ReasonRequestTooLarge},
		{"wrong media type", "application/json", good, attest.ReasonUnsupportedMediaType},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.post(t, tc.ct, tc.body)
			if got := attest.ReasonOf(err); got != tc.want {
				t.Fatalf("refusal = %v, want %s", err, tc.want)
			}
		})
	}
}

func TestOperationalEndpoints(t *testing.T) {
	e := newEnv(t, demoImage, true)
	if _, err := e.agent.Attest(context.Background(), e.client, request); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  "ready",
		"/metrics": `vouch_attestations_total{outcome="issued",reason=""} 1`,
	} {
		resp, err := e.http.Client().Get(e.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Contains(b, []byte(want)) {
			t.Errorf("GET %s = %d, body lacks %q", path, resp.StatusCode, want)
		}
	}
	resp, err := e.http.Client().Get(e.http.URL + "/v1/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 || resp.Header.Get("Content-Type") != attest.ProblemMediaType {
		t.Errorf("unknown path: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func TestKeysPersistAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	refs, _ := firmwarerefs.Load()
	var kids [][]byte
	for range 2 {
		srv, err := verifier.New(context.Background(), verifier.Config{DataDir: dir, Refs: verifier.NewRefHolder(refs)})
		if err != nil {
			t.Fatal(err)
		}
		kids = append(kids, srv.Keys().KID())
		srv.Close()
	}
	if !bytes.Equal(kids[0], kids[1]) {
		t.Fatal("signing key changed across restarts")
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "keys", "issuer-*.pem"))
	st, err := os.Stat(matches[0])
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", st.Mode().Perm(), err)
	}
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// bootAndMeasure boots tpm from the RHEL 8 firmware log, measures img into
// PCR 13 and creates the agent.
func bootAndMeasure(t testing.TB, tpm *agentside.TPM, img agentside.Workload) *agentside.Agent {
	t.Helper()
	log, err := os.ReadFile(bootLog)
	if err != nil {
		t.Fatal(err)
	}
	if err := tpm.Boot(log); err != nil {
		t.Fatal(err)
	}
	if err := tpm.MeasureWorkload(img); err != nil {
		t.Fatal(err)
	}
	agent, err := agentside.NewAgent(tpm)
	if err != nil {
		t.Fatal(err)
	}
	return agent
}
