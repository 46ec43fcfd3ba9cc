package access

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/store"
)

// Decided is one authorization decision about a verified credential: what
// the behaviour monitor (package verifier/monitor) learns from each call of
// POST /v1/authorize and /v1/elevate.
type Decided struct {
	Claims      *attest.Claims // the credential the decision was about
	ImageDigest string         // its workload image
	Action      string
	Resource    string
	Permit      bool
	Reason      attest.Reason // the first reason of a deny
	// DeclaredActions are the actions the credential's intent may need,
	// standing or elevated; an action outside them is out of intent.
	DeclaredActions []string
	SourceIP        string
	Elevation       bool
	Time            time.Time
}

// decided reports a decision to Options.OnDecision, if set.
func (s *Service) decided(ctx context.Context, v *verified, action, resource string, err error, sourceIP string, elevation bool) {
	if s.opts.OnDecision == nil || v == nil {
		return
	}
	d := Decided{
		Claims: v.claims, ImageDigest: v.agent.ImageDigest, Action: action, Resource: resource,
		Permit: err == nil, SourceIP: sourceIP, Elevation: elevation, Time: s.now(),
	}
	if err != nil {
		d.Reason = attest.ReasonOf(err)
	}
	if in, ok := s.opts.Policy.Engine().Intent(v.claims.Intent); ok {
		d.DeclaredActions = append(append(d.DeclaredActions, in.Actions...), in.Elevate...)
	}
	s.opts.OnDecision(ctx, d)
}

// revocationView names the state of revocations a check was made against:
// the revocation feed's head (which the verifier re-reads from the database
// every heartbeat, so revocations by other replicas and the CLI show) and
// this process's own revocation count (bumped synchronously).
type revocationView struct{ head, local int64 }

// revocationCheck is a cached answer of CredentialRevoked.
type revocationCheck struct {
	view revocationView
	rev  *store.Revocation
}

// RevocationsChanged tells the service that this process revoked
// something: cached "not revoked" answers are stale.
func (s *Service) RevocationsChanged() { s.revLocal.Add(1) }

// checkRevoked refuses a credential that was revoked, or whose agent
// instance was: by the monitor, an operator, or its delegation's
// suspension or revocation. The database answer is cached until the
// revocation feed moves (Options.RevocationHead), so that a credential used
// at request rate costs one lookup per revocation, not one per decision.
func (s *Service) checkRevoked(ctx context.Context, c *attest.Claims) error {
	var view revocationView
	cacheable := s.opts.RevocationHead != nil
	if cacheable {
		view = revocationView{head: s.opts.RevocationHead(), local: s.revLocal.Load()}
		if e, ok := s.revChecks.Get(string(c.ID)); ok && e.view == view {
			return revokedError(c, e.rev)
		}
	}
	r, err := s.opts.Store.CredentialRevoked(ctx, c.ID, c.Subject)
	if err != nil {
		return unavailable(err)
	}
	if cacheable {
		s.revChecks.Add(string(c.ID), revocationCheck{view: view, rev: r})
	}
	return revokedError(c, r)
}

func revokedError(c *attest.Claims, r *store.Revocation) error {
	if r == nil {
		return nil
	}
	if r.Kind == store.RevokeAgent {
		return attest.Errorf(attest.ReasonAgentRevoked, "agent %s was revoked at %s (%s); start a fresh agent instance", c.Subject, r.RevokedAt.Format(time.RFC3339), r.Reason)
	}
	return attest.Errorf(attest.ReasonCredentialRevoked, "credential %x was revoked at %s (%s); attest again for a new one", c.ID, r.RevokedAt.Format(time.RFC3339), r.Reason)
}

// revokeDelegated revokes every live credential issued under a delegation
// that was suspended or revoked, and tells the revocation feed.
func (s *Service) revokeDelegated(ctx context.Context, delegation, status, by string, at time.Time) (int, error) {
	rs, err := s.opts.Store.RevokeCredentialsOfDelegation(ctx, delegation, store.Revocation{
		Reason: fmt.Sprintf("delegation %s %s", delegation, status), RevokedBy: by, RevokedAt: at,
	})
	if err != nil {
		return 0, unavailable(err)
	}
	if len(rs) > 0 {
		s.RevocationsChanged()
		if s.opts.OnRevoked != nil {
			s.opts.OnRevoked()
		}
	}
	return len(rs), nil
}

// BlockDelegation suspends a delegation on the behaviour monitor's word
// (monitor.DelegationBlocker): no decision permits under it any more, its
// live credentials are revoked through the feed, and the change is audited.
// A delegation that is already suspended or revoked is left as it is.
func (s *Service) BlockDelegation(ctx context.Context, delegation, reason string) error {
	now := s.now()
	ev, err := s.opts.Store.SetDelegationStatus(ctx, delegation, store.DelegationSuspended, "monitor", reason, now)
	if errors.Is(err, store.ErrStatus) {
		return nil
	}
	if err != nil {
		return unavailable(err)
	}
	s.grants.forget(delegation)
	n, err := s.revokeDelegated(ctx, delegation, store.DelegationSuspended, "monitor", now)
	if err != nil {
		return err
	}
	return s.record(ctx, &audit.Record{Kind: audit.KindRevocation, Outcome: ev.Event, User: "monitor", Delegation: delegation,
		Detail: map[string]string{"reason": reason, "seq": fmt.Sprint(ev.Seq), "credentials_revoked": fmt.Sprint(n)}})
}
