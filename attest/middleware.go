package attest

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultMaxBodySize bounds the request body the middleware reads to check
// the proof's body digest.
const DefaultMaxBodySize = 1 << 20

// MiddlewareOptions configure [NewMiddleware].
type MiddlewareOptions struct {
	// Keys gives the verifier's keys (required): [StaticKeys] or
	// [RemoteKeys]. If it is a [KeyRefresher], an unknown kid triggers a
	// (rate-limited) refresh before the credential is refused.
	Keys KeySource
	// Credential says which credentials are accepted; Credential.Audience is
	// required.
	Credential CredentialOptions
	// Origin is this service's external origin as clients address it,
	// "scheme://host[:port]" (e.g. "https://docs.example"). Proofs of
	// possession sign TargetURI(Origin + request URI), so it must be what
	// clients put in their URLs, including a non-default port. Required.
	Origin string
	// PoP verifies proofs and keeps the replay cache. Default
	// NewPoPVerifier(PoPOptions{}). Share one between middlewares that
	// serve the same origin.
	PoP *PoPVerifier
	// MaxBodySize bounds the body read for the digest check; larger bodies
	// are refused with 413. Default DefaultMaxBodySize.
	MaxBodySize int64
	// Revoked, if set, is asked after the credential and proof verified. An
	// error refuses the request with 503 (fail closed).
	Revoked func(ctx context.Context, c *Claims) (bool, error)
	// Authorize, if set, decides whether the credential allows this request
	// (e.g. checks c.Scope; see [ScopeAuthorizer] and [NewRemoteAuthorizer]).
	// A non-nil error refuses with 403 (503 for ReasonUnavailable); an *Error's
	// Reason and Detail are shown to the client, any other error's text is
	// not (it is logged), and the reason is ReasonScopeInsufficient.
	// Authorize must not consume r.Body: the handler reads it next.
	Authorize func(ctx context.Context, c *Claims, r *http.Request) error
	// Report, if set, is called once for every request whose credential
	// verified, accepted or refused, after the decision (e.g.
	// [Reporter.Report], which feeds the verifier's monitor). It must not
	// block.
	Report func(RequestReport)
	// Logger receives one record per refusal, with internal causes. Default:
	// no logging.
	Logger *slog.Logger
}

type claimsKey struct{}

// ClaimsFromContext returns the verified credential claims that the
// middleware put into a request's context.
func ClaimsFromContext(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(*Claims)
	return c, ok
}

// NewMiddleware returns an http.Handler wrapper that lets a request through
// only with a valid Vouch credential ("Authorization: Vouch <base64url>")
// and a valid proof of possession of its cnf key (Vouch-PoP header) for this
// method, URI, body and credential. The handler finds the claims with
// [ClaimsFromContext] and the body unchanged in r.Body. A single-use
// credential (claim -65540) is accepted once by each middleware; presenting
// it again gives ReasonCredentialReused.
//
// Refusals are RFC 9457 problem documents with a WWW-Authenticate:
// Vouch error="<reason>" header: 401 for credential and proof failures, 403
// when Authorize refuses, 413 for a body over MaxBodySize, 503 when keys or
// the revocation check are unavailable or the replay cache is full.
func NewMiddleware(opts MiddlewareOptions) (func(http.Handler) http.Handler, error) {
	if opts.Keys == nil {
		return nil, errors.New("attest middleware: Keys is required")
	}
	if len(opts.Credential.Audience) == 0 {
		return nil, errors.New("attest middleware: Credential.Audience is required")
	}
	origin, err := url.Parse(opts.Origin)
	if err != nil || (origin.Scheme != "https" && origin.Scheme != "http") || origin.Host == "" ||
		origin.User != nil || (origin.Path != "" && origin.Path != "/") || origin.RawQuery != "" || origin.Fragment != "" {
		return nil, fmt.Errorf("attest middleware: Origin %q must be scheme://host[:port]", opts.Origin)
	}
	if opts.PoP == nil {
		opts.PoP = NewPoPVerifier(PoPOptions{})
	}
	if opts.MaxBodySize <= 0 {
		opts.MaxBodySize = DefaultMaxBodySize
	}
	m := &middleware{
		opts:      opts,
		origin:    strings.ToLower(origin.Scheme) + "://" + strings.ToLower(origin.Host),
		singleUse: newReplayCache(opts.PoP.cache.perShard * len(opts.PoP.cache.shards) / 16),
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, status, err := m.check(r)
			if m.opts.Report != nil && c != nil {
				m.report(r, c, err)
			}
			if err != nil {
				m.refuse(w, r, status, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), claimsKey{}, c)))
		})
	}, nil
}

type middleware struct {
	opts      MiddlewareOptions
	origin    string       // lower-case scheme://host[:port]
	singleUse *replayCache // cti of single-use credentials already accepted
}

// maxEncodedCredential is the base64url length of MaxCredentialSize bytes.
var maxEncodedCredential = base64.RawURLEncoding.EncodedLen(MaxCredentialSize)

// check verifies r and returns its claims, or the HTTP status and error of
// the refusal, with the claims when the credential itself verified. On
// success r.Body holds the whole body again.
func (m *middleware) check(r *http.Request) (*Claims, int, error) {
	ctx := r.Context()
	raw, err := credentialFrom(r.Header)
	if err != nil {
		return nil, http.StatusUnauthorized, err
	}
	// A malformed or missing proof is refused, but only after the
	// credential verified, so that the refusal can be reported against it
	// (a valid credential without its proof is how a stolen one looks).
	pop, popErr := popFrom(r.Header)

	keys, err := m.opts.Keys.KeySet(ctx)
	if err != nil {
		return nil, http.StatusServiceUnavailable, unavailable(err, "the relying party cannot get the verifier's keys; retry later")
	}
	c, cnf, err := verifyCredential(raw, keys, &m.opts.Credential)
	if ReasonOf(err) == ReasonCredentialKeyUnknown {
		if kr, ok := m.opts.Keys.(KeyRefresher); ok {
			if fresh, ferr := kr.Refresh(ctx); ferr == nil && fresh != keys {
				c, cnf, err = verifyCredential(raw, fresh, &m.opts.Credential)
			}
		}
	}
	if err != nil {
		return nil, statusFor(err), err
	}
	if popErr != nil {
		return c, http.StatusUnauthorized, popErr
	}

	body, status, err := m.readBody(r)
	if err != nil {
		return c, status, err
	}
	if _, err := m.opts.PoP.Verify(pop, cnf, r.Method, m.target(r), body, raw); err != nil {
		return c, statusFor(err), err
	}

	if m.opts.Revoked != nil {
		revoked, err := m.opts.Revoked(ctx, c)
		if err != nil {
			return c, http.StatusServiceUnavailable, unavailable(err, "the relying party cannot check revocation; retry later")
		}
		if revoked {
			return c, http.StatusUnauthorized, Errorf(ReasonCredentialRevoked, "credential %x was revoked: attest again for a new one", c.ID)
		}
	}
	if m.opts.Authorize != nil {
		if err := m.opts.Authorize(ctx, c, r); err != nil {
			var e *Error
			if !errors.As(err, &e) {
				return c, http.StatusForbidden, &Error{Reason: ReasonScopeInsufficient, Detail: "the credential does not allow this request", Err: err}
			}
			return c, authorizeStatus(e.Reason), err
		}
	}
	if c.SingleUse {
		// Remember the cti until the credential expires (plus skew). Last,
		// so that a refused request does not use the credential up.
		var cti [CredentialIDSize]byte
		copy(cti[:], c.ID)
		now := time.Now()
		if m.opts.Credential.Now != nil {
			now = m.opts.Credential.Now()
		}
		ttl := c.ExpiresAt().Add(credentialSkew(&m.opts.Credential)).Sub(now)
		switch m.singleUse.add(cti, now, ttl) {
		case ReasonPoPReplayed:
			return c, http.StatusUnauthorized, Errorf(ReasonCredentialReused, "single-use credential %x was already used: attest again for a new one", c.ID)
		case ReasonPoPCacheFull:
			return c, http.StatusServiceUnavailable, Errorf(ReasonPoPCacheFull, "the relying party's single-use credential cache is full; retry shortly")
		}
	}
	return c, 0, nil
}

// report hands the outcome of a request with a verified credential to the
// Report hook.
func (m *middleware) report(r *http.Request, c *Claims, err error) {
	rep := RequestReport{
		Time: time.Now(), CTI: c.ID, Subject: c.Subject, Method: r.Method, Path: r.URL.Path,
		Outcome: ReportAccepted, SourceIP: remoteIP(r.RemoteAddr),
	}
	if m.opts.Credential.Now != nil {
		rep.Time = m.opts.Credential.Now()
	}
	if err != nil {
		rep.Outcome, rep.Reason = ReportRefused, ReasonOf(err)
	}
	m.opts.Report(rep)
}

// remoteIP is the host part of a RemoteAddr ("ip:port").
func remoteIP(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// popFrom extracts the proof of possession from the Vouch-PoP header.
func popFrom(h http.Header) ([]byte, error) {
	popB64 := h.Values(PoPHeader)
	if len(popB64) == 0 || popB64[0] == "" {
		return nil, Errorf(ReasonPoPMissing, "the request has no %s header: send a fresh proof of possession with every request", PoPHeader)
	}
	if len(popB64) > 1 {
		return nil, Errorf(ReasonPoPMalformed, "the request has %d %s headers; send exactly one", len(popB64), PoPHeader)
	}
	if len(popB64[0]) > base64.RawURLEncoding.EncodedLen(MaxPoPSize) {
		return nil, Errorf(ReasonPoPMalformed, "the %s header is longer than a proof of possession can be", PoPHeader)
	}
	pop, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(popB64[0], "="))
	if err != nil {
		return nil, Errorf(ReasonPoPMalformed, "the %s header is not unpadded base64url", PoPHeader)
	}
	return pop, nil
}

// credentialFrom extracts the credential from "Authorization: Vouch <b64url>".
func credentialFrom(h http.Header) ([]byte, error) {
	auth := h.Values("Authorization")
	if len(auth) == 0 || auth[0] == "" {
		return nil, Errorf(ReasonCredentialMissing, "the request has no Authorization header: send \"Authorization: %s <base64url credential>\"", AuthScheme)
	}
	if len(auth) > 1 {
		return nil, Errorf(ReasonCredentialMalformed, "the request has %d Authorization headers; send exactly one", len(auth))
	}
	scheme, token, _ := strings.Cut(auth[0], " ")
	if !strings.EqualFold(scheme, AuthScheme) {
		return nil, Errorf(ReasonCredentialMissing, "the Authorization scheme is not %s: send \"Authorization: %s <base64url credential>\"", AuthScheme, AuthScheme)
	}
	token = strings.TrimRight(strings.TrimSpace(token), "=")
	if token == "" {
		return nil, Errorf(ReasonCredentialMissing, "the Authorization header holds no credential")
	}
	if len(token) > maxEncodedCredential {
		return nil, Errorf(ReasonCredentialMalformed, "the credential is longer than the %d bytes accepted", MaxCredentialSize)
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return nil, Errorf(ReasonCredentialMalformed, "the credential is not unpadded base64url")
	}
	return raw, nil
}

// readBody reads the whole body, bounded, and puts it back into r.Body.
func (m *middleware) readBody(r *http.Request) ([]byte, int, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, 0, nil
	}
	max := m.opts.MaxBodySize
	if r.ContentLength > max {
		return nil, http.StatusRequestEntityTooLarge, Errorf(ReasonRequestTooLarge, "the body is %d bytes; at most %d are accepted", r.ContentLength, max)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	r.Body.Close()
	if err != nil {
		return nil, http.StatusBadRequest, Errorf(ReasonRequestMalformed, "reading the request body failed")
	}
	if int64(len(body)) > max {
		return nil, http.StatusRequestEntityTooLarge, Errorf(ReasonRequestTooLarge, "the body is larger than the %d bytes accepted", max)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return body, 0, nil
}

// target is the URI the proof must name: the configured origin and the
// request-target exactly as the client sent it (r.RequestURI, which
// http.StripPrefix and routers leave alone), or r.URL when the handler is
// called without a server.
func (m *middleware) target(r *http.Request) string {
	ru := r.RequestURI
	if ru == "" || !strings.HasPrefix(ru, "/") {
		// No server (tests) or absolute-form (proxy requests): use the
		// parsed path and query.
		ru = r.URL.RequestURI()
	}
	return m.origin + ru
}

// authorizeStatus maps a refusal of the Authorize hook to its HTTP status.
// A refusal of the credential itself (revoked, reused, expired: the agent
// must attest again) is 401, the status this middleware gives the same
// reason when it finds it without the hook; the verifier's decision
// (POST /v1/authorize) may be first to know of a revocation, and the agent
// must see the same answer whichever path refused. Every other refusal
// (delegation, intent, policy, environment, quarantine) is 403: the
// credential is genuine, the request is not allowed.
func authorizeStatus(r Reason) int {
	switch r {
	case ReasonUnavailable, ReasonPoPCacheFull:
		return http.StatusServiceUnavailable
	case ReasonInternal:
		return http.StatusInternalServerError
	case ReasonCredentialMissing, ReasonCredentialMalformed, ReasonCredentialKeyUnknown, ReasonCredentialAlg,
		ReasonCredentialSignature, ReasonCredentialExpired, ReasonCredentialNotYetValid, ReasonCredentialAudience,
		ReasonCredentialProfile, ReasonCredentialRevoked, ReasonCredentialReused,
		ReasonPoPMissing, ReasonPoPMalformed, ReasonPoPSignature, ReasonPoPReplayed, ReasonPoPStale,
		ReasonPoPTarget, ReasonPoPBody, ReasonPoPCredential:
		return http.StatusUnauthorized
	}
	return http.StatusForbidden
}

// statusFor maps a verification failure to its HTTP status.
func statusFor(err error) int {
	switch ReasonOf(err) {
	case ReasonPoPCacheFull, ReasonUnavailable:
		return http.StatusServiceUnavailable
	case ReasonInternal:
		return http.StatusInternalServerError
	}
	return http.StatusUnauthorized
}

// unavailable hides the internal cause (kept for the log) behind detail.
func unavailable(cause error, detail string) error {
	return &Error{Reason: ReasonUnavailable, Detail: detail, Err: cause}
}

func (m *middleware) refuse(w http.ResponseWriter, r *http.Request, status int, err error) {
	reason := ReasonOf(err)
	if m.opts.Logger != nil {
		m.opts.Logger.LogAttrs(r.Context(), slog.LevelInfo, "vouch: request refused",
			slog.String("reason", string(reason)), slog.Int("status", status),
			slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.String("error", errorChain(err)))
	}
	p := ProblemFor(status, err)
	if reason == ReasonInternal {
		p.Detail = "the relying party failed; the error is in its log"
	}
	w.Header().Set("WWW-Authenticate", AuthScheme+` error="`+string(reason)+`"`)
	WriteProblem(w, p)
}

// errorChain renders err with its internal cause, for logs.
func errorChain(err error) string {
	msg := err.Error()
	var e *Error
	if errors.As(err, &e) && e.Err != nil && !strings.Contains(msg, e.Err.Error()) {
		msg += " (cause: " + e.Err.Error() + ")"
	}
	return msg
}
