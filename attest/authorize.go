package attest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// AuthorizeMediaType is the Content-Type of POST /v1/authorize requests and
// answers.
const AuthorizeMediaType = "application/json"

// AuthorizePath and ElevatePath are the verifier's decision endpoints.
const (
	AuthorizePath = "/v1/authorize"
	ElevatePath   = "/v1/elevate"
)

// Limits of an authorization request.
const (
	MaxAuthorizeRequestSize = 48 << 10
	MaxThreatFlags          = 32
	MaxThreatFlagLen        = 64
)

// AuthorizeRequest is the body of POST /v1/authorize: a relying party asks
// the verifier whether the credential it was shown, with the proof of
// possession that came with it, allows one action on one resource now.
// Credential and PoP are the bytes the agent sent; Method, Target and
// BodySHA256 are what the proof must cover (as in [PoPVerifier.Verify]).
type AuthorizeRequest struct {
	Credential []byte           `json:"credential"`
	PoP        []byte           `json:"pop"`
	Method     string           `json:"method"`
	Target     string           `json:"target"`
	BodySHA256 []byte           `json:"body_sha256"`
	Audience   string           `json:"audience"` // the relying party asking; must be the credential's aud
	Action     string           `json:"action"`
	Resource   string           `json:"resource"`
	Context    AuthorizeContext `json:"context"`
}

// AuthorizeContext is what the relying party knows about the request's
// environment. Every field is optional.
type AuthorizeContext struct {
	// SourceIP is the agent's address as the relying party sees it.
	SourceIP string `json:"source_ip,omitempty"`
	// ThreatFlags are threat-intelligence labels the relying party attaches
	// (e.g. "tor-exit", "known-bad-asn").
	ThreatFlags []string `json:"threat_flags,omitempty"`
	// AnomalyScore is 0 (normal) to 100 (certainly anomalous).
	AnomalyScore int `json:"anomaly_score,omitempty"`
}

// Validate checks the context's bounds.
func (c *AuthorizeContext) Validate() error {
	if c.SourceIP != "" && net.ParseIP(c.SourceIP) == nil {
		return Errorf(ReasonRequestMalformed, "context.source_ip %q is not an IP address", c.SourceIP)
	}
	if len(c.ThreatFlags) > MaxThreatFlags {
		return Errorf(ReasonRequestMalformed, "context has %d threat flags; at most %d are accepted", len(c.ThreatFlags), MaxThreatFlags)
	}
	for _, f := range c.ThreatFlags {
		if err := checkText("threat flag", f, MaxThreatFlagLen); err != nil || f == "" {
			return Errorf(ReasonRequestMalformed, "context threat flag %q is empty, too long or has control characters", f)
		}
	}
	if c.AnomalyScore < 0 || c.AnomalyScore > 100 {
		return Errorf(ReasonRequestMalformed, "context.anomaly_score %d is outside 0..100", c.AnomalyScore)
	}
	return nil
}

// Decision values.
const (
	Permit = "permit"
	Deny   = "deny"
)

// Decision is the verifier's answer to POST /v1/authorize (always 200 when
// the request was well formed; a refusal is Decision "deny" with reasons).
type Decision struct {
	Decision   string           `json:"decision"` // "permit" or "deny"
	Reasons    []DecisionReason `json:"reasons,omitempty"`
	Policies   []string         `json:"policies,omitempty"`   // ids of the Cedar policies that determined it
	PolicySet  string           `json:"policy_set,omitempty"` // content id of the policy set in force
	Delegation string           `json:"delegation,omitempty"`
	Subject    string           `json:"agent_id,omitempty"`
}

// Permitted reports whether d permits.
func (d *Decision) Permitted() bool { return d.Decision == Permit }

// Err returns nil for a permit, and for a deny an *Error carrying the first
// reason (ReasonPolicyDenied when there is none).
func (d *Decision) Err() error {
	if d.Permitted() {
		return nil
	}
	if len(d.Reasons) == 0 {
		return Errorf(ReasonPolicyDenied, "the verifier denied the request")
	}
	r := d.Reasons[0]
	detail := r.Detail
	if detail == "" {
		detail = "the verifier denied the request"
	}
	return &Error{Reason: r.Reason, Detail: detail}
}

// DecisionReason is one reason of a decision.
type DecisionReason struct {
	Reason Reason `json:"reason"`
	Detail string `json:"detail,omitempty"`
}

// RequestMapper tells an authorizer what a request asks to do: its action
// ("documents:read") and the resource it acts on (Document::"customer-A/x").
// An error refuses the request with 403.
type RequestMapper func(r *http.Request) (action, resource string, err error)

// ScopeAuthorizer returns a [MiddlewareOptions.Authorize] hook for offline
// mode: the request is allowed when the credential's scope (claim 9) grants
// the action on the resource that m maps it to. It needs nothing but the
// credential, so it keeps working when the verifier is unreachable; it
// cannot see a delegation revoked or suspended after issuance (that takes
// the revocation stream, through [MiddlewareOptions.Revoked]) nor policy
// changes, until the credential expires.
func ScopeAuthorizer(m RequestMapper) func(ctx context.Context, c *Claims, r *http.Request) error {
	return func(_ context.Context, c *Claims, r *http.Request) error {
		action, resource, err := m(r)
		if err != nil {
			return err
		}
		res, err := ParseResource(resource)
		if err != nil {
			return Errorf(ReasonRequestMalformed, "the relying party mapped this request to an invalid resource: %v", err)
		}
		if res.IsPattern() {
			return Errorf(ReasonRequestMalformed, "the relying party mapped this request to a pattern (%s); requests act on one resource", resource)
		}
		if !ScopeAllows(c.Scope, action, res) {
			return Errorf(ReasonScopeInsufficient, "the credential's scope does not grant %s on %s (it grants %d entries): attest for this intent and resource, or ask POST %s for a single-use elevation", action, resource, len(c.Scope), ElevatePath)
		}
		return nil
	}
}

// RemoteAuthorizerOptions configure [NewRemoteAuthorizer].
type RemoteAuthorizerOptions struct {
	// Verifier is the verifier's base URL (http(s)://host[:port][/prefix]).
	Verifier string
	// Origin is this relying party's external origin, the same as
	// MiddlewareOptions.Origin: the verifier re-checks the proof against it.
	Origin string
	// Audience is this relying party's identifier (the credential's aud).
	Audience string
	// Map tells the action and resource of a request (required).
	Map RequestMapper
	// Context, if set, adds environmental context to each question; by
	// default the context carries the peer's address (r.RemoteAddr).
	Context func(r *http.Request) AuthorizeContext
	// Client sends the questions; default a client with a 5 s timeout.
	Client *http.Client
}

// NewRemoteAuthorizer returns a [MiddlewareOptions.Authorize] hook for
// remote mode: every request is decided by the verifier (POST
// /v1/authorize), which re-checks the credential and proof, the delegation's
// status, the intent catalogue, the environment and the Cedar policy in
// force. A delegation revoked a moment ago is refused on the next request.
// The price is a round trip per request and a hard dependency on the
// verifier: when it cannot be reached, requests are refused (fail closed).
func NewRemoteAuthorizer(opts RemoteAuthorizerOptions) (func(ctx context.Context, c *Claims, r *http.Request) error, error) {
	if opts.Map == nil {
		return nil, errors.New("remote authorizer: Map is required")
	}
	if opts.Audience == "" {
		return nil, errors.New("remote authorizer: Audience is required")
	}
	u, err := ServiceURL("remote authorizer: Verifier", opts.Verifier)
	if err != nil {
		return nil, err
	}
	endpoint := strings.TrimSuffix(u.String(), "/") + AuthorizePath
	o, err := url.Parse(opts.Origin)
	if err != nil || (o.Scheme != "http" && o.Scheme != "https") || o.Host == "" {
		return nil, fmt.Errorf("remote authorizer: Origin %q must be scheme://host[:port]", opts.Origin)
	}
	origin := strings.ToLower(o.Scheme) + "://" + strings.ToLower(o.Host)
	hc := opts.Client
	if hc == nil {
		hc = &http.Client{Timeout: 5 * time.Second}
	}
	return func(ctx context.Context, c *Claims, r *http.Request) error {
		action, resource, err := opts.Map(r)
		if err != nil {
			return err
		}
		raw, err := credentialFrom(r.Header)
		if err != nil {
			return err
		}
		pop, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(r.Header.Get(PoPHeader), "="))
		if err != nil {
			return Errorf(ReasonPoPMalformed, "the %s header is not unpadded base64url", PoPHeader)
		}
		// The middleware has read the body and put it back as a reader;
		// read it again for its digest and put it back once more.
		var body []byte
		if r.Body != nil && r.Body != http.NoBody {
			if body, err = io.ReadAll(r.Body); err != nil {
				return Errorf(ReasonRequestMalformed, "reading the request body failed")
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		bd := sha256.Sum256(body)
		ru := r.RequestURI
		if ru == "" || !strings.HasPrefix(ru, "/") {
			ru = r.URL.RequestURI()
		}
		q := AuthorizeRequest{
			Credential: raw, PoP: pop, Method: r.Method, Target: origin + ru, BodySHA256: bd[:],
			Audience: opts.Audience, Action: action, Resource: resource,
		}
		if opts.Context != nil {
			q.Context = opts.Context(r)
		} else if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			q.Context.SourceIP = host
		}
		d, err := PostAuthorize(ctx, hc, endpoint, &q)
		var pe *Error
		if errors.As(err, &pe) && pe.Reason != ReasonUnavailable && pe.Reason != ReasonInternal {
			return pe
		}
		if err != nil {
			return &Error{Reason: ReasonUnavailable, Detail: "the relying party cannot reach the verifier for a decision; retry later", Err: err}
		}
		return d.Err()
	}, nil
}

// PostAuthorize sends q to a verifier's /v1/authorize endpoint and returns
// its decision. A problem document comes back as an *Error.
func PostAuthorize(ctx context.Context, hc *http.Client, endpoint string, q *AuthorizeRequest) (*Decision, error) {
	b, err := json.Marshal(q)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", AuthorizeMediaType)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, ReadProblem(resp)
	}
	var d Decision
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&d); err != nil {
		return nil, fmt.Errorf("decoding the verifier's decision: %w", err)
	}
	if d.Decision != Permit && d.Decision != Deny {
		return nil, fmt.Errorf("the verifier's decision %q is neither permit nor deny", d.Decision)
	}
	return &d, nil
}
