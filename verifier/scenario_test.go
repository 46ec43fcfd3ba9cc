package verifier_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/internal/testenv"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/monitor"
	"github.com/vouch-dev/vouch/verifier/store"
)

// swtpmMachine is a second machine: swtpm (libtpms) on loopback, with a
// state directory that survives restarts (same EK, same AK), so it can be
// "rebooted" into another workload.
type swtpmMachine struct {
	t     *testing.T
	state string
	tpm   *testenv.SWTPM
}

func newSWTPMMachine(t *testing.T) *swtpmMachine {
	return &swtpmMachine{t: t, state: t.TempDir()}
}

// boot (re)starts swtpm, replays the firmware log and measures img.
func (m *swtpmMachine) boot(ctx context.Context, img agentside.Workload) (*agentside.TPM, *agentside.Agent) {
	t := m.t
	m.stop()
	m.tpm = testenv.StartSWTPM(t, m.state)
	tpm, err := agentside.Open(ctx, m.tpm.Spec, agentside.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tpm, bootAndMeasure(t, tpm, img)
}

func (m *swtpmMachine) stop() {
	if m.tpm != nil {
		m.tpm.Stop()
		m.tpm = nil
	}
}

// badImage is an image no reference value allows.
var badImage = agentside.Workload{
	ImageRef:    "ghcr.io/vouch-dev/demo-agent:tampered",
	ImageDigest: "sha256:" + fmt.Sprintf("%x", sha256.Sum256([]byte("not the image you reviewed"))),
}

// scenarioConfig is the monitor configuration of the scenario: the built-in
// rules with windows short enough for a test that lasts seconds.
const scenarioConfig = `
detectors:
  rate:
    window: 250ms
    warmup_windows: 4
    cohort_min_agents: 1
    z: 5
    min_events: 15
intents:
  summarize-documents: ["GET /documents/*"]
reporters:
  - audience: https://docs.example
    token_sha256: %s
`

// rp is the relying party of the scenario: the attest middleware following
// the revocation feed and reporting every request to the verifier.
type rp struct {
	url     string
	feed    *attest.RevocationFeed
	learned chan attest.RevocationEntry
}

func startRP(t *testing.T, ctx context.Context, verifierURL, token string) *rp {
	t.Helper()
	r := &rp{learned: make(chan attest.RevocationEntry, 1024)}
	var err error
	r.feed, err = attest.NewRevocationFeed(attest.RevocationFeedOptions{URL: verifierURL, OnUpdate: func(es []attest.RevocationEntry) {
		for _, e := range es {
			r.learned <- e
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := attest.NewReporter(attest.ReporterOptions{URL: verifierURL, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	go r.feed.Run(ctx)
	go rep.Run(ctx)
	keys, err := attest.NewRemoteKeys(attest.RemoteKeysOptions{URL: verifierURL})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.url = "http://" + ln.Addr().String()
	mw, err := attest.NewMiddleware(attest.MiddlewareOptions{Keys: keys, Credential: attest.CredentialOptions{Audience: []string{request.Audience}},
		Origin: r.url, Revoked: r.feed.Revoked, Report: rep.Report})
	if err != nil {
		t.Fatal(err)
	}
	hs := &httptest.Server{Listener: ln, Config: &http.Server{Handler: mw(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok")
	}))}}
	hs.Start()
	t.Cleanup(hs.Close)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := r.feed.WaitSynced(wctx); err != nil {
		t.Fatal(err)
	}
	return r
}

// caller makes requests as one agent with its credential.
type caller struct {
	hc   *http.Client
	cred atomic.Pointer[[]byte]
}

func newCaller(agent *agentside.Agent, cred []byte) *caller {
	c := &caller{}
	c.cred.Store(&cred)
	c.hc = &http.Client{Timeout: 10 * time.Second, Transport: &agentside.Transport{
		Credential: func() []byte { return *c.cred.Load() }, Key: agent.Signer()}}
	return c
}

func (c *caller) do(t *testing.T, method, url string) (int, attest.Reason) {
	req, _ := http.NewRequest(method, url, nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
		return 0, ""
	}
	return resp.StatusCode, problemReasonOf(resp)
}

func problemReasonOf(resp *http.Response) attest.Reason {
	defer resp.Body.Close()
	if resp.StatusCode < 300 {
		io.Copy(io.Discard, resp.Body)
		return ""
	}
	return attest.ReasonOf(attest.ReadProblem(resp))
}

func akDigest(t *testing.T, a *agentside.Agent) []byte {
	spki, err := x509.MarshalPKIXPublicKey(a.AKPublic())
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(spki)
	return d[:]
}

// TestMisbehavingAgentScenario is the acceptance scenario of continuous
// monitoring. A well-behaved agent (machine A: the TPM simulator) and a
// misbehaving one (machine B: swtpm) run the same image against a relying
// party that follows the revocation feed and reports to the verifier:
//
//  1. B bursts requests: detected against the cohort baseline, its
//     credential revoked and refused at the relying party;
//  2. B re-attests and acts outside its declared intent: detected (critical
//     with the burst), the agent revoked and its workload quarantined;
//  3. B's machine comes back with a changed image: the re-attestation
//     failure is detected and the machine quarantined, so that even the
//     original image is refused there.
//
// The good agent keeps calling throughout and must never be flagged nor
// refused. Delays are measured and logged, never asserted.
func TestMisbehavingAgentScenario(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	machineB := newSWTPMMachine(t)
	t.Cleanup(machineB.stop)
	token := "scenario-reporter-token"
	sum := sha256.Sum256([]byte(token))
	cfg, err := monitor.ParseConfig([]byte(fmt.Sprintf(scenarioConfig, hex.EncodeToString(sum[:]))))
	if err != nil {
		t.Fatal(err)
	}
	type raised struct {
		alert monitor.Alert
		at    time.Time
	}
	alerts := make(chan raised, 64)
	refs, err := firmwarerefs.Load()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := verifier.New(ctx, verifier.Config{DataDir: t.TempDir(), Refs: verifier.NewRefHolder(refs), Monitor: cfg,
		Logger:  slog.New(slog.DiscardHandler),
		OnAlert: func(a monitor.Alert) { alerts <- raised{a, time.Now()} }})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	defer cancel() // first: end the relying party's stream before closing the server
	client, err := agentside.NewClient(hs.URL, hs.Client())
	if err != nil {
		t.Fatal(err)
	}
	party := startRP(t, ctx, hs.URL, token)
	// Each agent acts under its own delegation of the intent the monitor
	// knows (blocking the misbehaving agent's must not touch the good
	// one's); this relying party checks scopes offline and reports what it
	// served.
	if err := srv.Store().AddUser(ctx, store.User{ID: "alice", PublicKey: []byte("alice: created in the store, never signs here"), CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	requestFor := func(id string) *attest.Request {
		dlg := store.Delegation{ID: id, User: "alice", Intent: "summarize-documents", Status: store.DelegationActive,
			DelegationSpec: store.DelegationSpec{ImageDigests: []string{demoImage.ImageDigest}, Resources: []string{`Document::"*"`, `Summary::"*"`}},
			CreatedAt:      time.Now(), ExpiresAt: time.Now().Add(time.Hour)}
		if err := srv.Store().CreateDelegation(ctx, dlg); err != nil {
			t.Fatal(err)
		}
		return &attest.Request{Audience: request.Audience, Intent: "summarize-documents", Resources: []string{`Document::"customer-A/*"`}, Delegation: id}
	}
	goodReq, req := requestFor("dlg_good"), requestFor("dlg_rogue")
	enroll := func(a *agentside.Agent) {
		spki, _ := x509.MarshalPKIXPublicKey(a.AKPublic())
		d := sha256.Sum256(spki)
		if err := srv.Store().Enroll(ctx, store.Enrollment{AKDigest: d[:], AKPublic: spki, Method: "operator", EnrolledBy: "test", EnrolledAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}

	// Machine A, the good agent: one request every 40 ms until the end.
	tpmA, err := agentside.Open(ctx, agentside.SpecSimulator, agentside.OpenOptions{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpmA.Close() })
	good := bootAndMeasure(t, tpmA, demoImage)
	t.Cleanup(func() { good.Close() })
	enroll(good)
	goodCred, err := good.AttestIssued(ctx, client, goodReq)
	if err != nil {
		t.Fatal(err)
	}
	goodCaller := newCaller(good, goodCred.Credential)
	goodClaims, err := attest.VerifyCredential(goodCred.Credential, srv.Keys().KeySet(), attest.CredentialOptions{Audience: []string{req.Audience}})
	if err != nil {
		t.Fatal(err)
	}
	goodSub := goodClaims.Subject
	var goodOK, goodRefused atomic.Int64
	stopGood := make(chan struct{})
	var goodDone sync.WaitGroup
	goodDone.Add(1)
	stopGoodOnce := sync.OnceFunc(func() { close(stopGood); goodDone.Wait() })
	// A failing step ends the test early: the good agent must stop
	// before the test does (a goroutine may not report after it).
	t.Cleanup(stopGoodOnce)
	go func() {
		defer goodDone.Done()
		for i := 0; ; i++ {
			select {
			case <-stopGood:
				return
			case <-time.After(40 * time.Millisecond):
			}
			if code, reason := goodCaller.do(t, http.MethodGet, fmt.Sprintf("%s/documents/customer-A/report-%d", party.url, i)); code == http.StatusOK {
				goodOK.Add(1)
			} else {
				goodRefused.Add(1)
				t.Errorf("the good agent was refused: %d %s", code, reason)
			}
		}
	}()
	time.Sleep(1500 * time.Millisecond) // the good agent sets the cohort's baseline

	// Machine B, the misbehaving agent, starts like the good one.
	_, bad := machineB.boot(ctx, demoImage)
	enroll(bad)
	badCred, err := bad.AttestIssued(ctx, client, req)
	if err != nil {
		t.Fatal(err)
	}
	badCaller := newCaller(bad, badCred.Credential)
	for i := range 10 {
		if code, reason := badCaller.do(t, http.MethodGet, fmt.Sprintf("%s/documents/customer-B/report-%d", party.url, i)); code != http.StatusOK {
			t.Fatalf("B before misbehaving: %d %s", code, reason)
		}
		time.Sleep(40 * time.Millisecond)
	}

	waitAlert := func(rule string) raised {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case r := <-alerts:
				if r.alert.Agent.ID == goodSub {
					t.Errorf("the good agent was flagged: %+v", r.alert)
				}
				if last := r.alert.Signals[len(r.alert.Signals)-1]; last.Rule == rule {
					t.Logf("alert %s %s (score %.1f) on %.40s…: %s; actions %+v", r.alert.Severity, rule, r.alert.Score, r.alert.Agent.ID, last.Detail, r.alert.Actions)
					return r
				}
			case <-timeout:
				t.Fatalf("no %s alert", rule)
			}
		}
	}
	// waitRefused sends requests until the relying party refuses with reason.
	waitRefused := func(c *caller, reason attest.Reason) time.Time {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for i := 0; time.Now().Before(deadline); i++ {
			code, got := c.do(t, http.MethodGet, fmt.Sprintf("%s/documents/customer-B/check-%d", party.url, i))
			if code != http.StatusOK {
				if got != reason {
					t.Fatalf("refused with %d %s, want %s", code, got, reason)
				}
				return time.Now()
			}
		}
		t.Fatalf("never refused with %s", reason)
		return time.Time{}
	}

	// Phase 1: a burst, four requests at a time.
	burstStart := time.Now()
	var burstDone atomic.Bool
	var burst sync.WaitGroup
	for w := range 4 {
		burst.Add(1)
		go func() {
			defer burst.Done()
			for i := 0; !burstDone.Load() && i < 2000; i++ {
				badCaller.do(t, http.MethodGet, fmt.Sprintf("%s/documents/customer-B/bulk-%d-%d", party.url, w, i))
			}
		}()
	}
	r1 := waitAlert(monitor.RuleRate)
	refusedAt := waitRefused(badCaller, attest.ReasonCredentialRevoked)
	burstDone.Store(true)
	burst.Wait()
	if !r1.alert.HasAction(monitor.ActionReattest) {
		t.Errorf("burst: want require-reattestation, got %+v", r1.alert.Actions)
	}
	t.Logf("phase 1 (burst): detected %v after the burst began; revoked → refused at the relying party %v (including one request)",
		r1.at.Sub(burstStart).Round(time.Millisecond), refusedAt.Sub(r1.at).Round(time.Microsecond))

	// Phase 2: re-attest, then act outside the declared intent.
	badCred, err = bad.AttestIssued(ctx, client, req)
	if err != nil {
		t.Fatalf("re-attestation after require-reattestation: %v", err)
	}
	badCaller.cred.Store(&badCred.Credential)
	phase2 := time.Now()
	for i := range 3 {
		if code, reason := badCaller.do(t, http.MethodDelete, fmt.Sprintf("%s/documents/customer-A/report-%d", party.url, i)); code != http.StatusOK {
			t.Fatalf("out-of-intent request %d refused before detection: %d %s", i, code, reason)
		}
	}
	r2 := waitAlert(monitor.RuleOutOfIntent)
	refusedAt = waitRefused(badCaller, attest.ReasonCredentialRevoked)
	if r2.alert.Severity != monitor.SeverityCritical || !r2.alert.HasAction(monitor.ActionRevoke) || !r2.alert.HasAction(monitor.ActionQuarantine) {
		t.Errorf("out of intent: want critical with revoke and quarantine, got %s %+v", r2.alert.Severity, r2.alert.Actions)
	}
	if _, err := bad.AttestIssued(ctx, client, req); attest.ReasonOf(err) != attest.ReasonAgentRevoked {
		t.Errorf("the revoked agent attesting again: %v, want %s", err, attest.ReasonAgentRevoked)
	}
	t.Logf("phase 2 (out of intent): detected %v after the first out-of-intent request; revoked → refused %v",
		r2.at.Sub(phase2).Round(time.Millisecond), refusedAt.Sub(r2.at).Round(time.Microsecond))

	// Phase 3: machine B reboots into another image.
	bad.Close()
	_, changed := machineB.boot(ctx, badImage)
	if _, err := changed.AttestIssued(ctx, client, req); attest.ReasonOf(err) != attest.ReasonRefsImageDigest {
		t.Fatalf("changed image: %v, want %s", err, attest.ReasonRefsImageDigest)
	}
	r3 := waitAlert(monitor.RuleReattestFailure)
	if !r3.alert.HasAction(monitor.ActionQuarantine) {
		t.Errorf("changed measurement: want quarantine, got %+v", r3.alert.Actions)
	}
	changed.Close()
	_, again := machineB.boot(ctx, demoImage)
	defer again.Close()
	if _, err := again.AttestIssued(ctx, client, req); attest.ReasonOf(err) != attest.ReasonAgentQuarantined {
		t.Errorf("machine B with the good image after quarantine: %v, want %s", err, attest.ReasonAgentQuarantined)
	}
	qs, err := srv.Store().Quarantines(ctx, store.QuarantineFilter{AKDigest: akDigest(t, again), ActiveOnly: true})
	if err != nil || len(qs) == 0 {
		t.Fatalf("machine B's quarantines: %v %v", qs, err)
	}

	// The good agent was never flagged, refused or held.
	stopGoodOnce()
	if q, _ := srv.Store().ActiveQuarantine(ctx, goodSub, akDigest(t, good), demoImage.ImageDigest); q != nil {
		t.Errorf("the good agent is quarantined: %+v", q)
	}
	if _, err := good.AttestIssued(ctx, client, goodReq); err != nil {
		t.Errorf("the good agent attesting at the end: %v", err)
	}
	all, _ := srv.Store().Alerts(ctx, "", nil, 100)
	falsePositives := 0
	for _, a := range all {
		if a.Subject == goodSub {
			falsePositives++
		}
	}
	if falsePositives != 0 || goodRefused.Load() != 0 {
		t.Errorf("good agent: %d alerts, %d refusals", falsePositives, goodRefused.Load())
	}
	t.Logf("good agent: %d requests served, %d refused, %d alerts; misbehaving machine: %d alerts, %d quarantines in force",
		goodOK.Load(), goodRefused.Load(), falsePositives, len(all)-falsePositives, len(qs))
}
