package access

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/netip"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/policy/authz"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/store"
)

func (s *Service) handleAuthorize(w http.ResponseWriter, r *http.Request) error {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != attest.AuthorizeMediaType {
		return attest.Errorf(attest.ReasonUnsupportedMediaType, "send the question as %s, not %q", attest.AuthorizeMediaType, r.Header.Get("Content-Type"))
	}
	body, err := readBody(w, r, attest.MaxAuthorizeRequestSize)
	if err != nil {
		return err
	}
	var q attest.AuthorizeRequest
	if err := decodeJSON(body, &q); err != nil {
		return err
	}
	d, err := s.Authorize(r.Context(), &q)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, d)
}

// Authorize decides one question of a relying party: the credential and
// proof it was shown, the action and resource the request maps to, and the
// context it knows. Everything is re-checked each time: credential
// (signature cached, times not), proof (with this verifier's replay cache),
// the delegation's current status, the scope, the intent catalogue, the
// environment and the Cedar policy in force. A single-use credential is
// consumed by its first permit, across replicas sharing the database. The
// returned error is only for a malformed question or an unavailable
// dependency; refusals are a Decision "deny". Every decision is audited.
func (s *Service) Authorize(ctx context.Context, q *attest.AuthorizeRequest) (*attest.Decision, error) {
	res, err := validateQuestion(q)
	if err != nil {
		return nil, err
	}
	eng := s.opts.Policy.Engine()
	d := &attest.Decision{Decision: attest.Deny, PolicySet: eng.ID()}
	rec := &audit.Record{Kind: audit.KindDecision, Action: q.Action, Resources: []string{q.Resource}, PolicyID: eng.ID()}

	v, policies, deny := s.decide(ctx, eng, q, res)
	if deny != nil && attest.ReasonOf(deny) == attest.ReasonUnavailable {
		return nil, deny
	}
	if v != nil {
		c := v.claims
		d.Subject, d.Delegation = c.Subject, c.Delegation
		rec.Agent = &audit.Agent{ID: c.Subject, ImageDigest: v.agent.ImageDigest}
		rec.Delegation = c.Delegation
		if c.SingleUse {
			rec.Detail = map[string]string{"single_use": "true", "cti": fmt.Sprintf("%x", c.ID)}
		}
	}
	d.Policies = policies
	if deny == nil {
		d.Decision = attest.Permit
	} else {
		var e *attest.Error
		if errors.As(deny, &e) {
			d.Reasons = []attest.DecisionReason{{Reason: e.Reason, Detail: e.Detail}}
		} else {
			s.log.ErrorContext(ctx, "authorization failed", "err", deny)
			d.Reasons = []attest.DecisionReason{{Reason: attest.ReasonInternal, Detail: "the verifier failed; the error is in its log"}}
		}
	}
	rec.Outcome = d.Decision
	rec.Reasons = reasonsOf(d.Reasons)
	if g := s.cachedUser(d.Delegation); g != "" {
		rec.User = g
	}
	if err := s.recordDecision(ctx, rec); err != nil {
		return nil, err
	}
	s.decided(ctx, v, q.Action, q.Resource, deny, q.Context.SourceIP, false)
	return d, nil
}

// decide runs the checks; a nil error is a permit.
func (s *Service) decide(ctx context.Context, eng *authz.Engine, q *attest.AuthorizeRequest, res attest.Resource) (*verified, []string, error) {
	v, err := s.verifyCredential(q.Credential, q.Audience)
	if err != nil {
		return nil, nil, err
	}
	if _, err := s.pop.VerifyDigest(q.PoP, v.cnf, q.Method, q.Target, q.BodySHA256, q.Credential); err != nil {
		return v, nil, err
	}
	c := v.claims
	if err := s.checkRevoked(ctx, c); err != nil {
		return v, nil, err
	}
	if c.Delegation == "" {
		return v, nil, attest.Errorf(attest.ReasonDelegationMissing, "the credential was issued under no delegation, so it grants nothing: attest with a delegation id, intent and resources")
	}
	g, _, err := s.grant(ctx, c.Delegation, false)
	if err != nil {
		return v, nil, err
	}
	if c.Intent != g.Intent {
		return v, nil, attest.Errorf(attest.ReasonIntentUnknown, "the credential is for intent %q but delegation %s is for %q", c.Intent, g.ID, g.Intent)
	}
	if !attest.ScopeAllows(c.Scope, q.Action, res) {
		return v, nil, attest.Errorf(attest.ReasonScopeInsufficient, "the credential's scope does not grant %s on %s", q.Action, res)
	}
	env := &authz.Env{Now: s.now(), ThreatFlags: q.Context.ThreatFlags, AnomalyScore: q.Context.AnomalyScore, Elevated: c.SingleUse}
	if q.Context.SourceIP != "" {
		env.SourceIP, _ = netip.ParseAddr(q.Context.SourceIP)
	}
	r := eng.Decide(g, &v.agent, q.Action, res, env)
	if !r.Permit {
		return v, r.Policies, r.Err()
	}
	if c.SingleUse {
		err := s.opts.Store.ConsumeCredential(ctx, c.ID, env.Now, c.ExpiresAt().Add(attest.DefaultCredentialSkew))
		if errors.Is(err, store.ErrExists) {
			return v, r.Policies, attest.Errorf(attest.ReasonCredentialReused, "single-use credential %x was already used: ask POST %s for a new elevation", c.ID, attest.ElevatePath)
		}
		if err != nil {
			return v, r.Policies, unavailable(err)
		}
	}
	return v, r.Policies, nil
}

// cachedUser names the delegating user of a delegation, if it is cached.
func (s *Service) cachedUser(id string) string {
	if id == "" {
		return ""
	}
	s.grants.mu.RLock()
	defer s.grants.mu.RUnlock()
	if e, ok := s.grants.m[id]; ok && e.g != nil {
		return e.g.User
	}
	return ""
}

// validateQuestion checks the question's fields and parses its resource.
func validateQuestion(q *attest.AuthorizeRequest) (attest.Resource, error) {
	switch {
	case len(q.Credential) == 0:
		return attest.Resource{}, attest.Errorf(attest.ReasonRequestMalformed, "the question has no credential")
	case q.Method == "" || q.Target == "":
		return attest.Resource{}, attest.Errorf(attest.ReasonRequestMalformed, "the question lacks the method or target the proof of possession was made for")
	case len(q.BodySHA256) != sha256.Size:
		return attest.Resource{}, attest.Errorf(attest.ReasonRequestMalformed, "body_sha256 must be the 32-byte SHA-256 of the request body (of the empty string when there is none)")
	case q.Audience == "":
		return attest.Resource{}, attest.Errorf(attest.ReasonRequestMalformed, "the question names no audience (the relying party's identifier)")
	}
	if err := attest.ValidAction(q.Action); err != nil {
		return attest.Resource{}, attest.Errorf(attest.ReasonRequestMalformed, "%v", err)
	}
	res, err := attest.ParseResource(q.Resource)
	if err != nil {
		return attest.Resource{}, attest.Errorf(attest.ReasonRequestMalformed, "%v", err)
	}
	if res.IsPattern() {
		return attest.Resource{}, attest.Errorf(attest.ReasonRequestMalformed, "resource %s is a pattern; a decision is about one resource", res)
	}
	if err := q.Context.Validate(); err != nil {
		return attest.Resource{}, err
	}
	return res, nil
}

func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, attest.Errorf(attest.ReasonRequestTooLarge, "the body is larger than %d bytes", max)
		}
		return nil, attest.Errorf(attest.ReasonRequestMalformed, "reading the body: %w", err)
	}
	return b, nil
}

// decodeJSON decodes one JSON value strictly: unknown fields and trailing
// data are refused.
func decodeJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytesReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return attest.Errorf(attest.ReasonRequestMalformed, "the body is not the expected JSON: %v", err)
	}
	if dec.More() {
		return attest.Errorf(attest.ReasonRequestMalformed, "the body has data after the JSON value")
	}
	return nil
}

// peekAudience reads a credential's aud without verifying it, so that the
// verifier can then verify the credential for that audience.
func peekAudience(raw []byte) (string, error) {
	if len(raw) > attest.MaxCredentialSize {
		return "", attest.Errorf(attest.ReasonCredentialMalformed, "credential is %d bytes; at most %d are accepted", len(raw), attest.MaxCredentialSize)
	}
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(raw); err != nil {
		return "", attest.Errorf(attest.ReasonCredentialMalformed, "credential is not a tagged COSE_Sign1: %w", err)
	}
	var c struct {
		Audience string `cbor:"3,keyasint"`
	}
	if err := cbor.Unmarshal(msg.Payload, &c); err != nil || c.Audience == "" {
		return "", attest.Errorf(attest.ReasonCredentialMalformed, "credential payload has no audience")
	}
	return c.Audience, nil
}
