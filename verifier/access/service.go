// Package access is the verifier's zero-trust authorization service: the
// scope a credential may carry at issuance (delegation ∩ intent ∩ policy),
// continuous decisions (POST /v1/authorize), just-in-time elevation (POST
// /v1/elevate), and the admin API through which users manage delegations
// (/v1/delegations, /v1/users), authenticated by signed requests or TLS
// client certificates. Decisions are made by package policy/authz; state
// lives in verifier/store; every decision becomes an audit record.
//
//	POST /v1/authorize                 ← attest.AuthorizeRequest (JSON) → 200 attest.Decision
//	POST /v1/elevate                   ← credential + PoP headers, {"action","resource"} → 200 application/cwt (single use)
//	POST /v1/delegations               ← DelegationRequest            → 201 DelegationView   (signed)
//	GET  /v1/delegations[?user=ID]                                    → 200 [DelegationView] (signed)
//	GET  /v1/delegations/{id}                                         → 200 DelegationView   (signed)
//	POST /v1/delegations/{id}/suspend|resume|revoke ← {"reason"}     → 200 DelegationView   (signed)
//	POST /v1/users                     ← UserRequest (admins)         → 201 UserView         (signed)
//	GET  /v1/users                     (admins)                       → 200 [UserView]       (signed)
package access

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/policy/authz"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/issuer"
	"github.com/vouch-dev/vouch/verifier/store"
)

// Defaults and limits of Options.
const (
	// MaxElevationTTL caps the lifetime of single-use elevation credentials.
	MaxElevationTTL = 10 * time.Second
	// DefaultDelegationCacheTTL is how long a delegation read from the
	// database is used before it is read again. Status changes made through
	// this process take effect at once; changes made through another
	// replica within this time, which keeps revocation under 1 s.
	DefaultDelegationCacheTTL = 250 * time.Millisecond
	// DefaultPoPCacheSize sizes the replay cache of proofs checked by
	// /v1/authorize and /v1/elevate: at the default 36 s retention, about
	// 29,000 decisions per second.
	DefaultPoPCacheSize = 1 << 20
	// MaxDelegationLifetime caps how long a delegation may last.
	MaxDelegationLifetime = 90 * 24 * time.Hour
)

// Options configure a Service.
type Options struct {
	Store  *store.Store
	Keys   *issuer.Keys
	Policy *authz.Holder
	// Issuer is the iss of credentials (elevations are issued too).
	Issuer string
	// Build names this build in audit records.
	Build string
	// ElevationTTL is the lifetime of elevation credentials; default and
	// maximum MaxElevationTTL.
	ElevationTTL time.Duration
	// ExternalURL is the verifier's origin as agents and users address it
	// (scheme://host[:port]); proofs on /v1/elevate and signed admin
	// requests must name it. Empty: taken from each request (its Host
	// header and whether it came over TLS), fine behind no proxy.
	ExternalURL string
	// DelegationCacheTTL: default DefaultDelegationCacheTTL; negative
	// disables the cache.
	DelegationCacheTTL time.Duration
	// PoPCacheSize: default DefaultPoPCacheSize.
	PoPCacheSize int
	// Audit receives a record per decision; nil records nothing (yet).
	Audit audit.Log
	// OnDecision, if set, learns every decision about a verified credential
	// (the behaviour monitor). It must not block.
	OnDecision func(context.Context, Decided)
	// OnRevoked, if set, is called after credentials were revoked (a
	// delegation suspended or revoked): the revocation feed reads them.
	OnRevoked func()
	// RevocationHead, if set, returns the revocation feed's head; answers of
	// the revocation check are cached while it does not move.
	RevocationHead func() int64
	// Held, if set, refuses elevations for an agent, machine or workload
	// that is quarantined (the verifier's quarantine check).
	Held func(ctx context.Context, sub string, akDigest []byte, imageDigest string) error
	// Logger: slog.Default() when nil.
	Logger *slog.Logger
	// Now: time.Now when nil.
	Now func() time.Time
}

// Service is the authorization service. It is safe for concurrent use.
type Service struct {
	opts    Options
	log     *slog.Logger
	now     func() time.Time
	pop     *attest.PoPVerifier
	creds   *lru.Cache[[32]byte, *verified]
	grants  *grantCache
	signed  *nonceCache // ids of signed admin requests already seen
	origin  string      // lower-case ExternalURL, or ""
	elevTTL time.Duration

	revChecks *lru.Cache[string, revocationCheck] // by cti
	revLocal  atomic.Int64                        // revocations made in this process
}

// New returns a Service.
func New(opts Options) (*Service, error) {
	if opts.Store == nil || opts.Keys == nil || opts.Policy == nil || opts.Policy.Engine() == nil {
		return nil, errors.New("access: Store, Keys and Policy are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ElevationTTL <= 0 {
		opts.ElevationTTL = MaxElevationTTL
	}
	if opts.ElevationTTL > MaxElevationTTL || opts.ElevationTTL < time.Second {
		return nil, fmt.Errorf("access: elevation lifetime %v is outside 1s..%v", opts.ElevationTTL, MaxElevationTTL)
	}
	if opts.DelegationCacheTTL == 0 {
		opts.DelegationCacheTTL = DefaultDelegationCacheTTL
	}
	if opts.PoPCacheSize <= 0 {
		opts.PoPCacheSize = DefaultPoPCacheSize
	}
	s := &Service{opts: opts, log: opts.Logger, now: opts.Now, elevTTL: opts.ElevationTTL}
	if opts.ExternalURL != "" {
		o, err := parseOrigin(opts.ExternalURL)
		if err != nil {
			return nil, fmt.Errorf("access: ExternalURL: %w", err)
		}
		s.origin = o
	}
	s.pop = attest.NewPoPVerifier(attest.PoPOptions{CacheSize: opts.PoPCacheSize, Now: opts.Now})
	var err error
	if s.creds, err = lru.New[[32]byte, *verified](16384); err != nil {
		return nil, err
	}
	if s.revChecks, err = lru.New[string, revocationCheck](16384); err != nil {
		return nil, err
	}
	s.grants = newGrantCache(opts.DelegationCacheTTL)
	s.signed = newNonceCache(100_000)
	return s, nil
}

// Handle registers one route; the verifier wraps h with its error handling
// and metrics.
type Handle func(pattern, route string, h func(http.ResponseWriter, *http.Request) error)

// Register adds the service's routes.
func (s *Service) Register(handle Handle) {
	handle("POST "+attest.AuthorizePath, "authorize", s.handleAuthorize)
	handle("POST "+attest.ElevatePath, "elevate", s.handleElevate)
	handle("POST /v1/delegations", "delegations", s.admin(s.handleCreateDelegation))
	handle("GET /v1/delegations", "delegations", s.admin(s.handleListDelegations))
	handle("GET /v1/delegations/{id}", "delegations", s.admin(s.handleGetDelegation))
	handle("POST /v1/delegations/{id}/{op}", "delegations", s.admin(s.handleDelegationStatus))
	handle("POST /v1/users", "users", s.admin(s.handleAddUser))
	handle("GET /v1/users", "users", s.admin(s.handleListUsers))
}

// Engine returns the policy engine in force.
func (s *Service) Engine() *authz.Engine { return s.opts.Policy.Engine() }

// verified is a credential whose signature and shape were checked.
type verified struct {
	claims *attest.Claims
	cnf    *ecdsa.PublicKey
	agent  authz.Agent
}

// verifyCredential checks a credential issued by this verifier for the
// given audience ("" accepts the credential's own audience: the verifier
// looking at its own credential). The signature is checked once per
// credential (then cached by digest); the time claims every time.
func (s *Service) verifyCredential(raw []byte, audience string) (*verified, error) {
	key := sha256.Sum256(raw)
	if v, ok := s.creds.Get(key); ok {
		if audience != "" && v.claims.Audience != audience {
			return nil, attest.Errorf(attest.ReasonCredentialAudience, "credential audience is %q; the question comes from %q", v.claims.Audience, audience)
		}
		if err := s.checkTimes(v.claims); err != nil {
			return nil, err
		}
		return v, nil
	}
	if audience == "" {
		aud, err := peekAudience(raw)
		if err != nil {
			return nil, err
		}
		audience = aud
	}
	c, err := attest.VerifyCredential(raw, s.opts.Keys.KeySet(), attest.CredentialOptions{
		Audience: []string{audience}, Issuer: s.opts.Issuer, Now: s.now,
	})
	if err != nil {
		return nil, err
	}
	cnf, err := attest.ECDSAPublic(c.Confirm.Key)
	if err != nil {
		return nil, attest.Errorf(attest.ReasonCredentialMalformed, "credential cnf key: %w", err)
	}
	v := &verified{claims: c, cnf: cnf, agent: authz.AgentFromClaims(c)}
	s.creds.Add(key, v)
	return v, nil
}

// checkTimes re-checks exp and nbf of a cached credential, with the same
// skew as attest.VerifyCredential.
func (s *Service) checkTimes(c *attest.Claims) error {
	now, skew := s.now(), attest.DefaultCredentialSkew
	if !now.Before(c.ExpiresAt().Add(skew)) {
		return attest.Errorf(attest.ReasonCredentialExpired, "credential expired at %s (now %s, skew %v): obtain a fresh one from the verifier", c.ExpiresAt().UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), skew)
	}
	if now.Before(c.NotBeforeTime().Add(-skew)) {
		return attest.Errorf(attest.ReasonCredentialNotYetValid, "credential is not valid before %s (now %s, skew %v)", c.NotBeforeTime().UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), skew)
	}
	return nil
}

// grant returns the delegation with this id as the engine sees it, from the
// cache when fresh. A delegation that does not exist is an *attest.Error
// with ReasonDelegationUnknown; a store failure is ReasonUnavailable.
func (s *Service) grant(ctx context.Context, id string, fresh bool) (*authz.Grant, *store.Delegation, error) {
	now := time.Now() // cache age is wall-clock, whatever the decision clock says
	if !fresh {
		if e, ok := s.grants.get(id, now); ok {
			if e.g == nil {
				return nil, nil, attest.Errorf(attest.ReasonDelegationUnknown, "no delegation has id %q", id)
			}
			return e.g, e.d, nil
		}
	}
	d, err := s.opts.Store.Delegation(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		s.grants.put(id, nil, nil, now)
		return nil, nil, attest.Errorf(attest.ReasonDelegationUnknown, "no delegation has id %q", id)
	}
	if err != nil {
		return nil, nil, unavailable(err)
	}
	g, err := GrantOf(d)
	if err != nil {
		return nil, nil, fmt.Errorf("delegation %s as stored: %w", id, err)
	}
	s.grants.put(id, g, d, now)
	return g, d, nil
}

// GrantOf converts a stored delegation into what the engine decides on.
func GrantOf(d *store.Delegation) (*authz.Grant, error) {
	g := &authz.Grant{
		ID: d.ID, User: d.User, Intent: d.Intent, Status: authz.Status(d.Status),
		ImageDigests: d.ImageDigests, AgentIDs: d.AgentIDs, Actions: d.Actions,
		NotBefore: d.NotBefore, ExpiresAt: d.ExpiresAt,
	}
	for _, r := range d.Resources {
		res, err := attest.ParseResource(r)
		if err != nil {
			return nil, err
		}
		g.Resources = append(g.Resources, res)
	}
	for _, n := range d.Networks {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			return nil, fmt.Errorf("network %q: %w", n, err)
		}
		g.Networks = append(g.Networks, p.Masked())
	}
	if d.Window != "" {
		w, err := authz.ParseWindow(d.Window)
		if err != nil {
			return nil, err
		}
		g.Window = w
	}
	return g, nil
}

// grantCache remembers delegations for a short time, so that a busy
// relying party does not read the same row thousands of times a second.
type grantCache struct {
	ttl time.Duration
	mu  sync.RWMutex
	m   map[string]grantEntry
}

type grantEntry struct {
	g  *authz.Grant // nil: known not to exist
	d  *store.Delegation
	at time.Time
}

const maxCachedGrants = 100_000

func newGrantCache(ttl time.Duration) *grantCache {
	return &grantCache{ttl: ttl, m: map[string]grantEntry{}}
}

func (c *grantCache) get(id string, now time.Time) (grantEntry, bool) {
	if c.ttl < 0 {
		return grantEntry{}, false
	}
	c.mu.RLock()
	e, ok := c.m[id]
	c.mu.RUnlock()
	if !ok || now.Sub(e.at) >= c.ttl || now.Before(e.at) {
		return grantEntry{}, false
	}
	return e, true
}

func (c *grantCache) put(id string, g *authz.Grant, d *store.Delegation, now time.Time) {
	if c.ttl < 0 {
		return
	}
	c.mu.Lock()
	if len(c.m) >= maxCachedGrants {
		c.m = map[string]grantEntry{} // crude, and rare: start over
	}
	c.m[id] = grantEntry{g: g, d: d, at: now}
	c.mu.Unlock()
}

func (c *grantCache) forget(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

// origin returns the verifier's origin for proofs and signed requests.
func (s *Service) originOf(r *http.Request) string {
	if s.origin != "" {
		return s.origin
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + strings.ToLower(r.Host)
}

func parseOrigin(s string) (string, error) {
	i := strings.Index(s, "://")
	if i <= 0 {
		return "", fmt.Errorf("%q is not scheme://host[:port]", s)
	}
	scheme, host := strings.ToLower(s[:i]), strings.TrimSuffix(strings.ToLower(s[i+3:]), "/")
	if (scheme != "http" && scheme != "https") || host == "" || strings.ContainsAny(host, "/?#@") {
		return "", fmt.Errorf("%q is not scheme://host[:port]", s)
	}
	return scheme + "://" + host, nil
}

// requestTarget is the URI a proof or signature on r must name.
func (s *Service) requestTarget(r *http.Request) string {
	ru := r.RequestURI
	if ru == "" || !strings.HasPrefix(ru, "/") {
		ru = r.URL.RequestURI()
	}
	return s.originOf(r) + ru
}

func sourceAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// recordDecision records a decision at request rate: without waiting for
// durability when the log can (audit.Enqueuer), which keeps /v1/authorize
// at thousands of decisions per second; see audit.Enqueuer for the window.
func (s *Service) recordDecision(ctx context.Context, r *audit.Record) error {
	q, ok := s.opts.Audit.(audit.Enqueuer)
	if !ok {
		return s.record(ctx, r)
	}
	r.Build = s.opts.Build
	if r.TimeMillis == 0 {
		r.TimeMillis = s.now().UnixMilli()
	}
	if err := q.Enqueue(ctx, r); err != nil {
		return &attest.Error{Reason: attest.ReasonUnavailable, Detail: "the audit log is unavailable; no decision is made without its record", Err: err}
	}
	return nil
}

// record sends an audit record, if an audit log is configured, and waits
// for it to be durable. A failure to record is returned: callers fail closed.
func (s *Service) record(ctx context.Context, r *audit.Record) error {
	if s.opts.Audit == nil {
		return nil
	}
	r.Build = s.opts.Build
	if r.TimeMillis == 0 {
		r.TimeMillis = s.now().UnixMilli()
	}
	if _, err := s.opts.Audit.Append(ctx, r); err != nil {
		return &attest.Error{Reason: attest.ReasonUnavailable, Detail: "the audit log is unavailable; no decision is made without its record", Err: err}
	}
	return nil
}

func reasonsOf(rs []attest.DecisionReason) []attest.Reason {
	out := make([]attest.Reason, len(rs))
	for i, r := range rs {
		out[i] = r.Reason
	}
	return out
}

func unavailable(err error) error {
	return &attest.Error{Reason: attest.ReasonUnavailable, Detail: "the verifier's database is unavailable; retry shortly", Err: err}
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}
