package verifier

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/access"
	"github.com/vouch-dev/vouch/verifier/appraisal"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/issuer"
	"github.com/vouch-dev/vouch/verifier/store"
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /v1/challenge", s.instrument("challenge", s.handleChallenge))
	mux.Handle("POST /v1/attest", s.instrument("attest", s.handleAttest))
	mux.Handle("GET /v1/keys", s.instrument("keys", s.handleKeys))
	s.enroll.Register(mux, s.instrument)
	s.access.Register(func(pattern, route string, h func(http.ResponseWriter, *http.Request) error) {
		mux.Handle(pattern, s.instrument(route, h))
	})
	if s.tlog != nil {
		mux.Handle("GET /v1/log/", s.limited("log", http.StripPrefix("/v1/log", audit.Handler(s.cfg.DataDir, s.tlog.PublicKey()))))
	}
	mux.Handle("GET /v1/revocations", s.instrument("revocations", s.handleRevocations))
	mux.Handle("GET /v1/revocations/stream", s.instrument("revocations-stream", s.handleRevocationStream))
	mux.Handle("POST /v1/signals", s.instrument("signals", s.handleSignals))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", s.handleReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		attest.WriteProblem(w, &attest.Problem{
			Type: "about:blank", Title: "not found", Status: http.StatusNotFound,
			Detail: fmt.Sprintf("%s %s is not part of the Vouch API", r.Method, r.URL.Path), Reason: "not-found",
		})
	})
	return mux
}

// ChallengeResponse is the body of POST /v1/challenge.
type ChallengeResponse struct {
	Nonce     []byte    `json:"nonce"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (s *Server) handleChallenge(w http.ResponseWriter, r *http.Request) error {
	nonce := make([]byte, attest.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return fmt.Errorf("nonce: %w", err)
	}
	now := s.cfg.Now()
	exp := now.Add(s.cfg.NonceTTL)
	if err := s.store.PutNonce(r.Context(), nonce, now, exp); err != nil {
		return unavailable(err)
	}
	s.metrics.nonces.Inc()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusCreated)
	return json.NewEncoder(w).Encode(ChallengeResponse{Nonce: nonce, ExpiresAt: exp.UTC()})
}

func (s *Server) handleAttest(w http.ResponseWriter, r *http.Request) error {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != attest.EvidenceMediaType {
		err := attest.Errorf(attest.ReasonUnsupportedMediaType, "send evidence as %s, not %q", attest.EvidenceMediaType, r.Header.Get("Content-Type"))
		s.auditRefusal(r.Context(), nil, nil, err)
		return err
	}
	raw, err := readBody(w, r, attest.MaxEvidenceSize)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = attest.Errorf(attest.ReasonRequestTooLarge, "evidence is larger than %d bytes", attest.MaxEvidenceSize)
		} else {
			err = attest.Errorf(attest.ReasonRequestMalformed, "reading evidence: %w", err)
		}
		s.auditRefusal(r.Context(), nil, nil, err)
		return err
	}
	out, err := s.pipeline.Run(r.Context(), raw)
	if err == nil {
		if herr := s.held(r.Context(), out); herr != nil {
			err = &appraisal.StepError{Step: appraisal.StepHeld, Err: herr}
		}
	}
	if err != nil {
		s.refused(r.Context(), out, err)
		s.auditRefusal(r.Context(), raw, out, err)
		s.observeAttestation(r.Context(), out, err)
		return &appraisalError{err: err, out: out}
	}
	cred, claims, err := s.issue(r.Context(), raw, out, r.RemoteAddr)
	if err != nil {
		if rs := attest.ReasonOf(err); rs != attest.ReasonUnavailable && rs != attest.ReasonInternal {
			s.refused(r.Context(), out, err)
			s.observeAttestation(r.Context(), out, err)
		}
		return err
	}
	s.observeAttestation(r.Context(), out, nil)
	s.metrics.attestations.WithLabelValues("issued", "").Inc()
	s.log.InfoContext(r.Context(), "credential issued",
		"sub", claims.Subject, "aud", claims.Audience, "cti", fmt.Sprintf("%x", claims.ID),
		"ak", fmt.Sprintf("%x", out.AK.Digest[:8]), "image", out.Workload.ImageDigest,
		"profile", out.Appraisal.Profile, "refs", out.RefSetID, "exp", claims.ExpiresAt().UTC())
	w.Header().Set("Content-Type", attest.CredentialMediaType)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Vouch-Credential-Expires", claims.ExpiresAt().UTC().Format(time.RFC3339))
	if claims.LogIndex != nil {
		w.Header().Set(LogIndexHeader, strconv.FormatUint(*claims.LogIndex, 10))
	}
	_, err = w.Write(cred)
	return err
}

// readBody reads a request body of at most limit bytes, into a buffer sized
// by Content-Length when the client declared one (evidence is tens of KiB;
// growing a buffer from 512 bytes copies it a dozen times).
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, limit)
	if n := r.ContentLength; n > 0 && n <= limit {
		// net/http ends the body at Content-Length; a shorter body is an
		// error from ReadFull.
		buf := make([]byte, n)
		_, err := io.ReadFull(body, buf)
		return buf, err
	}
	return io.ReadAll(body)
}

// issue mints and records the credential for a passed appraisal, with the
// scope that delegation ∩ intent ∩ policy grants (package access). The order
// is the audit contract: evidence archived, then the attestation record
// (with the credential's cti, sub, aud, scope, exp) durably sequenced, then
// the credential signed with that record's index in its LogIndex claim.
func (s *Server) issue(ctx context.Context, raw []byte, out *appraisal.Outcome, remoteAddr string) ([]byte, *attest.Claims, error) {
	src, _ := netip.ParseAddrPort(remoteAddr)
	grant, err := s.access.ScopeFor(ctx, &access.Issuance{
		Request: out.Request, Subject: out.AgentKey.Subject, Submods: out.Appraisal.Submods,
		AKDigest: out.AK.Digest, SourceIP: src.Addr().Unmap(),
	})
	if err != nil {
		// handleAttest logs, counts and reports it to the monitor.
		if attest.ReasonOf(err) != attest.ReasonUnavailable {
			err = &appraisal.StepError{Step: appraisal.StepScope, Err: err}
		}
		s.auditRefusal(ctx, raw, out, err)
		return nil, nil, err
	}
	id, err := issuer.NewID()
	if err != nil {
		return nil, nil, err
	}
	now := s.cfg.Now()
	exp := now.Add(s.cfg.CredentialTTL)
	if !grant.NotAfter.IsZero() && grant.NotAfter.Before(exp) {
		exp = grant.NotAfter // never outlive the delegation
	}
	if exp.Unix() <= now.Unix() {
		return nil, nil, attest.Errorf(attest.ReasonDelegationExpired, "delegation %s expires within the second", grant.Delegation)
	}
	c := &attest.Claims{
		Issuer:     s.cfg.Issuer,
		Subject:    out.AgentKey.Subject,
		Audience:   out.Request.Audience,
		Expiry:     exp.Unix(),
		NotBefore:  now.Unix(),
		IssuedAt:   now.Unix(),
		ID:         id,
		Confirm:    attest.Confirmation{Key: out.AgentKey.COSE},
		Nonce:      out.Evidence.Nonce,
		Profile:    attest.Profile,
		Submods:    out.Appraisal.Submods,
		VerifierID: attest.VerifierID{Developer: Developer, Build: s.cfg.Build},
		Scope:      grant.Scope,
		Intent:     grant.Intent,
		Delegation: grant.Delegation,
	}
	digest, err := s.archive.PutEvidence(raw)
	if err != nil {
		return nil, nil, &attest.Error{Reason: attest.ReasonUnavailable, Detail: "the evidence cannot be archived; no credential is issued without it", Err: err}
	}
	// Operator changes the CLI queued (an enrollment, say) come first in
	// the log, so that auditors see them before the attestations they let in.
	s.appendQueued(ctx)
	rec := s.attestationRecord(out, digest, nil)
	rec.Credential = &audit.Credential{ID: c.ID, Subject: c.Subject, Audience: c.Audience, Scope: c.Scope, Expiry: c.Expiry, SingleUse: c.SingleUse}
	idx, err := s.record(context.WithoutCancel(ctx), rec)
	if err != nil {
		return nil, nil, err
	}
	c.LogIndex = &idx
	cred, err := s.keys.Sign(c)
	if err != nil {
		return nil, nil, fmt.Errorf("signing credential: %w", err)
	}
	stored := store.Credential{
		ID: id, Subject: c.Subject, Audience: c.Audience, AKDigest: out.AK.Digest,
		ImageDigest: out.Workload.ImageDigest, Scope: c.Scope,
		IssuedAt: now, ExpiresAt: c.ExpiresAt(), LogIndex: c.LogIndex, Delegation: c.Delegation, Intent: c.Intent,
	}
	if err := s.store.RecordCredential(ctx, stored); err != nil {
		return nil, nil, unavailable(err)
	}
	// A quarantine committed while this credential was being issued missed
	// it when it revoked the agent's credentials: check again, now that the
	// credential is on record, and revoke it ourselves.
	if err := s.held(ctx, out); err != nil {
		if attest.ReasonOf(err) != attest.ReasonUnavailable {
			if _, rerr := s.store.RevokeCredentialID(ctx, id, store.Revocation{Reason: "issued during a quarantine", RevokedBy: "verifier", RevokedAt: now}); rerr != nil {
				return nil, nil, unavailable(rerr)
			}
			s.revoked()
		}
		return nil, nil, err
	}
	return cred, c, nil
}

// refused logs and counts a refused attestation.
func (s *Server) refused(ctx context.Context, out *appraisal.Outcome, err error) {
	reason := attest.ReasonOf(err)
	s.metrics.attestations.WithLabelValues("refused", string(reason)).Inc()
	attrs := []any{"reason", reason, "err", err}
	var se *appraisal.StepError
	if errors.As(err, &se) {
		attrs = append(attrs, "step", se.Step)
	}
	if out != nil && out.AK != nil {
		attrs = append(attrs, "ak", fmt.Sprintf("%x", out.AK.Digest[:8]))
	}
	level := slog.LevelWarn
	if reason == attest.ReasonInternal {
		level = slog.LevelError
	}
	s.log.Log(ctx, level, "attestation refused", attrs...)
}

// LogIndexHeader carries the audit log index of an issued credential's
// record (the same value as its LogIndex claim).
const LogIndexHeader = "Vouch-Log-Index"

// appraisalError carries a refusal with its partial outcome, so that the
// problem document can show the appraisal.
type appraisalError struct {
	err error
	out *appraisal.Outcome
}

func (e *appraisalError) Error() string { return e.err.Error() }
func (e *appraisalError) Unwrap() error { return e.err }

func (s *Server) handleKeys(w http.ResponseWriter, _ *http.Request) error {
	b, err := s.keys.KeySet().MarshalCBOR()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", attest.KeySetMediaType)
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, err = w.Write(b)
	return err
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		attest.WriteProblem(w, attest.ProblemFor(http.StatusServiceUnavailable, attest.Errorf(attest.ReasonUnavailable, "the database does not answer: %v", err)))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ready\n")
}

func unavailable(err error) error {
	return &attest.Error{Reason: attest.ReasonUnavailable, Detail: "the verifier's database is unavailable; retry shortly", Err: err}
}

// instrument adapts a handler that returns an error: it turns errors into
// problem documents, recovers panics, records metrics, and applies the
// route's rate limit (rateClassOf) before the handler reads anything.
func (s *Server) instrument(route string, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	limit := s.rate.class(route)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				s.log.ErrorContext(r.Context(), "panic in handler", "route", route, "panic", p)
				if rw.status == 0 {
					attest.WriteProblem(rw, attest.ProblemFor(http.StatusInternalServerError, errors.New("panic")))
				}
			}
			s.metrics.requests.WithLabelValues(route, strconv.Itoa(rw.code())).Inc()
			s.metrics.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}()
		if limit != nil && !s.admit(limit, rw, r) {
			return
		}
		if err := h(rw, r); err != nil {
			if rw.status != 0 {
				s.log.WarnContext(r.Context(), "error after response started", "route", route, "err", err)
				return
			}
			if attest.ReasonOf(err) == attest.ReasonInternal {
				s.log.ErrorContext(r.Context(), "request failed", "route", route, "err", err)
			}
			p := attest.ProblemFor(StatusFor(attest.ReasonOf(err)), err)
			var ae *appraisalError
			if errors.As(err, &ae) && ae.out != nil && ae.out.Appraisal != nil {
				p.Appraisal = ae.out.Appraisal.Submods
			}
			attest.WriteProblem(rw, p)
		}
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (flushing the
// revocation stream).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// StatusFor maps a refusal reason to its HTTP status: 400 for requests that
// are malformed, 401 when the evidence does not prove what it claims
// (freshness, keys, signatures, logs), 403 when it proves a state that
// policy refuses, 5xx for the verifier's own failures.
func StatusFor(r attest.Reason) int {
	switch r {
	case attest.ReasonRequestMalformed, attest.ReasonAudienceInvalid:
		return http.StatusBadRequest
	case attest.ReasonRequestTooLarge:
		return http.StatusRequestEntityTooLarge
	case attest.ReasonUnsupportedMediaType:
		return http.StatusUnsupportedMediaType
	case attest.ReasonInternal:
		return http.StatusInternalServerError
	case attest.ReasonUnavailable:
		return http.StatusServiceUnavailable
	case attest.ReasonRateLimited:
		return http.StatusTooManyRequests
	case attest.ReasonAKRevoked, attest.ReasonRefsImageDigest, attest.ReasonRefsImageRef, attest.ReasonRefsBootState,
		attest.ReasonRefsSecureBoot, attest.ReasonRefsPCR, attest.ReasonRefsDenied, attest.ReasonRefsNoProfile,
		attest.ReasonAppraisalWarn, attest.ReasonAKDenied, attest.ReasonRefsFirmware, attest.ReasonRefsOptionROM,
		attest.ReasonRefsEFIApp, attest.ReasonRefsKernel, attest.ReasonRefsLoader, attest.ReasonRefsKernelCmdline,
		attest.ReasonRefsSBAuthority, attest.ReasonRefsDBX, attest.ReasonRefsWorkloadConfig,
		attest.ReasonAgentQuarantined, attest.ReasonAgentRevoked:
		return http.StatusForbidden
	case attest.ReasonDelegationMissing, attest.ReasonDelegationUnknown, attest.ReasonDelegationExpired,
		attest.ReasonDelegationSuspended, attest.ReasonDelegationRevoked, attest.ReasonDelegationAgent,
		attest.ReasonIntentUnknown, attest.ReasonIntentAction, attest.ReasonResourceNotDelegated,
		attest.ReasonScopeEmpty, attest.ReasonPolicyDenied, attest.ReasonNetworkDenied, attest.ReasonTimeWindow,
		attest.ReasonElevationDenied, attest.ReasonUserForbidden, attest.ReasonScopeInsufficient:
		return http.StatusForbidden
	}
	return http.StatusUnauthorized
}
