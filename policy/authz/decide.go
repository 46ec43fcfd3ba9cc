package authz

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"

	"github.com/vouch-dev/vouch/attest"
)

// Status is a delegation's status.
type Status string

// Delegation statuses. Expired is never stored: it is what an active or
// suspended delegation becomes outside its validity period.
const (
	StatusActive    Status = "active"
	StatusSuspended Status = "suspended"
	StatusRevoked   Status = "revoked"
	StatusExpired   Status = "expired"
)

// Grant is a delegation as the engine sees it: a user lets some agents act
// under one intent on some resources, for a while, maybe only from some
// networks or at some hours.
type Grant struct {
	ID     string
	User   string
	Intent string
	Status Status // stored status: active, suspended or revoked
	// Agents the delegation is for: an agent matches when its image digest
	// is listed or its id (credential sub) is listed. At least one of the
	// two lists is non-empty.
	ImageDigests []string
	AgentIDs     []string
	// Resources the agents may act on (typed ids and prefix patterns).
	Resources []attest.Resource
	// Actions, if non-empty, narrows the intent's actions further.
	Actions   []string
	NotBefore time.Time // zero: from creation
	ExpiresAt time.Time
	// Networks, if non-empty, are the only source networks allowed.
	Networks []netip.Prefix
	// Window, if set, is the daily time window (UTC) outside which the
	// delegation grants nothing.
	Window *Window
}

// StatusAt returns the delegation's effective status at now: its stored
// status, or expired when now is outside [NotBefore, ExpiresAt). Revoked
// wins over expired.
func (g *Grant) StatusAt(now time.Time) Status {
	if g.Status == StatusRevoked {
		return StatusRevoked
	}
	if !now.Before(g.ExpiresAt) || (!g.NotBefore.IsZero() && now.Before(g.NotBefore)) {
		return StatusExpired
	}
	return g.Status
}

// MatchesAgent reports whether the delegation is for agent a.
func (g *Grant) MatchesAgent(a *Agent) bool {
	return (a.ImageDigest != "" && slices.Contains(g.ImageDigests, a.ImageDigest)) ||
		(a.ID != "" && slices.Contains(g.AgentIDs, a.ID))
}

// CoversResource reports whether one of the delegation's resources covers r.
func (g *Grant) CoversResource(r attest.Resource) bool {
	for _, p := range g.Resources {
		if p.Covers(r) {
			return true
		}
	}
	return false
}

// Window is a daily time window in UTC, [Start, End) in minutes since
// midnight; Start > End wraps past midnight (22:00-06:00).
type Window struct {
	Start, End int
}

// ParseWindow parses "HH:MM-HH:MM" (UTC).
func ParseWindow(s string) (*Window, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return nil, fmt.Errorf("time window %q is not HH:MM-HH:MM (UTC)", s)
	}
	start, err := parseClock(a)
	if err != nil {
		return nil, fmt.Errorf("time window %q: %w", s, err)
	}
	end, err := parseClock(b)
	if err != nil {
		return nil, fmt.Errorf("time window %q: %w", s, err)
	}
	if start == end {
		return nil, fmt.Errorf("time window %q is empty", s)
	}
	return &Window{Start: start, End: end}, nil
}

func parseClock(s string) (int, error) {
	t, err := time.Parse("15:04", strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	return t.Hour()*60 + t.Minute(), nil
}

// String returns the window as HH:MM-HH:MM.
func (w *Window) String() string {
	return fmt.Sprintf("%02d:%02d-%02d:%02d", w.Start/60, w.Start%60, w.End/60, w.End%60)
}

// Contains reports whether t (taken in UTC) falls in the window.
func (w *Window) Contains(t time.Time) bool {
	t = t.UTC()
	m := t.Hour()*60 + t.Minute()
	if w.Start < w.End {
		return m >= w.Start && m < w.End
	}
	return m >= w.Start || m < w.End
}

// Agent is the principal of a decision: the appraised facts of the agent.
type Agent struct {
	ID          string // credential sub
	ImageDigest string
	EARStatus   string // worst status among the appraisal's submodules
	Platform    string
}

// AgentFromClaims takes the principal's facts from a verified credential.
func AgentFromClaims(c *attest.Claims) Agent {
	a := Agent{ID: c.Subject, EARStatus: attest.StatusNone.String()}
	worst := attest.StatusNone
	for _, sm := range c.Submods {
		if sm.Status > worst {
			worst = sm.Status
		}
	}
	if len(c.Submods) > 0 {
		a.EARStatus = worst.String()
	}
	if wl, ok := c.Submods[attest.SubmodWorkload]; ok && wl.Claims != nil && wl.Claims.ImageDigest != nil {
		a.ImageDigest = ImageDigestString(wl.Claims.ImageDigest)
	}
	if tp, ok := c.Submods[attest.SubmodTPM]; ok && tp.Claims != nil {
		a.Platform = tp.Claims.Platform
	}
	return a
}

// ImageDigestString renders a digest claim as "sha256:<hex>", the form the
// reference values and delegations use.
func ImageDigestString(d *attest.Digest) string {
	alg := map[int64]string{attest.HashSHA256: "sha256", attest.HashSHA384: "sha384", attest.HashSHA512: "sha512"}[d.Alg]
	if alg == "" {
		alg = fmt.Sprintf("alg%d", d.Alg)
	}
	return fmt.Sprintf("%s:%x", alg, d.Value)
}

// Env is the environment of a decision.
type Env struct {
	Now          time.Time
	SourceIP     netip.Addr // zero when unknown
	ThreatFlags  []string
	AnomalyScore int
	// Elevated is true for a just-in-time elevation (a single-use
	// credential, or POST /v1/elevate itself).
	Elevated bool
}

// Result is a decision with its reasons.
type Result struct {
	Permit   bool
	Reasons  []attest.DecisionReason
	Policies []string // Cedar policies that determined the decision
}

func deny(r attest.Reason, format string, args ...any) Result {
	return Result{Reasons: []attest.DecisionReason{{Reason: r, Detail: fmt.Sprintf(format, args...)}}}
}

// Err returns nil for a permit and an *attest.Error with the first reason
// for a deny.
func (r *Result) Err() error {
	if r.Permit {
		return nil
	}
	d := attest.Decision{Decision: attest.Deny, Reasons: r.Reasons}
	return d.Err()
}

// Decide decides whether agent a may do action on the concrete resource res
// under delegation g in environment env. In order: the delegation's status,
// that it is for this agent, its intent (in the catalogue) allows the
// action, the action applies to the resource's type, the delegation covers
// the resource, the source network, the time window, and last the Cedar
// policy set (deny unless some policy permits and none forbids; a policy
// that fails to evaluate denies). It does not look at a credential's scope:
// callers that hold one check it first ([attest.ScopeAllows]).
func (e *Engine) Decide(g *Grant, a *Agent, action string, res attest.Resource, env *Env) Result {
	if r, ok := e.checkGrant(g, a, env); !ok {
		return r
	}
	if r, ok := e.checkAction(g, action, res, env.Elevated); !ok {
		return r
	}
	if !g.CoversResource(res) {
		return deny(attest.ReasonResourceNotDelegated, "delegation %s does not cover %s", g.ID, res)
	}
	return e.evaluate(g, a, action, res, env)
}

// checkGrant checks what does not depend on action or resource: status,
// agent, intent, network and time window.
func (e *Engine) checkGrant(g *Grant, a *Agent, env *Env) (Result, bool) {
	switch st := g.StatusAt(env.Now); st {
	case StatusActive:
	case StatusSuspended:
		return deny(attest.ReasonDelegationSuspended, "delegation %s is suspended by %s", g.ID, g.User), false
	case StatusRevoked:
		return deny(attest.ReasonDelegationRevoked, "delegation %s was revoked", g.ID), false
	default:
		if !g.NotBefore.IsZero() && env.Now.Before(g.NotBefore) {
			return deny(attest.ReasonDelegationExpired, "delegation %s is valid from %s (now %s)", g.ID, g.NotBefore.UTC().Format(time.RFC3339), env.Now.UTC().Format(time.RFC3339)), false
		}
		return deny(attest.ReasonDelegationExpired, "delegation %s expired at %s (now %s): ask %s for a new one", g.ID, g.ExpiresAt.UTC().Format(time.RFC3339), env.Now.UTC().Format(time.RFC3339), g.User), false
	}
	if !g.MatchesAgent(a) {
		return deny(attest.ReasonDelegationAgent, "delegation %s is not for this agent (image %s, id %s)", g.ID, a.ImageDigest, a.ID), false
	}
	if _, ok := e.catalogue.Intents[g.Intent]; !ok {
		return deny(attest.ReasonIntentUnknown, "delegation %s is for intent %q, which the intent catalogue in force does not define", g.ID, g.Intent), false
	}
	if len(g.Networks) > 0 {
		if !env.SourceIP.IsValid() {
			return deny(attest.ReasonNetworkDenied, "delegation %s allows only networks %v and the source address is unknown", g.ID, g.Networks), false
		}
		ok := false
		src := env.SourceIP.Unmap()
		for _, n := range g.Networks {
			if n.Contains(src) {
				ok = true
				break
			}
		}
		if !ok {
			return deny(attest.ReasonNetworkDenied, "source address %s is outside the networks delegation %s allows (%v)", src, g.ID, g.Networks), false
		}
	}
	if g.Window != nil && !g.Window.Contains(env.Now) {
		return deny(attest.ReasonTimeWindow, "delegation %s allows requests between %s UTC; it is %s UTC", g.ID, g.Window, env.Now.UTC().Format("15:04")), false
	}
	return Result{}, true
}

// checkAction checks that the intent and delegation allow action and that
// it applies to res's type.
func (e *Engine) checkAction(g *Grant, action string, res attest.Resource, elevated bool) (Result, bool) {
	in := e.catalogue.Intents[g.Intent]
	if !in.Allows(action, elevated) {
		if !elevated && slices.Contains(in.Elevate, action) {
			return deny(attest.ReasonIntentAction, "intent %q allows %s only by just-in-time elevation (POST %s)", in.Name, action, attest.ElevatePath), false
		}
		return deny(attest.ReasonIntentAction, "intent %q does not include %s (it may need %v)", in.Name, action, in.Actions), false
	}
	if len(g.Actions) > 0 && !slices.Contains(g.Actions, action) {
		return deny(attest.ReasonIntentAction, "delegation %s narrows intent %q to %v; %s is not among them", g.ID, in.Name, g.Actions, action), false
	}
	if !slices.Contains(e.appliesTo[action], res.Type) {
		return deny(attest.ReasonPolicyDenied, "action %s does not apply to resource type %s (schema: %v)", action, res.Type, e.appliesTo[action]), false
	}
	return Result{}, true
}

// evaluate asks the Cedar policy set.
func (e *Engine) evaluate(g *Grant, a *Agent, action string, res attest.Resource, env *Env) Result {
	principal := types.NewEntityUID("Agent", types.String(a.ID))
	resource := types.NewEntityUID(types.EntityType(res.Type), types.String(res.ID))
	tenant, _, _ := strings.Cut(res.ID, "/")
	entities := types.EntityMap{
		principal: {UID: principal, Attributes: types.NewRecord(types.RecordMap{
			"image_digest": types.String(a.ImageDigest),
			"ear_status":   types.String(a.EARStatus),
			"platform":     types.String(a.Platform),
		})},
		resource: {UID: resource, Attributes: types.NewRecord(types.RecordMap{
			"tenant": types.String(tenant),
			"path":   types.String(res.ID),
		})},
	}
	flags := make([]types.Value, len(env.ThreatFlags))
	for i, f := range env.ThreatFlags {
		flags[i] = types.String(f)
	}
	now := env.Now.UTC()
	ctx := types.RecordMap{
		"now":         types.Long(now.Unix()),
		"hour_utc":    types.Long(now.Hour()),
		"weekday_utc": types.Long(now.Weekday()),
		"delegation": types.NewRecord(types.RecordMap{
			"id":     types.String(g.ID),
			"user":   types.String(g.User),
			"intent": types.String(g.Intent),
			"status": types.String(g.StatusAt(env.Now)),
		}),
		"threat_flags":  types.NewSet(flags...),
		"anomaly_score": types.Long(env.AnomalyScore),
		"elevated":      types.Boolean(env.Elevated),
	}
	if env.SourceIP.IsValid() {
		src := env.SourceIP.Unmap()
		ctx["source_ip"] = types.IPAddr(netip.PrefixFrom(src, src.BitLen()))
	}
	dec, diag := e.policies.IsAuthorized(entities, cedar.Request{
		Principal: principal,
		Action:    e.actions[action],
		Resource:  resource,
		Context:   types.NewRecord(ctx),
	})
	var r Result
	for _, d := range diag.Reasons {
		r.Policies = append(r.Policies, string(d.PolicyID))
	}
	if len(diag.Errors) > 0 {
		// A policy that cannot be evaluated neither permits nor forbids in
		// Cedar; a forbid that silently does nothing would fail open, so
		// any evaluation error denies.
		first := diag.Errors[0]
		r.Reasons = []attest.DecisionReason{{Reason: attest.ReasonPolicyDenied, Detail: fmt.Sprintf("policy %s failed to evaluate (%s); denying rather than ignoring it", first.PolicyID, first.Message)}}
		r.Policies = append(r.Policies, string(first.PolicyID))
		return r
	}
	if dec == cedar.Allow {
		r.Permit = true
		return r
	}
	if len(r.Policies) > 0 {
		r.Reasons = []attest.DecisionReason{{Reason: attest.ReasonPolicyDenied, Detail: fmt.Sprintf("forbidden by policy %s", strings.Join(r.Policies, ", "))}}
	} else {
		r.Reasons = []attest.DecisionReason{{Reason: attest.ReasonPolicyDenied, Detail: fmt.Sprintf("no policy permits %s on %s for this agent (deny by default)", action, res)}}
	}
	return r
}

// Scope computes what a credential issued under delegation g for intent
// may grant on the requested resources: for each resource (which must be
// covered by the delegation) and each standing action of the intent that
// the delegation allows and that applies to the resource's type, the entry
// "action:resource" when the Cedar policy permits it in env. Requested
// resources may be prefix patterns; they are then evaluated as resources
// whose id is the pattern. An empty intent means the delegation's. It
// refuses (an *attest.Error) when the delegation cannot be used at all, a
// resource is not delegated, or nothing at all would be granted.
func (e *Engine) Scope(g *Grant, a *Agent, intent string, requested []attest.Resource, env *Env) ([]string, error) {
	if intent != "" && intent != g.Intent {
		return nil, attest.Errorf(attest.ReasonIntentUnknown, "the request asks for intent %q but delegation %s is for %q", intent, g.ID, g.Intent)
	}
	if r, ok := e.checkGrant(g, a, env); !ok {
		return nil, r.Err()
	}
	if len(requested) == 0 {
		return nil, attest.Errorf(attest.ReasonScopeEmpty, "the request names no resources: ask for the resources the task needs (within %v)", resourceStrings(g.Resources))
	}
	for _, res := range requested {
		if !g.CoversResource(res) {
			return nil, attest.Errorf(attest.ReasonResourceNotDelegated, "delegation %s does not cover %s (it covers %v)", g.ID, res, resourceStrings(g.Resources))
		}
	}
	in := e.catalogue.Intents[g.Intent]
	var scope []string
	var denied []string
	for _, res := range requested {
		for _, action := range in.Actions {
			if len(g.Actions) > 0 && !slices.Contains(g.Actions, action) {
				continue
			}
			if !slices.Contains(e.appliesTo[action], res.Type) {
				continue
			}
			r := e.evaluate(g, a, action, res, env)
			entry := attest.ScopeEntry{Action: action, Resource: res}.String()
			if r.Permit {
				if !slices.Contains(scope, entry) {
					scope = append(scope, entry)
				}
			} else if len(r.Reasons) > 0 {
				denied = append(denied, entry+" ("+r.Reasons[0].Detail+")")
			}
		}
	}
	if len(scope) == 0 {
		detail := fmt.Sprintf("intent %q has no action on the requested resources", in.Name)
		if len(denied) > 0 {
			detail = "policy denies every candidate: " + strings.Join(denied, "; ")
		}
		return nil, attest.Errorf(attest.ReasonScopeEmpty, "delegation %s ∩ intent ∩ policy grants nothing: %s", g.ID, detail)
	}
	return scope, nil
}

// CheckElevation decides a just-in-time elevation: one action on one
// concrete resource, as [Engine.Decide] with env.Elevated set, so the
// intent's elevate-only actions are allowed and the policies see
// context.elevated.
func (e *Engine) CheckElevation(g *Grant, a *Agent, action string, res attest.Resource, env *Env) Result {
	if res.IsPattern() {
		return deny(attest.ReasonElevationDenied, "elevation is for one resource; %s is a pattern", res)
	}
	el := *env
	el.Elevated = true
	return e.Decide(g, a, action, res, &el)
}

func resourceStrings(rs []attest.Resource) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.String()
	}
	return out
}
