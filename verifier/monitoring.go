package verifier

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/access"
	"github.com/vouch-dev/vouch/verifier/appraisal"
	"github.com/vouch-dev/vouch/verifier/monitor"
	"github.com/vouch-dev/vouch/verifier/store"
)

// Monitor returns the server's behaviour monitor: authorization decisions
// are fed to it with Monitor().Observe.
func (s *Server) Monitor() *monitor.Monitor { return s.monitor }

// observeAttestation feeds an attestation outcome to the monitor.
func (s *Server) observeAttestation(ctx context.Context, out *appraisal.Outcome, err error) {
	sig := monitor.Signal{Kind: monitor.KindAttestation, Time: s.cfg.Now(), Outcome: monitor.OutcomeIssued}
	if err != nil {
		sig.Outcome, sig.Reason = monitor.OutcomeRefused, attest.ReasonOf(err)
	}
	if out != nil {
		if out.AK != nil {
			sig.AK = out.AK.Digest
		}
		if out.AgentKey != nil {
			sig.Agent = out.AgentKey.Subject
		}
		if out.Workload != nil {
			sig.Image = out.Workload.ImageDigest
			if err == nil {
				sig.Cohort = sig.Image
			}
		}
		if out.Request != nil {
			sig.Intent, sig.Delegation = out.Request.Intent, out.Request.Delegation
		}
		sig.Measurement = measurement(out)
	}
	s.monitor.Observe(ctx, sig)
}

// measurement summarises the verified platform and workload state: the
// SHA-256 of the quoted PCR values in index order (PCR 13 holds the image),
// or the image digest alone when the quote did not verify.
func measurement(out *appraisal.Outcome) string {
	if out.Quote != nil && len(out.Quote.PCRs) > 0 {
		idx := make([]int, 0, len(out.Quote.PCRs))
		for i := range out.Quote.PCRs {
			idx = append(idx, i)
		}
		slices.Sort(idx)
		h := sha256.New()
		for _, i := range idx {
			fmt.Fprintf(h, "%d:", i)
			h.Write(out.Quote.PCRs[i])
		}
		return "pcrs:" + hex.EncodeToString(h.Sum(nil)[:16])
	}
	if out.Workload != nil {
		return "image:" + out.Workload.ImageDigest
	}
	return ""
}

// held refuses issuance to an agent that was revoked, or whose instance,
// workload or machine is quarantined.
func (s *Server) held(ctx context.Context, out *appraisal.Outcome) error {
	return s.heldIdentity(ctx, out.AgentKey.Subject, out.AK.Digest, out.Workload.ImageDigest)
}

// revoked is called after this process stored revocations: decisions stop
// trusting cached "not revoked" answers at once, and the feed tells relying
// parties.
func (s *Server) revoked() {
	s.access.RevocationsChanged()
	s.feed.notify()
}

// heldIdentity refuses an agent instance that was revoked, or an agent,
// workload (AK and image) or machine (AK) that is quarantined.
func (s *Server) heldIdentity(ctx context.Context, sub string, akDigest []byte, img string) error {
	if r, err := s.store.AgentRevoked(ctx, sub); err != nil {
		return unavailable(err)
	} else if r != nil {
		return attest.Errorf(attest.ReasonAgentRevoked, "agent %s was revoked at %s (%s); start a fresh agent instance",
			sub, r.RevokedAt.Format(time.RFC3339), r.Reason)
	}
	q, err := s.store.ActiveQuarantine(ctx, sub, akDigest, img)
	if err != nil {
		return unavailable(err)
	}
	if q != nil {
		what := map[string]string{
			store.QuarantineAgent:    "this agent",
			store.QuarantineWorkload: "image " + q.ImageDigest + " on this machine",
			store.QuarantineMachine:  "this machine (AK " + hex.EncodeToString(q.AKDigest[:8]) + "…)",
		}[q.Scope]
		return attest.Errorf(attest.ReasonAgentQuarantined, "%s is quarantined (quarantine %d, %s, since %s, by %s): an operator must release it with `vouch agents release`",
			what, q.ID, q.Reason, q.QuarantinedAt.Format(time.RFC3339), q.QuarantinedBy)
	}
	return nil
}

// maxSignalsBody bounds a POST /v1/signals body.
const maxSignalsBody = 2 << 20

// reportedCredential is what the verifier knows of a reported credential.
type reportedCredential struct {
	sub, aud, image, intent, delegation string
	ak                                  []byte
}

func newCredentialCache() *lru.Cache[string, reportedCredential] {
	c, _ := lru.New[string, reportedCredential](65536)
	return c
}

// handleSignals takes a relying party's batch of request reports. The
// reporter authenticates with a bearer token whose SHA-256 the monitor
// configuration lists with the audience it may report on; each report must
// name a credential this verifier issued for that audience, and the
// verifier takes the agent, machine, image and intent from its own record
// of it, not from the report.
func (s *Server) handleSignals(w http.ResponseWriter, r *http.Request) error {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	aud := ""
	if ok {
		aud = s.monitor.Config().ReporterAudience(strings.TrimSpace(token))
	}
	if aud == "" {
		return attest.Errorf(attest.ReasonReporterUnknown, "send \"Authorization: Bearer <token>\" with a token listed (as its SHA-256) in the verifier's monitor configuration, reporters")
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return attest.Errorf(attest.ReasonUnsupportedMediaType, "send reports as application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxSignalsBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return attest.Errorf(attest.ReasonRequestTooLarge, "a report batch is at most %d bytes", maxSignalsBody)
		}
		return attest.Errorf(attest.ReasonRequestMalformed, "reading reports: %w", err)
	}
	batch, err := DecodeReportBatch(body)
	if err != nil {
		return err
	}
	accepted, unknown := 0, 0
	for i := range batch.Reports {
		rep := &batch.Reports[i]
		c, err := s.reportedCredential(r.Context(), rep.CTI)
		if err != nil {
			return err
		}
		if c == nil || c.aud != aud || (rep.Subject != "" && rep.Subject != c.sub) {
			unknown++
			continue
		}
		sig := monitor.Signal{
			Kind: monitor.KindRequest, Time: rep.Time, Agent: c.sub, AK: c.ak, Cohort: c.image,
			Outcome: rep.Outcome, Reason: rep.Reason, Action: rep.Method + " " + rep.Path, Resource: rep.Path,
			Intent: c.intent, Delegation: c.delegation, SourceIP: rep.SourceIP, CredentialID: rep.CTI,
		}
		if now := s.cfg.Now(); sig.Time.After(now) || now.Sub(sig.Time) > time.Hour {
			sig.Time = now // the relying party's clock is not trusted beyond reason
		}
		if sig.Outcome == monitor.OutcomeRefused {
			sig.Action = "" // a refused request did nothing
		}
		s.monitor.Observe(r.Context(), sig)
		accepted++
	}
	if unknown > 0 {
		s.log.WarnContext(r.Context(), "reports about credentials this reporter may not report on were ignored", "audience", aud, "ignored", unknown)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	return json.NewEncoder(w).Encode(map[string]int{"accepted": accepted, "ignored": unknown})
}

// DecodeReportBatch decodes and checks a POST /v1/signals body.
func DecodeReportBatch(body []byte) (*attest.ReportBatch, error) {
	var batch attest.ReportBatch
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&batch); err != nil {
		return nil, attest.Errorf(attest.ReasonRequestMalformed, "the body is not a report batch: %v", err)
	}
	if dec.More() {
		return nil, attest.Errorf(attest.ReasonRequestMalformed, "trailing data after the report batch")
	}
	if len(batch.Reports) > attest.MaxReportBatch {
		return nil, attest.Errorf(attest.ReasonRequestTooLarge, "a batch holds at most %d reports", attest.MaxReportBatch)
	}
	for i, rep := range batch.Reports {
		switch {
		case len(rep.CTI) != attest.CredentialIDSize:
			return nil, attest.Errorf(attest.ReasonRequestMalformed, "report %d: cti must be %d bytes", i, attest.CredentialIDSize)
		case rep.Outcome != attest.ReportAccepted && rep.Outcome != attest.ReportRefused:
			return nil, attest.Errorf(attest.ReasonRequestMalformed, "report %d: outcome must be accepted or refused", i)
		case len(rep.Method) > 16 || len(rep.Path) > 2048 || len(rep.Reason) > 64 || len(rep.SourceIP) > 64 || len(rep.Subject) > 256:
			return nil, attest.Errorf(attest.ReasonRequestMalformed, "report %d: a field is longer than allowed", i)
		}
	}
	return &batch, nil
}

func (s *Server) reportedCredential(ctx context.Context, cti []byte) (*reportedCredential, error) {
	if c, ok := s.credCache.Get(string(cti)); ok {
		if c.sub == "" {
			return nil, nil
		}
		return &c, nil
	}
	rec, err := s.store.CredentialByID(ctx, cti)
	if errors.Is(err, store.ErrNotFound) {
		s.credCache.Add(string(cti), reportedCredential{}) // not ours: remember that too
		return nil, nil
	}
	if err != nil {
		return nil, unavailable(err)
	}
	c := reportedCredential{sub: rec.Subject, aud: rec.Audience, image: rec.ImageDigest, intent: rec.Intent, delegation: rec.Delegation, ak: rec.AKDigest}
	s.credCache.Add(string(cti), c)
	return &c, nil
}

// observeDecision feeds one authorization decision to the monitor.
func (s *Server) observeDecision(ctx context.Context, d access.Decided) {
	c := d.Claims
	sig := monitor.Signal{
		Kind: monitor.KindDecision, Time: d.Time, Agent: c.Subject, Cohort: d.ImageDigest,
		Outcome: monitor.OutcomePermit, Reason: d.Reason, Action: d.Action, Resource: d.Resource,
		Intent: c.Intent, DeclaredActions: d.DeclaredActions, Delegation: c.Delegation,
		SourceIP: d.SourceIP, CredentialID: c.ID,
	}
	if !d.Permit {
		sig.Outcome = monitor.OutcomeDeny
	}
	if rc, err := s.reportedCredential(ctx, c.ID); err == nil && rc != nil {
		sig.AK = rc.ak
		if sig.Cohort == "" {
			sig.Cohort = rc.image
		}
	}
	s.monitor.Observe(ctx, sig)
}
