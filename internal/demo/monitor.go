package demo

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/access"
	"github.com/vouch-dev/vouch/verifier/monitor"
)

// monitorConfig is the demo's monitoring configuration: the built-in rules,
// with a rate cap that a few seconds of demo can show (there is no time to
// learn baselines), and the relying party as a reporter. The actions each
// intent declares come from the authorization policy's intent catalogue,
// with every decision of /v1/authorize.
func monitorConfig(token string) (*monitor.Config, error) {
	sum := sha256.Sum256([]byte(token))
	return monitor.ParseConfig([]byte(fmt.Sprintf(`
detectors:
  rate:
    window: 1s
    burst_max: 40
reporters:
  - audience: %s
    token_sha256: %s
`, Audience, hex.EncodeToString(sum[:]))))
}

// RogueResources are what alice delegates to the second agent.
var RogueResources = []string{`Document::"customer-B/*"`, `Summary::"customer-B/*"`}

// delegateRogue makes the delegation the second agent acts under: the same
// intent, on customer B's documents.
func (r *run) delegateRogue(ctx context.Context, alice *access.Client) (string, error) {
	d, err := alice.CreateDelegation(ctx, &access.DelegationRequest{
		Intent: Intent, ImageDigests: []string{Image.ImageDigest}, Resources: RogueResources,
		ExpiresAt: time.Now().Add(time.Hour),
	})
	if err != nil {
		return "", fmt.Errorf("delegating to the second agent: %w", err)
	}
	return d.ID, nil
}

func newToken() string {
	b := make([]byte, 24)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// AlertSummary is one alert the monitor raised during the demo.
type AlertSummary struct {
	Agent    string   `json:"agent_id"`
	Severity string   `json:"severity"`
	Rules    []string `json:"rules"`
	Actions  []string `json:"actions"`
	Detail   string   `json:"detail"`
}

type timedAlert struct {
	alert monitor.Alert
	at    time.Time
}

func (r *run) onAlert(a monitor.Alert) {
	select {
	case r.alerts <- timedAlert{a, time.Now()}:
	default:
	}
}

// waitAlert waits for an alert on agent (any agent when "") whose newest
// signal is rule, and records it in the summary.
func (r *run) waitAlert(ctx context.Context, agent, rule string) (timedAlert, error) {
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case ta := <-r.alerts:
			a := ta.alert
			var acts []string
			for _, x := range a.Actions {
				if x.Outcome == "done" {
					acts = append(acts, string(x.Action))
				}
			}
			last := a.Signals[len(a.Signals)-1]
			r.sum.Alerts = append(r.sum.Alerts, AlertSummary{Agent: a.Agent.ID, Severity: string(a.Severity), Rules: a.Rules, Actions: acts, Detail: last.Detail})
			if (agent == "" || a.Agent.ID == agent) && last.Rule == rule {
				return ta, nil
			}
		case <-timeout.C:
			return timedAlert{}, fmt.Errorf("the monitor raised no %s alert", rule)
		case <-ctx.Done():
			return timedAlert{}, ctx.Err()
		}
	}
}

// untilRefused calls the relying party until it refuses, and returns the
// status, reason and time of the refusal.
func untilRefused(ctx context.Context, hc *http.Client, url string) (int, attest.Reason, time.Time, error) {
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s-%d", url, i), nil)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, "", time.Time{}, err
		}
		if code, reason := resp.StatusCode, problemReason(resp); code != http.StatusOK {
			return code, reason, time.Now(), nil
		}
	}
	return http.StatusOK, "", time.Now(), nil
}

func agentClient(agent *agentside.Agent, cred *[]byte) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &agentside.Transport{Credential: func() []byte { return *cred }, Key: agent.Signer()}}
}

// theftAnswered shows the monitor's answer to the replayed proof and the
// stolen credential: it revoked the good agent's credential, which the real
// agent now sees refused (it re-attests for a fresh one).
func (r *run) theftAnswered(ctx context.Context, hc *http.Client, rpURL, sub string) {
	start := time.Now()
	ta, err := r.waitAlert(ctx, sub, monitor.RulePoPTheft)
	if err != nil {
		r.step("theft", false, "", start, "%v", err)
		return
	}
	code, reason, at, err := untilRefused(ctx, hc, rpURL+"/documents/customer-A/report-8")
	if err != nil {
		r.step("theft", false, "", start, "%v", err)
		return
	}
	r.step("theft", code == http.StatusUnauthorized && reason == attest.ReasonCredentialRevoked, reason, start,
		"the monitor saw the credential used without its key (%s alert) and revoked it; the relying party refused it %v later → %d %s",
		ta.alert.Severity, at.Sub(ta.at).Round(time.Millisecond), code, reason)
}

// rogueAgent runs an agent that misbehaves: a burst of requests, then
// actions outside its declared intent. The monitor detects both, revokes
// its credentials (refused at the relying party), revokes the agent and
// quarantines its workload.
func (r *run) rogueAgent(ctx context.Context, client *agentside.Client, stateDir, rpURL, dlgID string) error {
	start := time.Now()
	tpm, agent, err := bootAgent(ctx, stateDir, Image)
	if err != nil {
		return err
	}
	defer tpm.Close()
	defer agent.Close()
	req := &attest.Request{Audience: Audience, Intent: Intent, Resources: RogueResources, Delegation: dlgID}
	issued, err := agent.AttestIssued(ctx, client, req)
	if err != nil {
		return fmt.Errorf("the rogue agent was refused: %w", err)
	}
	cred := issued.Credential
	hc := agentClient(agent, &cred)

	// A burst.
	n := 0
	code, reason := http.StatusOK, attest.Reason("")
	var refusedAt time.Time
	for ; n < 400 && code == http.StatusOK; n++ {
		resp, err := hc.Get(fmt.Sprintf("%s/documents/customer-B/bulk-%d", rpURL, n))
		if err != nil {
			return err
		}
		code, reason, refusedAt = resp.StatusCode, problemReason(resp), time.Now()
	}
	ta, err := r.waitAlert(ctx, "", monitor.RuleRate)
	if err != nil {
		r.step("burst", false, "", start, "%v", err)
		return nil
	}
	sub := ta.alert.Agent.ID
	r.sum.RevocationToRefusal = refusedAt.Sub(ta.alert.Time)
	r.step("burst", reason == attest.ReasonCredentialRevoked, reason, start,
		"a second agent fires %d requests in %v → %s alert (%s); credential revoked, refused at the relying party %v later → %d %s",
		n, time.Since(start).Round(time.Millisecond), ta.alert.Severity, monitor.RuleRate, refusedAt.Sub(ta.alert.Time).Round(time.Millisecond), code, reason)

	// Out of intent.
	start = time.Now()
	issued, err = agent.AttestIssued(ctx, client, req)
	if err != nil {
		r.step("intent", false, attest.ReasonOf(err), start, "re-attesting after the revocation was refused: %v", err)
		return nil
	}
	cred = issued.Credential
	for i := range 3 {
		del, _ := http.NewRequestWithContext(ctx, http.MethodDelete, fmt.Sprintf("%s/documents/customer-A/report-%d", rpURL, i), nil)
		resp, err := hc.Do(del)
		if err != nil {
			return err
		}
		problemReason(resp)
	}
	ta, err = r.waitAlert(ctx, sub, monitor.RuleOutOfIntent)
	if err != nil {
		r.step("intent", false, "", start, "%v", err)
		return nil
	}
	code, reason, _, err = untilRefused(ctx, hc, rpURL+"/documents/customer-B/after")
	if err != nil {
		return err
	}
	ok := ta.alert.HasAction(monitor.ActionQuarantine) && reason == attest.ReasonCredentialRevoked
	r.step("intent", ok, reason, start, "it re-attests, then deletes 3 documents, outside its intent %q → %s alert: agent revoked, workload quarantined (%s) → %d %s",
		Intent, ta.alert.Severity, strings.Join(ta.alert.Rules, " + "), code, reason)
	r.sum.Quarantined = ta.alert.HasAction(monitor.ActionQuarantine)

	// Quarantined: neither the instance nor a fresh one gets credentials.
	start = time.Now()
	_, err1 := agent.Attest(ctx, client, req)
	fresh, err := agentside.NewAgent(tpm)
	if err != nil {
		return err
	}
	defer fresh.Close()
	_, err2 := fresh.Attest(ctx, client, req)
	r1, r2 := attest.ReasonOf(err1), attest.ReasonOf(err2)
	r.step("quarantine", r1 == attest.ReasonAgentRevoked && r2 == attest.ReasonAgentQuarantined, r2, start,
		"it attests again → %s; a fresh instance (new key) of the same image on that machine → %s, until `vouch agents release`", r1, r2)
	return nil
}

// machineQuarantined waits for the monitor's answer to the bad image: a
// re-attestation failure with a changed measurement quarantines the machine.
func (r *run) machineQuarantined(ctx context.Context) {
	start := time.Now()
	ta, err := r.waitAlert(ctx, "", monitor.RuleReattestFailure)
	if err != nil {
		r.step("machine", false, "", start, "%v", err)
		return
	}
	r.step("machine", ta.alert.HasAction(monitor.ActionQuarantine), "", start,
		"the changed measurement after good attestations → %s %s alert: the whole machine is quarantined",
		ta.alert.Severity, monitor.RuleReattestFailure)
}
