package access

import (
	"context"
	"net/netip"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/policy/authz"
	"github.com/vouch-dev/vouch/verifier/audit"
)

// Grant is what an attestation request is granted.
type Grant struct {
	Scope      []string
	Delegation string
	Intent     string
	// NotAfter caps the credential's expiry: the delegation's own.
	// Zero when there is no delegation.
	NotAfter time.Time
	PolicyID string
}

// Issuance is what the issuance decision looks at.
type Issuance struct {
	Request  *attest.Request
	Subject  string
	Submods  map[string]attest.Appraisal
	AKDigest []byte
	SourceIP netip.Addr
}

// ScopeFor decides the scope of a credential about to be issued: the
// intersection of the delegation the request names, its intent and the
// policy, on the resources it names. A request without a delegation that
// asks for no intent and no resources gets an identity-only credential
// (empty scope, which authorizes nothing under Vouch authorization); one
// that asks for an intent or resources without a delegation is refused
// (delegation-missing), as is a delegation that does not match the agent,
// is not active, names resources outside it, or grants nothing
// (scope-empty). The delegation is read fresh from the database. Every
// decision is audited.
func (s *Service) ScopeFor(ctx context.Context, in *Issuance) (*Grant, error) {
	req := in.Request
	eng := s.opts.Policy.Engine()
	if req.Delegation == "" {
		if req.Intent != "" || len(req.Resources) > 0 {
			return nil, attest.Errorf(attest.ReasonDelegationMissing, "the request asks for intent %q and %d resources but names no delegation: ask the user for one and pass its id", req.Intent, len(req.Resources))
		}
		return &Grant{PolicyID: eng.ID()}, nil
	}
	agent := authz.AgentFromClaims(&attest.Claims{Subject: in.Subject, Submods: in.Submods})
	rec := &audit.Record{
		Kind: audit.KindDecision, Action: "issue", Resources: req.Resources, Delegation: req.Delegation, PolicyID: eng.ID(),
		Agent: &audit.Agent{ID: in.Subject, AKDigest: in.AKDigest, ImageDigest: agent.ImageDigest},
	}
	scope, g, err := s.scope(ctx, eng, in, &agent)
	if g != nil {
		rec.User = g.User
	}
	if err != nil {
		if attest.ReasonOf(err) == attest.ReasonUnavailable {
			return nil, err
		}
		rec.Outcome, rec.Reasons = attest.Deny, []attest.Reason{attest.ReasonOf(err)}
		if aerr := s.record(ctx, rec); aerr != nil {
			return nil, aerr
		}
		return nil, err
	}
	rec.Outcome = attest.Permit
	rec.Detail = map[string]string{"scope": joinLines(scope)}
	if err := s.record(ctx, rec); err != nil {
		return nil, err
	}
	return &Grant{Scope: scope, Delegation: g.ID, Intent: g.Intent, NotAfter: g.ExpiresAt, PolicyID: eng.ID()}, nil
}

func (s *Service) scope(ctx context.Context, eng *authz.Engine, in *Issuance, agent *authz.Agent) ([]string, *authz.Grant, error) {
	req := in.Request
	g, _, err := s.grant(ctx, req.Delegation, true)
	if err != nil {
		return nil, nil, err
	}
	res := make([]attest.Resource, 0, len(req.Resources))
	for _, r := range req.Resources {
		p, err := attest.ParseResource(r)
		if err != nil {
			return nil, g, attest.Errorf(attest.ReasonRequestMalformed, "%v", err)
		}
		res = append(res, p)
	}
	env := &authz.Env{Now: s.now(), SourceIP: in.SourceIP}
	scope, err := eng.Scope(g, agent, req.Intent, res, env)
	return scope, g, err
}

func joinLines(ss []string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += "\n"
		}
		out += s
	}
	return out
}
