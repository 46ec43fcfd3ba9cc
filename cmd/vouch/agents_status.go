package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/verifier/monitor"
	"github.com/vouch-dev/vouch/verifier/store"
)

// machineStatus is one enrolled machine (AK) as `vouch agents list` shows it.
type machineStatus struct {
	AK              string     `json:"ak_digest"`
	Name            string     `json:"name,omitempty"`
	Method          string     `json:"method"`
	EnrolledBy      string     `json:"enrolled_by"`
	EnrolledAt      time.Time  `json:"enrolled_at"`
	Trust           string     `json:"trust"` // trusted, revoked, quarantined
	RevokedAt       *time.Time `json:"revoked_at,omitempty"`
	RevokedBy       string     `json:"revoked_by,omitempty"`
	RevokeReason    string     `json:"revoke_reason,omitempty"`
	EK              string     `json:"ek_digest,omitempty"`
	Detail          string     `json:"detail,omitempty"` // enrollment detail (EK certificate chain, quirks)
	LastAttestation *agentView `json:"last_attestation,omitempty"`
	Agents          int        `json:"agents_seen"`
	Alerts          int        `json:"alerts"`
	Quarantines     []qView    `json:"quarantines,omitempty"` // in force
}

type agentView struct {
	ID       string    `json:"agent_id"`
	Image    string    `json:"image,omitempty"`
	At       time.Time `json:"at"`
	Outcome  string    `json:"outcome"`
	Reason   string    `json:"reason,omitempty"`
	Revoked  bool      `json:"revoked,omitempty"`
	Held     string    `json:"quarantined,omitempty"`
	FirstSee time.Time `json:"first_seen"`
}

type qView struct {
	ID         int64      `json:"id"`
	Scope      string     `json:"scope"`
	Agent      string     `json:"agent_id,omitempty"`
	Image      string     `json:"image,omitempty"`
	Reason     string     `json:"reason"`
	By         string     `json:"by"`
	Alert      string     `json:"alert,omitempty"`
	At         time.Time  `json:"at"`
	ReleasedAt *time.Time `json:"released_at,omitempty"`
	ReleasedBy string     `json:"released_by,omitempty"`
	Note       string     `json:"release_note,omitempty"`
}

func viewQuarantine(q store.Quarantine) qView {
	return qView{q.ID, q.Scope, q.Subject, q.ImageDigest, q.Reason, q.QuarantinedBy, q.AlertID, q.QuarantinedAt, q.ReleasedAt, q.ReleasedBy, q.ReleaseNote}
}

// machineStatuses builds the status of every enrolled machine.
func machineStatuses(ctx context.Context, st *store.Store) ([]machineStatus, error) {
	list, err := st.Enrollments(ctx)
	if err != nil {
		return nil, err
	}
	counts, err := st.AlertCountsByAK(ctx)
	if err != nil {
		return nil, err
	}
	out := []machineStatus{}
	for _, e := range list {
		m := machineStatus{AK: hex.EncodeToString(e.AKDigest), Name: e.Name, Method: e.Method, EnrolledBy: e.EnrolledBy,
			EnrolledAt: e.EnrolledAt, Trust: "trusted", RevokedAt: e.RevokedAt, RevokedBy: e.RevokedBy, RevokeReason: e.RevokeReason,
			EK: hex.EncodeToString(e.EKDigest), Detail: e.Detail, Alerts: counts[string(e.AKDigest)]}
		agents, err := st.AgentsSeen(ctx, e.AKDigest, 1000)
		if err != nil {
			return nil, err
		}
		m.Agents = len(agents)
		if len(agents) > 0 {
			a := agents[0]
			m.LastAttestation = &agentView{ID: a.Subject, Image: a.ImageDigest, At: a.LastAttested, Outcome: a.LastOutcome, Reason: a.LastReason, FirstSee: a.FirstSeen}
		}
		qs, err := st.Quarantines(ctx, store.QuarantineFilter{AKDigest: e.AKDigest, ActiveOnly: true})
		if err != nil {
			return nil, err
		}
		for _, q := range qs {
			m.Quarantines = append(m.Quarantines, viewQuarantine(q))
		}
		switch {
		case !e.Active():
			m.Trust = "revoked"
		case len(qs) > 0:
			m.Trust = "quarantined"
		}
		out = append(out, m)
	}
	return out, nil
}

func printMachines(w io.Writer, ms []machineStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AK\tTRUST\tNAME\tLAST ATTESTATION\tIMAGE\tAGENTS\tALERTS\tENROLLED")
	for _, m := range ms {
		trust := m.Trust
		if len(m.Quarantines) > 0 {
			scopes := map[string]bool{}
			for _, q := range m.Quarantines {
				scopes[q.Scope] = true
			}
			if scopes[store.QuarantineMachine] {
				trust += " (machine)"
			} else {
				trust += " (workload)"
			}
		}
		last, image := "never", ""
		if a := m.LastAttestation; a != nil {
			last = a.At.Local().Format(time.DateTime) + " " + a.Outcome
			if a.Reason != "" {
				last += " (" + a.Reason + ")"
			}
			image = shorten(a.Image, 19)
		}
		fmt.Fprintf(tw, "%.16s\t%s\t%s\t%s\t%s\t%d\t%d\t%s %s\n", m.AK, trust, m.Name, last, image, m.Agents, m.Alerts,
			m.EnrolledAt.Local().Format(time.DateOnly), m.Method)
	}
	return tw.Flush()
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func newAgentsShowCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show AK-DIGEST-PREFIX | AGENT-ID",
		Short: "Show a machine or an agent: trust, attestations, alerts, quarantines, revocations",
		Long: `show prints what the verifier knows of one machine (named by a prefix of its AK
digest, as "vouch agents list" prints it) or one agent instance (its id, the
credential sub "urn:ietf:params:oauth:ckt:sha-256:…"): enrollment and trust,
the agents seen attesting on it with their last attestation, the monitor's
alerts with the signals that raised them, quarantines (in force and
released) and revocations.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			d, err := describe(cmd.Context(), st, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), d)
			}
			return printDescription(cmd.OutOrStdout(), d)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// description is `vouch agents show`.
type description struct {
	Machine     *machineStatus     `json:"machine,omitempty"`
	Agents      []agentView        `json:"agents"`
	Alerts      []json.RawMessage  `json:"alerts"`
	Quarantines []qView            `json:"quarantines"`
	Revocations []store.Revocation `json:"revocations"`
}

func describe(ctx context.Context, st *store.Store, arg string) (*description, error) {
	d := &description{Agents: []agentView{}, Alerts: []json.RawMessage{}, Quarantines: []qView{}, Revocations: []store.Revocation{}}
	var ak []byte
	sub := ""
	if strings.HasPrefix(arg, "urn:") {
		a, err := st.AgentSeenBySubject(ctx, arg)
		if err != nil {
			return nil, fmt.Errorf("agent %s: %w (the verifier has not seen it attest)", arg, err)
		}
		sub, ak = arg, a.AKDigest
	} else {
		found, err := st.FindEnrollments(ctx, arg)
		if err != nil {
			return nil, err
		}
		if len(found) != 1 {
			return nil, fmt.Errorf("%d enrolled AKs start with %s; give more digits", len(found), arg)
		}
		ak = found[0].AKDigest
	}
	ms, err := machineStatuses(ctx, st)
	if err != nil {
		return nil, err
	}
	for i := range ms {
		if ms[i].AK == hex.EncodeToString(ak) {
			d.Machine = &ms[i]
		}
	}
	agents, err := st.AgentsSeen(ctx, ak, 1000)
	if err != nil {
		return nil, err
	}
	for _, a := range agents {
		if sub != "" && a.Subject != sub {
			continue
		}
		v := agentView{ID: a.Subject, Image: a.ImageDigest, At: a.LastAttested, Outcome: a.LastOutcome, Reason: a.LastReason, FirstSee: a.FirstSeen}
		if r, _ := st.AgentRevoked(ctx, a.Subject); r != nil {
			v.Revoked = true
		}
		if q, _ := st.ActiveQuarantine(ctx, a.Subject, a.AKDigest, a.ImageDigest); q != nil {
			v.Held = fmt.Sprintf("%s #%d", q.Scope, q.ID)
		}
		d.Agents = append(d.Agents, v)
	}
	alerts, err := st.Alerts(ctx, sub, ak, 50)
	if err != nil {
		return nil, err
	}
	for _, a := range alerts {
		d.Alerts = append(d.Alerts, json.RawMessage(a.Body))
	}
	f := store.QuarantineFilter{AKDigest: ak}
	if sub != "" {
		f = store.QuarantineFilter{Subject: sub}
	}
	qs, err := st.Quarantines(ctx, f)
	if err != nil {
		return nil, err
	}
	for _, q := range qs {
		d.Quarantines = append(d.Quarantines, viewQuarantine(q))
	}
	if d.Revocations, err = st.RevocationsOf(ctx, sub, ak, 50); err != nil {
		return nil, err
	}
	if d.Revocations == nil {
		d.Revocations = []store.Revocation{}
	}
	return d, nil
}

func printDescription(w io.Writer, d *description) error {
	if m := d.Machine; m != nil {
		fmt.Fprintf(w, "machine  AK %s (%s)\n", m.AK, m.Name)
		fmt.Fprintf(w, "trust    %s; enrolled %s by %s (%s)\n", m.Trust, m.EnrolledAt.Local().Format(time.DateTime), m.EnrolledBy, m.Method)
		if m.RevokedAt != nil {
			fmt.Fprintf(w, "         enrollment revoked %s by %s: %s\n", m.RevokedAt.Local().Format(time.DateTime), m.RevokedBy, m.RevokeReason)
		}
	}
	fmt.Fprintf(w, "\nagents (%d)\n", len(d.Agents))
	for _, a := range d.Agents {
		state := "ok"
		switch {
		case a.Revoked:
			state = "revoked"
		case a.Held != "":
			state = "quarantined (" + a.Held + ")"
		}
		last := a.Outcome
		if a.Reason != "" {
			last += " (" + a.Reason + ")"
		}
		fmt.Fprintf(w, "  %s\n    %s; last attestation %s %s; image %s\n", a.ID, state, a.At.Local().Format(time.DateTime), last, a.Image)
	}
	fmt.Fprintf(w, "\nalerts (%d)\n", len(d.Alerts))
	for _, raw := range d.Alerts {
		var a monitor.Alert
		if json.Unmarshal(raw, &a) != nil {
			continue
		}
		fmt.Fprintf(w, "  %s %-8s score %5.1f  %s  agent %.48s\n", a.Time.Local().Format(time.DateTime), a.Severity, a.Score, strings.Join(a.Rules, ","), a.Agent.ID)
		for _, s := range a.Signals {
			fmt.Fprintf(w, "      %s: %s\n", s.Rule, s.Detail)
		}
		var acts []string
		for _, r := range a.Actions {
			acts = append(acts, string(r.Action)+"="+r.Outcome)
		}
		fmt.Fprintf(w, "      response: %s\n", strings.Join(acts, " "))
	}
	fmt.Fprintf(w, "\nquarantines (%d)\n", len(d.Quarantines))
	for _, q := range d.Quarantines {
		state := "IN FORCE"
		if q.ReleasedAt != nil {
			state = fmt.Sprintf("released %s by %s (%s)", q.ReleasedAt.Local().Format(time.DateTime), q.ReleasedBy, q.Note)
		}
		target := q.Agent
		if q.Scope == store.QuarantineWorkload {
			target = q.Image
		} else if q.Scope == store.QuarantineMachine {
			target = "the whole machine"
		}
		fmt.Fprintf(w, "  #%d %-8s %s  since %s by %s: %s — %s\n", q.ID, q.Scope, target, q.At.Local().Format(time.DateTime), q.By, q.Reason, state)
	}
	fmt.Fprintf(w, "\nrevocations (%d)\n", len(d.Revocations))
	for _, r := range d.Revocations {
		what := "agent " + r.Subject
		if r.Kind == store.RevokeCredential {
			what = fmt.Sprintf("credential %x", r.CTI)
		}
		fmt.Fprintf(w, "  %s  %s by %s: %s\n", r.RevokedAt.Local().Format(time.DateTime), what, r.RevokedBy, r.Reason)
	}
	return nil
}

func newAgentsReleaseCmd() *cobra.Command {
	var note string
	cmd := &cobra.Command{
		Use:   "release AK-DIGEST-PREFIX | AGENT-ID --note TEXT",
		Short: "Release quarantines, so that the verifier issues credentials again",
		Long: `release ends the quarantines in force on a machine (named by a prefix of its
AK digest: every quarantine of that machine, of its workloads and of the agents
seen on it) or on one agent instance (its id: the agent's own quarantine and
that of its workload on its machine). The release is recorded with your name
and note, and vouchd writes it to the audit log.

An agent instance that was revoked (reason agent-revoked) stays revoked: its
key is burnt. Start a fresh instance once the machine is trusted again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			ctx := cmd.Context()
			var qs []store.Quarantine
			if strings.HasPrefix(args[0], "urn:") {
				a, err := st.AgentSeenBySubject(ctx, args[0])
				if err != nil {
					return fmt.Errorf("agent %s: %w", args[0], err)
				}
				own, err := st.Quarantines(ctx, store.QuarantineFilter{Subject: a.Subject, ActiveOnly: true})
				if err != nil {
					return err
				}
				qs = append(qs, own...)
				if q, err := st.ActiveQuarantine(ctx, "", a.AKDigest, a.ImageDigest); err == nil && q != nil && q.Scope == store.QuarantineWorkload {
					qs = append(qs, *q)
				}
			} else {
				found, err := st.FindEnrollments(ctx, args[0])
				if err != nil {
					return err
				}
				if len(found) != 1 {
					return fmt.Errorf("%d enrolled AKs start with %s; give more digits", len(found), args[0])
				}
				if qs, err = st.Quarantines(ctx, store.QuarantineFilter{AKDigest: found[0].AKDigest, ActiveOnly: true}); err != nil {
					return err
				}
				agents, err := st.AgentsSeen(ctx, found[0].AKDigest, 10000)
				if err != nil {
					return err
				}
				for _, a := range agents {
					own, err := st.Quarantines(ctx, store.QuarantineFilter{Subject: a.Subject, ActiveOnly: true})
					if err != nil {
						return err
					}
					qs = append(qs, own...)
				}
			}
			if len(qs) == 0 {
				return fmt.Errorf("no quarantine in force on %s", args[0])
			}
			ids := make([]int64, 0, len(qs))
			for _, q := range qs {
				ids = append(ids, q.ID)
			}
			n, err := st.ReleaseQuarantines(ctx, ids, operator(), note, time.Now())
			if err != nil {
				return err
			}
			for _, q := range qs {
				fmt.Fprintf(cmd.OutOrStdout(), "released quarantine #%d (%s)\n", q.ID, q.Scope)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d quarantines released; vouchd records the release in the audit log\n", n)
			return nil
		},
	}
	cmd.Flags().StringVar(&note, "note", "", "why the machine is trusted again (recorded; required)")
	cmd.MarkFlagRequired("note")
	return cmd
}
