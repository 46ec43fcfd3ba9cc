// Package demo runs the whole Vouch flow on one machine with no setup, for
// `vouch demo`: a verifier on loopback, an agent on the in-process TPM
// simulator booted from a real recorded firmware log, a relying party that
// demands credentials and proofs of possession, and the refusals an attacker
// meets. Every part is the real one; only the TPM is simulated.
package demo

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/access"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/store"
)

// BootLog is the real firmware event log the demo boots its simulated TPM
// from: a RHEL 8 UEFI machine with secure boot on. It is a copy of
// testdata/eventlogs/rhel8-uefi.bin (see testdata/README.md for its source
// and licence); a test keeps the two identical.
//
//go:embed rhel8-uefi.bin
var BootLog []byte

// Image is the workload the demo agent runs; the built-in reference set
// allows it.
var Image = agentside.Workload{
	ImageRef:    "ghcr.io/vouch-dev/demo-agent:v1",
	ImageDigest: "sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d",
}

// BadImage is an image no reference value allows.
var BadImage = agentside.Workload{
	ImageRef:    "ghcr.io/vouch-dev/demo-agent:tampered",
	ImageDigest: "sha256:" + fmt.Sprintf("%x", sha256.Sum256([]byte("not the image you reviewed"))),
}

// Audience is the relying party of the demo.
const Audience = "https://docs.demo.vouch"

// Options configure Run.
type Options struct {
	// DataDir keeps the verifier's data directory; empty means a temporary
	// one, removed at the end.
	DataDir string
	// Out receives the human narration; nil discards it.
	Out io.Writer
	// Logger receives the services' structured logs; nil discards them.
	Logger *slog.Logger
}

// Step is one thing the demo did and what came of it.
type Step struct {
	Name    string        `json:"name"`
	OK      bool          `json:"ok"` // the outcome the demo expects (a refusal is OK when it is the point)
	Outcome string        `json:"outcome"`
	Reason  attest.Reason `json:"reason,omitempty"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Summary is what Run reports.
type Summary struct {
	VerifierURL string `json:"verifier_url"`
	DataDir     string `json:"data_dir"`
	Kept        bool   `json:"data_dir_kept"`
	RefSetID    string `json:"reference_set"`
	AKDigest    string `json:"ak_digest"`
	Subject     string `json:"agent_id"`
	Delegation  string `json:"delegation"`
	Credential  int    `json:"credential_bytes"`
	// AuditRecords is the number of records in the verifier's audit log.
	AuditRecords uint64        `json:"audit_records"`
	Steps        []Step        `json:"steps"`
	Elapsed      time.Duration `json:"elapsed_ns"`
	// Alerts the monitor raised, RevocationToRefusal the time from the
	// burst alert (credential revoked) to the relying party refusing it,
	// and Quarantined whether the misbehaving agent was quarantined.
	Alerts              []AlertSummary `json:"alerts"`
	RevocationToRefusal time.Duration  `json:"revocation_to_refusal_ns"`
	Quarantined         bool           `json:"quarantined"`
}

// OK reports whether every step had the expected outcome.
func (s *Summary) OK() bool {
	for _, st := range s.Steps {
		if !st.OK {
			return false
		}
	}
	return len(s.Steps) > 0
}

type run struct {
	opts    Options
	out     io.Writer
	log     *slog.Logger
	sum     *Summary
	started time.Time
	alerts  chan timedAlert
}

func (r *run) say(format string, args ...any) { fmt.Fprintf(r.out, format+"\n", args...) }

func (r *run) step(name string, ok bool, reason attest.Reason, start time.Time, format string, args ...any) {
	st := Step{Name: name, OK: ok, Reason: reason, Outcome: fmt.Sprintf(format, args...), Elapsed: time.Since(start)}
	r.sum.Steps = append(r.sum.Steps, st)
	mark := "✓"
	if !ok {
		mark = "✗"
	}
	r.say("  %s %-12s %s", mark, name, st.Outcome)
}

// Run runs the demo. It returns an error only when the demo could not run;
// a step with an unexpected outcome is reported in the summary.
func Run(ctx context.Context, opts Options) (*Summary, error) {
	r := &run{opts: opts, out: opts.Out, log: opts.Logger, sum: &Summary{Alerts: []AlertSummary{}}, started: time.Now(), alerts: make(chan timedAlert, 64)}
	if r.out == nil {
		r.out = io.Discard
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	dir := opts.DataDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "vouch-demo-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else {
		r.sum.Kept = true
	}
	r.sum.DataDir = dir
	err := r.run(ctx, dir)
	r.sum.Elapsed = time.Since(r.started)
	return r.sum, err
}

func (r *run) run(ctx context.Context, dir string) error {
	r.say("Vouch demo: a verifier, a TPM-backed agent and a relying party, all on this machine over loopback.")
	r.say("The TPM is the in-process simulator (development only); everything else is the real thing.\n")

	// The verifier.
	refs, err := firmwarerefs.Load()
	if err != nil {
		return err
	}
	token := newToken()
	monCfg, err := monitorConfig(token)
	if err != nil {
		return err
	}
	srv, err := verifier.New(ctx, verifier.Config{DataDir: dir, Refs: verifier.NewRefHolder(refs), Logger: r.log.With("service", "vouchd"), Issuer: "vouchd-demo",
		Monitor: monCfg, OnAlert: r.onAlert})
	if err != nil {
		return err
	}
	defer srv.Close()
	vURL, stopV, err := serve(ctx, srv.Handler())
	if err != nil {
		return err
	}
	defer stopV()
	r.sum.VerifierURL, r.sum.RefSetID = vURL, refs.ID()
	r.say("verifier      %s  (data %s, reference set %.19s…)", vURL, dir, refs.ID())
	alice, dlgID, err := r.delegate(ctx, srv, vURL)
	if err != nil {
		return err
	}
	r.sum.Delegation = dlgID

	// The relying party; its revocation follower and reporter stop first.
	rpCtx, stopFeed := context.WithCancel(ctx)
	rpURL, stopRP, err := r.startRelyingParty(rpCtx, vURL, token)
	if err != nil {
		stopFeed()
		return err
	}
	defer stopRP()
	defer stopFeed()
	r.say("relying party %s  (audience %s: asks the verifier to decide every request, follows the revocation feed,\n              reports refusals to the verifier's monitor)\n", rpURL, Audience)

	client, err := agentside.NewClient(vURL, nil)
	if err != nil {
		return err
	}
	stateDir, err := os.MkdirTemp("", "vouch-demo-tpm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stateDir)

	cred, err := r.goodAgent(ctx, srv, client, stateDir, rpURL, alice, dlgID)
	if err != nil {
		return err
	}
	r.sum.Credential = len(cred)
	rogueDlg, err := r.delegateRogue(ctx, alice)
	if err != nil {
		return err
	}
	if err := r.rogueAgent(ctx, client, stateDir, rpURL, rogueDlg); err != nil {
		return err
	}
	if err := r.badAgent(ctx, client, stateDir); err != nil {
		return err
	}
	r.machineQuarantined(ctx)
	stopFeed()
	stopV()
	if err := srv.Close(); err != nil {
		return err
	}
	return r.audit(ctx, dir)
}

// goodAgent boots the simulator, measures the allowed image, enrolls the AK,
// attests and calls the relying party; then shows a replayed proof and a
// stolen credential being refused.
func (r *run) goodAgent(ctx context.Context, srv *verifier.Server, client *agentside.Client, stateDir, rpURL string, alice *access.Client, dlgID string) ([]byte, error) {
	start := time.Now()
	tpm, agent, err := bootAgent(ctx, stateDir, Image)
	if err != nil {
		return nil, err
	}
	defer tpm.Close()
	defer agent.Close()
	r.step("boot", true, "", start, "simulated TPM booted from a real RHEL 8 UEFI firmware log (secure boot on); workload %s measured into PCR 13", Image.ImageRef)

	start = time.Now()
	spki, err := x509.MarshalPKIXPublicKey(agent.AKPublic())
	if err != nil {
		return nil, err
	}
	d := sha256.Sum256(spki)
	if err := srv.Store().Enroll(ctx, store.Enrollment{AKDigest: d[:], AKPublic: spki, Method: "operator", Name: "demo host", EnrolledBy: "vouch demo", EnrolledAt: time.Now()}); err != nil && !errors.Is(err, store.ErrExists) {
		return nil, err
	}
	if _, err := srv.Record(ctx, &audit.Record{Kind: audit.KindEnrollment, Outcome: "enrolled", User: "vouch demo", Agent: &audit.Agent{AKDigest: d[:]}, Detail: map[string]string{"method": "operator", "name": "demo host"}}); err != nil {
		return nil, err
	}
	r.sum.AKDigest = fmt.Sprintf("%x", d)
	r.step("enroll", true, "", start, "AK %x… enrolled by the operator", d[:8])

	start = time.Now()
	issued, err := agent.AttestIssued(ctx, client, &attest.Request{Audience: Audience, Intent: Intent, Resources: Delegated, Delegation: dlgID})
	if err != nil {
		r.step("attest", false, attest.ReasonOf(err), start, "refused: %v", err)
		return nil, fmt.Errorf("the good agent was refused: %w", err)
	}
	keys, err := fetchKeys(ctx, client.Base()+"/v1/keys")
	if err != nil {
		return nil, err
	}
	claims, err := attest.VerifyCredential(issued.Credential, keys, attest.CredentialOptions{Audience: []string{Audience}})
	if err != nil {
		return nil, fmt.Errorf("verifying the issued credential: %w", err)
	}
	r.sum.Subject = claims.Subject
	tpmA, wl := claims.Submods[attest.SubmodTPM], claims.Submods[attest.SubmodWorkload]
	r.step("attest", true, "", start, "credential issued (%d bytes, valid %ds): platform %s %s, workload %s",
		len(issued.Credential), claims.Expiry-claims.IssuedAt, tpmA.Claims.Platform, tpmA.Status, wl.Status)
	r.say("               agent id %s", claims.Subject)
	r.say("               scope %s", strings.Join(claims.Scope, ", "))

	// Calls to the relying party with credential and proofs of possession.
	spy := &headerSpy{base: http.DefaultTransport}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &agentside.Transport{
		Base:       spy,
		Credential: func() []byte { return issued.Credential },
		Key:        agent.Signer(),
	}}
	start = time.Now()
	resp, err := hc.Get(rpURL + "/documents/customer-A/report-7")
	if err != nil {
		return nil, err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	r.step("call", resp.StatusCode == http.StatusOK, "", start, "GET /documents/customer-A/report-7 with credential and proof of possession → %d %s", resp.StatusCode, bytes.TrimSpace(body))

	start = time.Now()
	code, reason, err := send(ctx, spy.last)
	if err != nil {
		return nil, err
	}
	r.step("replay", code == http.StatusUnauthorized && reason == attest.ReasonPoPReplayed, reason, start, "the same request, proof and all, sent again → %d %s", code, reason)

	start = time.Now()
	thief, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	stolen := &http.Client{Timeout: 10 * time.Second, Transport: &agentside.Transport{Credential: func() []byte { return issued.Credential }, Key: thief}}
	resp, err = stolen.Get(rpURL + "/documents/customer-A/report-7")
	if err != nil {
		return nil, err
	}
	reason = problemReason(resp)
	r.step("stolen", resp.StatusCode == http.StatusUnauthorized && reason == attest.ReasonPoPSignature, reason, start, "the credential replayed from another machine, proof signed with its key → %d %s", resp.StatusCode, reason)
	r.theftAnswered(ctx, hc, rpURL, claims.Subject)
	// The monitor revoked that credential; the agent restarts with a fresh
	// key and attests again before the authorization steps.
	fresh, err := agentside.NewAgent(tpm)
	if err != nil {
		return nil, err
	}
	defer fresh.Close()
	again, err := fresh.AttestIssued(ctx, client, &attest.Request{Audience: Audience, Intent: Intent, Resources: Delegated, Delegation: dlgID})
	if err != nil {
		return nil, fmt.Errorf("the good agent was refused after restarting: %w", err)
	}
	return again.Credential, r.authzSteps(ctx, client, again.Credential, fresh, rpURL, alice, dlgID)
}

// badAgent reboots the simulator and measures an image no reference allows.
func (r *run) badAgent(ctx context.Context, client *agentside.Client, stateDir string) error {
	start := time.Now()
	tpm, agent, err := bootAgent(ctx, stateDir, BadImage)
	if err != nil {
		return err
	}
	defer tpm.Close()
	defer agent.Close()
	_, err = agent.Attest(ctx, client, &attest.Request{Audience: Audience})
	reason := attest.ReasonOf(err)
	detail := "issued a credential (it should not have)"
	if err != nil {
		detail = "refused: " + err.Error()
	}
	r.step("bad image", reason == attest.ReasonRefsImageDigest, reason, start, "same machine, rebooted to run %s → %s", BadImage.ImageRef, detail)
	return nil
}

func bootAgent(ctx context.Context, stateDir string, img agentside.Workload) (*agentside.TPM, *agentside.Agent, error) {
	tpm, err := agentside.Open(ctx, agentside.SpecSimulator, agentside.OpenOptions{StateDir: stateDir})
	if err != nil {
		return nil, nil, err
	}
	if err := tpm.Boot(BootLog); err != nil {
		tpm.Close()
		return nil, nil, err
	}
	if err := tpm.MeasureWorkload(img); err != nil {
		tpm.Close()
		return nil, nil, err
	}
	agent, err := agentside.NewAgent(tpm)
	if err != nil {
		tpm.Close()
		return nil, nil, err
	}
	return tpm, agent, nil
}

// startRelyingParty serves a small document store that demands Vouch
// credentials for Audience and proofs of possession.
func (r *run) startRelyingParty(ctx context.Context, verifierURL, token string) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	origin := "http://" + ln.Addr().String()
	keys, err := attest.NewRemoteKeys(attest.RemoteKeysOptions{URL: verifierURL + "/v1/keys"})
	if err != nil {
		ln.Close()
		return "", nil, err
	}
	decide, err := attest.NewRemoteAuthorizer(attest.RemoteAuthorizerOptions{
		Verifier: verifierURL, Origin: origin, Audience: Audience, Map: docsMapper,
	})
	if err != nil {
		ln.Close()
		return "", nil, err
	}
	feed, err := attest.NewRevocationFeed(attest.RevocationFeedOptions{URL: verifierURL, Logger: r.log.With("service", "relying-party")})
	if err != nil {
		ln.Close()
		return "", nil, err
	}
	reporter, err := attest.NewReporter(attest.ReporterOptions{URL: verifierURL, Token: token, Interval: 20 * time.Millisecond})
	if err != nil {
		ln.Close()
		return "", nil, err
	}
	go feed.Run(ctx)
	go reporter.Run(ctx)
	synced, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := feed.WaitSynced(synced); err != nil {
		ln.Close()
		return "", nil, fmt.Errorf("relying party: revocation feed: %w", err)
	}
	mw, err := attest.NewMiddleware(attest.MiddlewareOptions{
		Keys:       keys,
		Credential: attest.CredentialOptions{Audience: []string{Audience}},
		Origin:     origin,
		Authorize:  decide,
		Logger:     r.log.With("service", "relying-party"),
		Revoked:    feed.Revoked,
		// The verifier sees every request this relying party accepts as an
		// authorization decision; reporting them too would count them twice.
		Report: func(rep attest.RequestReport) {
			if rep.Outcome == attest.ReportRefused {
				reporter.Report(rep)
			}
		},
	})
	if err != nil {
		ln.Close()
		return "", nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /documents/{tenant}/{doc}", func(w http.ResponseWriter, req *http.Request) {
		c, _ := attest.ClaimsFromContext(req.Context())
		fmt.Fprintf(w, "document %s/%s, served to %.40s…\n", req.PathValue("tenant"), req.PathValue("doc"), c.Subject)
	})
	docsHandlers(mux)
	stop := serveListener(ctx, ln, mw(mux))
	return origin, stop, nil
}

func serve(ctx context.Context, h http.Handler) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	return "http://" + ln.Addr().String(), serveListener(ctx, ln, h), nil
}

func serveListener(ctx context.Context, ln net.Listener, h http.Handler) func() {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}
}

func fetchKeys(ctx context.Context, url string) (*attest.KeySet, error) {
	k, err := attest.NewRemoteKeys(attest.RemoteKeysOptions{URL: url})
	if err != nil {
		return nil, err
	}
	return k.KeySet(ctx)
}

// headerSpy sits under the Vouch transport and sees the request with its
// Authorization and Vouch-PoP headers.
type headerSpy struct {
	base http.RoundTripper
	last *http.Request
}

func (s *headerSpy) RoundTrip(req *http.Request) (*http.Response, error) {
	s.last = req.Clone(req.Context())
	return s.base.RoundTrip(req)
}

// send replays a captured request and returns the status and reason.
func send(ctx context.Context, captured *http.Request) (int, attest.Reason, error) {
	if captured == nil {
		return 0, "", errors.New("no request captured")
	}
	req, err := http.NewRequestWithContext(ctx, captured.Method, captured.URL.String(), nil)
	if err != nil {
		return 0, "", err
	}
	req.Header = captured.Header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	return resp.StatusCode, problemReason(resp), nil
}

func problemReason(resp *http.Response) attest.Reason {
	defer resp.Body.Close()
	if resp.StatusCode < 300 {
		io.Copy(io.Discard, resp.Body)
		return ""
	}
	return attest.ReasonOf(attest.ReadProblem(resp))
}
