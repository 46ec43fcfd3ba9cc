package agentside

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// Defaults of [RenewerOptions].
const (
	DefaultRenewMinBackoff     = time.Second
	DefaultRenewMaxBackoff     = 30 * time.Second
	DefaultRenewAttemptTimeout = 30 * time.Second
)

// renewFraction is the part of a credential's lifetime after which it is
// renewed (2/3: at 40 s of a 60 s credential, leaving 20 s for retries), and
// renewJitter the part of the lifetime by which the renewal is moved earlier
// at random, so that agents started together do not attest together.
const (
	renewFraction = 2.0 / 3.0
	renewJitter   = 0.1
)

// RenewOutcome classifies one attestation attempt of a [Renewer].
type RenewOutcome string

// The outcomes of an attempt.
const (
	RenewSuccess RenewOutcome = "success" // a credential was issued and verified
	RenewRefused RenewOutcome = "refused" // the verifier refused the evidence (a problem with a refusal reason)
	RenewFailed  RenewOutcome = "error"   // anything else: network, verifier unavailable or rate-limited, TPM, a credential that does not verify
)

// RenewerOptions configure [NewRenewer].
type RenewerOptions struct {
	// Agent holds the TPM-resident key; the Renewer attests with it for the
	// whole of its life, so every credential is bound to the same key.
	// Required. The Renewer does not close it.
	Agent *Agent
	// Client talks to the verifier. Required.
	Client *Client
	// Request is what every attestation asks for (audience, intent,
	// resources, delegation). Required; Audience must be set.
	Request *attest.Request
	// Keys are the verifier's signing keys, with which every issued
	// credential is verified before it is used (signature, audience, times,
	// and that its cnf is this agent's key). Default: [attest.RemoteKeys]
	// at the Client's base URL + /v1/keys (https unless loopback).
	Keys attest.KeySource
	// MinBackoff and MaxBackoff bound the wait between failed attempts:
	// MinBackoff, doubled after each failure, at most MaxBackoff, less up to
	// a quarter at random. Defaults DefaultRenewMinBackoff and
	// DefaultRenewMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// AttemptTimeout bounds one attestation (challenge, quote, attest).
	// Default DefaultRenewAttemptTimeout.
	AttemptTimeout time.Duration
	// OnAttempt, if set, is called after every attempt with its outcome and
	// error (nil on success), e.g. to count renewals in metrics. It must not
	// block.
	OnAttempt func(RenewOutcome, error)
	// Logger receives one record per attempt; default: none.
	Logger *slog.Logger
	// Now returns the current time; default time.Now. Tests replace it,
	// and Sleep with it.
	Now func() time.Time
	// Sleep waits d or until ctx is done; default a timer.
	Sleep func(ctx context.Context, d time.Duration) error
	// Jitter returns a random duration in [0, n) (0 when n <= 0); default
	// math/rand/v2. Tests make it deterministic.
	Jitter func(n time.Duration) time.Duration
}

// RenewStatus is a Renewer's state, for health checks and logs.
type RenewStatus struct {
	// Ready reports whether a credential that has not expired is held.
	Ready bool `json:"ready"`
	// Subject is the agent id (sub) of the current credential.
	Subject string `json:"subject,omitempty"`
	// IssuedAt and Expiry are the current credential's iat and exp; zero
	// before the first success.
	IssuedAt time.Time `json:"issued_at,omitzero"`
	Expiry   time.Time `json:"expiry,omitzero"`
	// LogIndex is the audit log index of the current credential's issuance.
	LogIndex string `json:"log_index,omitempty"`
	// LastSuccess and LastAttempt are the times of the last successful and
	// of the last attempt.
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	// LastError is the error of the last attempt; empty after a success.
	LastError string `json:"last_error,omitempty"`
	// LastReason is the reason of the last failure (an [attest.Reason]);
	// Refused reports whether it was a refusal by the verifier
	// (e.g. agent-quarantined, refs-image-digest) rather than a failure on
	// the way.
	LastReason attest.Reason `json:"last_reason,omitempty"`
	Refused    bool          `json:"refused,omitempty"`
	// Successes and Failures count attempts since the start.
	Successes uint64 `json:"successes"`
	Failures  uint64 `json:"failures"`
}

// held is one verified credential.
type held struct {
	raw      []byte
	iat, exp time.Time
}

// Renewer keeps one agent's credential fresh: it attests once when it
// starts, then again at about 2/3 of each credential's lifetime (less a
// random tenth, so agents started together spread out), and after a failure
// retries with capped exponential backoff while the old credential is still
// valid, and after it expired. Every issued credential is verified with the
// verifier's published keys before it is used.
//
// [Renewer.Credential] is a lock-free read for every request; it returns nil
// once the current credential has expired, so a request made while renewal
// keeps failing fails closed rather than carrying an expired credential.
// Refusals by the verifier (e.g. agent-quarantined after a monitor
// response) are logged with their reason and retried with the same backoff,
// since an operator may lift the cause; [Renewer.Status] shows the reason.
type Renewer struct {
	opts   RenewerOptions
	log    *slog.Logger
	attest func(ctx context.Context) (*Issued, error) // tests replace it
	cnf    *ecdsa.PublicKey

	cur       atomic.Pointer[held]
	ready     chan struct{}
	readyOnce sync.Once
	nudge     chan struct{} // RenewNow wakes the wait between attempts

	mu sync.Mutex
	st RenewStatus // guarded by mu; Ready is computed on read
}

// NewRenewer checks opts and returns a Renewer; [Renewer.Run] starts it.
func NewRenewer(opts RenewerOptions) (*Renewer, error) {
	switch {
	case opts.Agent == nil:
		return nil, errors.New("renewer: no agent")
	case opts.Client == nil:
		return nil, errors.New("renewer: no verifier client")
	case opts.Request == nil:
		return nil, errors.New("renewer: no attestation request")
	}
	if err := opts.Request.Validate(); err != nil {
		return nil, fmt.Errorf("renewer: %w", err)
	}
	cnf, ok := opts.Agent.PublicKey().(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("renewer: the agent key is not an ECDSA key")
	}
	if opts.Keys == nil {
		keys, err := attest.NewRemoteKeys(attest.RemoteKeysOptions{URL: opts.Client.endpoint("/v1/keys"), Now: opts.Now})
		if err != nil {
			return nil, fmt.Errorf("renewer: the verifier's keys: %w", err)
		}
		opts.Keys = keys
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultRenewMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultRenewMaxBackoff
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	if opts.AttemptTimeout <= 0 {
		opts.AttemptTimeout = DefaultRenewAttemptTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Sleep == nil {
		opts.Sleep = sleepCtx
	}
	if opts.Jitter == nil {
		opts.Jitter = func(n time.Duration) time.Duration {
			if n <= 0 {
				return 0
			}
			return rand.N(n)
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Renewer{opts: opts, log: log, cnf: cnf, ready: make(chan struct{}), nudge: make(chan struct{}, 1)}
	r.attest = func(ctx context.Context) (*Issued, error) {
		return opts.Agent.AttestIssued(ctx, opts.Client, opts.Request)
	}
	return r, nil
}

// Credential returns the current credential, or nil when there is none that
// has not expired (before the first success, or when renewal kept failing
// past the expiry). It is safe to call from any goroutine, and cheap.
func (r *Renewer) Credential() []byte {
	h := r.cur.Load()
	if h == nil || !r.opts.Now().Before(h.exp) {
		return nil
	}
	return h.raw
}

// Key returns the proof-of-possession key of every credential: the agent key.
func (r *Renewer) Key() crypto.Signer { return r.opts.Agent.Signer() }

// Transport returns a [Transport] over base that presents the Renewer's
// current credential and a proof of possession on every request.
func (r *Renewer) Transport(base http.RoundTripper) *Transport {
	return &Transport{Base: base, Credential: r.Credential, Key: r.Key(), Now: r.opts.Now}
}

// Ready is closed when the first credential has been obtained. (It stays
// closed; whether a credential is held now is [Renewer.Status].Ready or a
// non-nil [Renewer.Credential].)
func (r *Renewer) Ready() <-chan struct{} { return r.ready }

// Status returns the Renewer's state.
func (r *Renewer) Status() RenewStatus {
	r.mu.Lock()
	st := r.st
	r.mu.Unlock()
	st.Ready = r.Credential() != nil
	return st
}

// Run attests, then keeps the credential fresh until ctx is done, and
// returns ctx's error. Failures never end it: they are retried.
func (r *Renewer) Run(ctx context.Context) error {
	failures := 0
	for {
		var wait time.Duration
		if err := r.renew(ctx); err == nil {
			failures = 0
			wait = r.untilRenewal()
		} else {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			wait = backoff(failures, r.opts.MinBackoff, r.opts.MaxBackoff)
			wait -= r.opts.Jitter(wait / 4)
			failures++
			r.logFailure(err, wait)
		}
		if err := r.wait(ctx, wait); err != nil {
			return err
		}
	}
}

// RenewNow asks for an attestation now instead of at the planned time: a
// relying party refused the current credential as revoked (the monitor
// revokes a credential that was used without its key, say), so waiting
// for the planned renewal would leave the agent refused until then. It
// never blocks; asks within MinBackoff of the last attempt are ignored, so
// a relying party that keeps refusing cannot make the agent flood the
// verifier.
func (r *Renewer) RenewNow() {
	r.mu.Lock()
	last := r.st.LastAttempt
	r.mu.Unlock()
	if !last.IsZero() && r.opts.Now().Sub(last) < r.opts.MinBackoff {
		return
	}
	select {
	case r.nudge <- struct{}{}:
	default:
	}
}

// wait sleeps d, or until RenewNow is called, or until ctx is done (its
// error is then returned).
func (r *Renewer) wait(ctx context.Context, d time.Duration) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-r.nudge:
			cancel()
		case <-wctx.Done():
		}
	}()
	_ = r.opts.Sleep(wctx, d)
	return ctx.Err()
}

// backoff is the wait after the given number of earlier consecutive
// failures: lo, 2·lo, 4·lo, … at most hi.
func backoff(failures int, lo, hi time.Duration) time.Duration {
	d := lo
	for range failures {
		if d >= hi/2 {
			return hi
		}
		d *= 2
	}
	return min(d, hi)
}

// untilRenewal is the wait until the current credential should be renewed.
func (r *Renewer) untilRenewal() time.Duration {
	h := r.cur.Load()
	if h == nil {
		return 0
	}
	life := h.exp.Sub(h.iat)
	at := h.iat.Add(time.Duration(float64(life) * renewFraction))
	at = at.Add(-r.opts.Jitter(time.Duration(float64(life) * renewJitter)))
	return max(at.Sub(r.opts.Now()), 0)
}

// renew makes one attempt and records its outcome.
func (r *Renewer) renew(ctx context.Context) error {
	actx, cancel := context.WithTimeout(ctx, r.opts.AttemptTimeout)
	defer cancel()
	start := r.opts.Now()
	iss, err := r.attest(actx)
	var h *held
	var claims *attest.Claims
	if err == nil {
		h, claims, err = r.check(actx, iss.Credential)
	}
	if err != nil && ctx.Err() != nil {
		return err // shutting down: not a failure worth recording
	}
	outcome := RenewSuccess
	r.mu.Lock()
	r.st.LastAttempt = start
	if err == nil {
		r.cur.Store(h)
		r.st.Subject, r.st.IssuedAt, r.st.Expiry, r.st.LogIndex = claims.Subject, h.iat, h.exp, iss.LogIndex
		r.st.LastSuccess, r.st.LastError, r.st.LastReason, r.st.Refused = start, "", "", false
		r.st.Successes++
	} else {
		outcome = RenewFailed
		if isRefusal(err) {
			outcome = RenewRefused
		}
		r.st.LastError, r.st.LastReason, r.st.Refused = err.Error(), failureReason(err), outcome == RenewRefused
		r.st.Failures++
	}
	r.mu.Unlock()
	if err == nil {
		r.readyOnce.Do(func() { close(r.ready) })
		r.log.Info("credential renewed", "subject", claims.Subject, "expires", h.exp.UTC().Format(time.RFC3339),
			"lifetime", h.exp.Sub(h.iat), "log_index", iss.LogIndex)
	}
	if r.opts.OnAttempt != nil {
		r.opts.OnAttempt(outcome, err)
	}
	return err
}

// check verifies an issued credential with the verifier's keys, as a relying
// party would, and that it is bound to this agent's key.
func (r *Renewer) check(ctx context.Context, raw []byte) (*held, *attest.Claims, error) {
	keys, err := r.opts.Keys.KeySet(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("verifying the issued credential: the verifier's keys: %w", err)
	}
	copts := attest.CredentialOptions{Audience: []string{r.opts.Request.Audience}, Now: r.opts.Now}
	c, err := attest.VerifyCredential(raw, keys, copts)
	if attest.ReasonOf(err) == attest.ReasonCredentialKeyUnknown {
		if kr, ok := r.opts.Keys.(attest.KeyRefresher); ok {
			if keys, kerr := kr.Refresh(ctx); kerr == nil {
				c, err = attest.VerifyCredential(raw, keys, copts)
			}
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("verifying the issued credential: %w", err)
	}
	if pub, err := attest.ECDSAPublic(c.Confirm.Key); err != nil || !pub.Equal(r.cnf) {
		return nil, nil, errors.New("verifying the issued credential: its cnf key is not this agent's key")
	}
	return &held{raw: raw, iat: c.IssuedAtTime(), exp: c.ExpiresAt()}, c, nil
}

// isRefusal reports whether err is the verifier refusing the evidence (a
// problem document whose reason is not a transient one), as opposed to a
// failure on the way.
func isRefusal(err error) bool {
	var ae *attest.Error
	var pe *attest.ProblemError
	if !errors.As(err, &ae) || !errors.As(err, &pe) {
		return false
	}
	switch ae.Reason {
	case attest.ReasonUnavailable, attest.ReasonRateLimited, attest.ReasonInternal:
		return false
	}
	return true
}

// failureReason is the reason of a failed attempt: the verifier's, or
// unavailable when it could not be reached.
func failureReason(err error) attest.Reason {
	var ae *attest.Error
	var ue *url.Error
	switch {
	case errors.As(err, &ae):
		return ae.Reason
	case errors.As(err, &ue), errors.Is(err, context.DeadlineExceeded):
		return attest.ReasonUnavailable
	}
	return attest.ReasonInternal
}

func (r *Renewer) logFailure(err error, retry time.Duration) {
	attrs := []any{"reason", failureReason(err), "error", err, "retry_in", retry.Round(time.Millisecond)}
	h := r.cur.Load()
	switch {
	case h == nil:
		attrs = append(attrs, "credential", "none")
	case r.opts.Now().Before(h.exp):
		attrs = append(attrs, "credential_valid_for", h.exp.Sub(r.opts.Now()).Round(time.Millisecond))
	default:
		attrs = append(attrs, "credential", "expired; requests fail closed")
	}
	if isRefusal(err) {
		r.log.Warn("the verifier refused the attestation", attrs...)
		return
	}
	r.log.Warn("renewing the credential failed", attrs...)
}
