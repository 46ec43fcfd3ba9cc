package access

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"mime"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/policy/authz"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/issuer"
	"github.com/vouch-dev/vouch/verifier/store"
)

// ElevateRequest is the body of POST /v1/elevate.
type ElevateRequest struct {
	Action   string `json:"action"`
	Resource string `json:"resource"`
}

// maxElevateBody bounds the body of POST /v1/elevate.
const maxElevateBody = 4 << 10

// handleElevate issues a single-use credential for one action on one
// resource. The agent authenticates as it does to any relying party: its
// current credential in Authorization and a proof of possession of its key
// over this request.
func (s *Service) handleElevate(w http.ResponseWriter, r *http.Request) error {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return attest.Errorf(attest.ReasonUnsupportedMediaType, "send the elevation request as application/json")
	}
	body, err := readBody(w, r, maxElevateBody)
	if err != nil {
		return err
	}
	raw, pop, err := credentialAndProof(r)
	if err != nil {
		return err
	}
	var q ElevateRequest
	if err := decodeJSON(body, &q); err != nil {
		return err
	}
	if err := attest.ValidAction(q.Action); err != nil {
		return attest.Errorf(attest.ReasonRequestMalformed, "%v", err)
	}
	res, err := attest.ParseResource(q.Resource)
	if err != nil {
		return attest.Errorf(attest.ReasonRequestMalformed, "%v", err)
	}
	v, err := s.verifyCredential(raw, "")
	if err != nil {
		return err
	}
	if _, err := s.pop.Verify(pop, v.cnf, r.Method, s.requestTarget(r), body, raw); err != nil {
		return err
	}
	cred, claims, err := s.elevate(r.Context(), v, q.Action, res, sourceAddr(r))
	if err != nil {
		return err
	}
	s.log.InfoContext(r.Context(), "elevation issued", "sub", claims.Subject, "scope", claims.Scope[0],
		"delegation", claims.Delegation, "cti", fmt.Sprintf("%x", claims.ID), "exp", claims.ExpiresAt().UTC())
	w.Header().Set("Content-Type", attest.CredentialMediaType)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Vouch-Credential-Expires", claims.ExpiresAt().UTC().Format(time.RFC3339))
	_, err = w.Write(cred)
	return err
}

// elevate decides and, if permitted, issues the single-use credential.
func (s *Service) elevate(ctx context.Context, v *verified, action string, res attest.Resource, src netip.Addr) (_ []byte, _ *attest.Claims, err error) {
	eng := s.opts.Policy.Engine()
	c := v.claims
	rec := &audit.Record{
		Kind: audit.KindDecision, Action: action, Resources: []string{res.String()}, Delegation: c.Delegation, PolicyID: eng.ID(),
		Agent: &audit.Agent{ID: c.Subject, ImageDigest: v.agent.ImageDigest}, Detail: map[string]string{"elevation": "true"},
	}
	claims, policies, err := s.elevation(ctx, eng, v, action, res, src, rec)
	srcIP := ""
	if src.IsValid() {
		srcIP = src.String()
	}
	defer func() { s.decided(ctx, v, action, res.String(), err, srcIP, true) }()
	if len(policies) > 0 {
		rec.Detail["policies"] = strings.Join(policies, " ")
	}
	if err != nil {
		if attest.ReasonOf(err) == attest.ReasonUnavailable {
			return nil, nil, err
		}
		rec.Outcome, rec.Reasons = attest.Deny, []attest.Reason{attest.ReasonOf(err)}
		if aerr := s.record(ctx, rec); aerr != nil {
			return nil, nil, aerr
		}
		return nil, nil, err
	}
	cred, err := s.opts.Keys.Sign(claims)
	if err != nil {
		return nil, nil, fmt.Errorf("signing elevation: %w", err)
	}
	if err := s.opts.Store.RecordCredential(ctx, store.Credential{
		ID: claims.ID, Subject: claims.Subject, Audience: claims.Audience, AKDigest: []byte{}, ImageDigest: v.agent.ImageDigest,
		Scope: claims.Scope, IssuedAt: claims.IssuedAtTime(), ExpiresAt: claims.ExpiresAt(), Delegation: claims.Delegation, SingleUse: true,
	}); err != nil {
		return nil, nil, unavailable(err)
	}
	rec.Outcome = attest.Permit
	rec.Credential = &audit.Credential{ID: claims.ID, Audience: claims.Audience, Scope: claims.Scope, Expiry: claims.Expiry, SingleUse: true}
	if err := s.record(ctx, rec); err != nil {
		return nil, nil, err
	}
	return cred, claims, nil
}

func (s *Service) elevation(ctx context.Context, eng *authz.Engine, v *verified, action string, res attest.Resource, src netip.Addr, rec *audit.Record) (*attest.Claims, []string, error) {
	c := v.claims
	if c.SingleUse {
		return nil, nil, attest.Errorf(attest.ReasonElevationDenied, "credential %x is itself a single-use elevation; elevate from the agent's attested credential", c.ID)
	}
	if c.Delegation == "" {
		return nil, nil, attest.Errorf(attest.ReasonDelegationMissing, "the credential was issued under no delegation; there is nothing to elevate within")
	}
	if err := s.checkRevoked(ctx, c); err != nil {
		return nil, nil, err
	}
	if s.opts.Held != nil {
		// The machine is the AK the credential's platform appraisal names.
		var ak []byte
		if tpm, ok := c.Submods[attest.SubmodTPM]; ok && tpm.Claims != nil && tpm.Claims.AKDigest != nil {
			ak = tpm.Claims.AKDigest.Value
		}
		if err := s.opts.Held(ctx, c.Subject, ak, v.agent.ImageDigest); err != nil {
			return nil, nil, err
		}
	}
	g, _, err := s.grant(ctx, c.Delegation, true)
	if err != nil {
		return nil, nil, err
	}
	rec.User = g.User
	if c.Intent != g.Intent {
		return nil, nil, attest.Errorf(attest.ReasonIntentUnknown, "the credential is for intent %q but delegation %s is for %q", c.Intent, g.ID, g.Intent)
	}
	now := s.now()
	r := eng.CheckElevation(g, &v.agent, action, res, &authz.Env{Now: now, SourceIP: src})
	if !r.Permit {
		return nil, r.Policies, r.Err()
	}
	exp := now.Add(s.elevTTL)
	if g.ExpiresAt.Before(exp) {
		exp = g.ExpiresAt
	}
	if c.ExpiresAt().Before(exp) {
		exp = c.ExpiresAt() // never outlive the credential it was elevated from
	}
	if exp.Unix() <= now.Unix() {
		return nil, r.Policies, attest.Errorf(attest.ReasonElevationDenied, "the credential or delegation expires within the second; attest again first")
	}
	id, err := issuer.NewID()
	if err != nil {
		return nil, nil, err
	}
	return &attest.Claims{
		Issuer: c.Issuer, Subject: c.Subject, Audience: c.Audience,
		Expiry: exp.Unix(), NotBefore: now.Unix(), IssuedAt: now.Unix(), ID: id,
		Confirm: c.Confirm, Scope: []string{attest.ScopeEntry{Action: action, Resource: res}.String()},
		Nonce: c.Nonce, Profile: attest.Profile, Submods: c.Submods, VerifierID: c.VerifierID,
		Delegation: c.Delegation, Intent: c.Intent, SingleUse: true,
	}, r.Policies, nil
}

// credentialAndProof reads "Authorization: Vouch <cred>" and Vouch-PoP.
func credentialAndProof(r *http.Request) ([]byte, []byte, error) {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, attest.AuthScheme) || token == "" {
		return nil, nil, attest.Errorf(attest.ReasonCredentialMissing, "send \"Authorization: %s <base64url credential>\" with the credential to elevate from", attest.AuthScheme)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(strings.TrimSpace(token), "="))
	if err != nil || len(raw) > attest.MaxCredentialSize {
		return nil, nil, attest.Errorf(attest.ReasonCredentialMalformed, "the credential is not unpadded base64url of at most %d bytes", attest.MaxCredentialSize)
	}
	p := r.Header.Get(attest.PoPHeader)
	if p == "" {
		return nil, nil, attest.Errorf(attest.ReasonPoPMissing, "send a proof of possession in %s", attest.PoPHeader)
	}
	pop, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(p, "="))
	if err != nil {
		return nil, nil, attest.Errorf(attest.ReasonPoPMalformed, "the %s header is not unpadded base64url", attest.PoPHeader)
	}
	return raw, pop, nil
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
