// Package verifier is the Vouch verifier service (vouchd): it hands out
// challenge nonces, appraises evidence (package verifier/appraisal), issues
// short-lived credentials bound to the agent's TPM key (verifier/issuer), and
// serves the keys relying parties verify them with. State lives in a real
// database (verifier/store).
//
// HTTP API (errors are RFC 9457 problem+json with a stable reason):
//
//	POST /v1/challenge   → 201 {"nonce": base64, "expires_at": RFC 3339}
//	POST /v1/attest      ← application/vnd.vouch.evidence+cbor
//	                     → 200 application/cwt (the credential)
//	GET  /v1/keys        → 200 application/cose-key-set
//	POST /v1/enroll      → 201 activation challenge (package verifier/enroll)
//	POST /v1/enroll/activate → 201 enrollment
//	POST /v1/authorize, POST /v1/elevate, /v1/delegations, /v1/users:
//	                       authorization (package verifier/access)
//	GET  /v1/log/...     → the audit log (C2SP tlog-tiles: checkpoint, tile/...,
//	                       tile/entries/...), its key and archives; see package
//	                       verifier/audit
//	GET  /v1/revocations?since=N        → 200 attest.RevocationPage (JSON)
//	GET  /v1/revocations/stream?since=N → text/event-stream of revocations
//	POST /v1/signals     ← attest.ReportBatch from a relying party (bearer token)
//	                     → 202 {"accepted": n, "ignored": m}
//	GET  /healthz        → 200 while the process serves
//	GET  /readyz         → 200 when the database answers and keys are loaded
//	GET  /metrics        → Prometheus text format
//
// The unauthenticated endpoints are rate limited per client address (see
// RateLimits): too many requests get 429 with Retry-After and the reason
// rate-limited.
package verifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vouch-dev/vouch/policy/authz"
	"github.com/vouch-dev/vouch/verifier/access"
	"github.com/vouch-dev/vouch/verifier/appraisal"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/enroll"
	"github.com/vouch-dev/vouch/verifier/internal/ratelimit"
	"github.com/vouch-dev/vouch/verifier/issuer"
	"github.com/vouch-dev/vouch/verifier/monitor"
	"github.com/vouch-dev/vouch/verifier/store"
)

// Defaults of Config.
const (
	DefaultCredentialTTL = 60 * time.Second
	DefaultNonceTTL      = 60 * time.Second
	// MaxCredentialTTL caps Config.CredentialTTL: credentials are meant to be
	// re-earned by re-attesting, not kept.
	MaxCredentialTTL = time.Hour
	// DatabaseFile is the SQLite file in the data directory.
	DatabaseFile = "vouch.db"
)

// DefaultDataDir is where vouchd keeps its state when --data is not given:
// $XDG_STATE_HOME/vouchd, else ~/.local/state/vouchd.
func DefaultDataDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "vouchd")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "vouchd")
	}
	return "vouchd-data"
}

// Developer is the ear.verifier-id developer of this verifier.
const Developer = "vouch.dev"

// Config configures a Server. DataDir and Refs are required.
type Config struct {
	// DataDir holds the database, the signing keys and (later) the audit log.
	DataDir string
	// Refs supplies the reference values; see NewRefHolder.
	Refs *RefHolder
	// Issuer is the iss claim of every credential. Default "vouchd".
	Issuer string
	// Build names this build in ear.verifier-id (e.g. a version or commit).
	Build string
	// CredentialTTL is the lifetime of issued credentials (default 60 s).
	CredentialTTL time.Duration
	// NonceTTL is how long a challenge nonce stays usable (default 60 s).
	NonceTTL time.Duration
	// AllowWarning issues credentials for "warning" appraisals too.
	AllowWarning bool
	// Logger receives structured logs; slog.Default() when nil.
	Logger *slog.Logger
	// Registry receives the metrics; a fresh registry when nil.
	Registry *prometheus.Registry
	// Now returns the current time; time.Now when nil. Tests move it.
	Now func() time.Time
	// Enrollment configures enrollment by credential activation (EK roots,
	// EK allowlist, AK roots); New fills in its Store, Audit, Log, Build
	// and Now. The zero value refuses every enrollment request.
	Enrollment enroll.Options
	// Audit receives a record of every decision. When nil (production), New
	// opens the transparency log in DataDir (audit.Open) and the server owns
	// it; there is no way to run without an audit log.
	Audit audit.Log
	// AuditOptions tune the log New opens (batching, checkpoint interval);
	// DataDir is filled in.
	AuditOptions audit.Options
	// Policy holds the authorization policy (Cedar schema, intents,
	// policies); nil means the built-in set (policy/authz).
	Policy *authz.Holder
	// ExternalURL is the verifier's origin as clients address it; see
	// access.Options.ExternalURL.
	ExternalURL string
	// ElevationTTL is the lifetime of single-use elevation credentials
	// (default and maximum 10 s).
	ElevationTTL time.Duration
	// Monitor is the detection and response configuration; the built-in
	// defaults when nil. Reload with Server.Monitor().SetConfig.
	Monitor *monitor.Config
	// Webhook, if set, receives every alert whose severity calls for it.
	Webhook *monitor.WebhookOptions
	// MonitorQueue bounds the signals waiting for the monitor (default
	// monitor.DefaultQueueSize).
	MonitorQueue int
	// OnAlert, if set, is called after each alert's response (the demo).
	OnAlert func(monitor.Alert)
	// FeedHeartbeat is the revocation stream's heartbeat interval (default
	// DefaultFeedHeartbeat); relying parties fail closed after missing a
	// few.
	FeedHeartbeat time.Duration
	// RateLimits are the per-client limits of the unauthenticated
	// endpoints; DefaultRateLimits() when nil, NoRateLimits() for none.
	RateLimits *RateLimits
	// TrustedProxies are the networks of reverse proxies in front of the
	// verifier. For a request from one of them, the client is the address
	// its X-Forwarded-For header names (the rightmost hop that is not a
	// trusted proxy), for everything: rate limits, a delegation's networks,
	// enrollment and audit records. From anyone else the header is ignored.
	// Empty: the header is never read.
	TrustedProxies []netip.Prefix
}

// Server is a running verifier.
type Server struct {
	cfg      Config
	log      *slog.Logger
	store    *store.Store
	keys     *issuer.Keys
	pipeline *appraisal.Pipeline
	access   *access.Service
	enroll   *enroll.Service
	metrics  *metrics
	rate     *rateLimiter
	handler  http.Handler
	audit    audit.Log
	tlog     *audit.TLog // the log New opened, nil when Config.Audit was given
	archive  *audit.Archive

	closeOnce sync.Once
	closeErr  error
	outboxMu  sync.Mutex // serialises appending the CLI's queued audit records

	monitor   *monitor.Monitor
	feed      *feedBroker
	credCache *lru.Cache[string, reportedCredential]
	stopBg    context.CancelFunc
	bg        sync.WaitGroup
	// streams ends the revocation streams on shutdown (they never end on
	// their own).
	streams context.Context
}

// New opens the data directory (creating it 0700), the database and the keys.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("verifier: DataDir is required")
	}
	if cfg.Refs == nil {
		return nil, errors.New("verifier: Refs is required")
	}
	if cfg.Issuer == "" {
		cfg.Issuer = "vouchd"
	}
	if cfg.Build == "" {
		cfg.Build = "dev"
	}
	if cfg.CredentialTTL == 0 {
		cfg.CredentialTTL = DefaultCredentialTTL
	}
	if cfg.CredentialTTL < time.Second || cfg.CredentialTTL > MaxCredentialTTL {
		return nil, fmt.Errorf("verifier: credential lifetime %v is outside 1s..%v", cfg.CredentialTTL, MaxCredentialTTL)
	}
	if cfg.NonceTTL == 0 {
		cfg.NonceTTL = DefaultNonceTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RateLimits == nil {
		d := DefaultRateLimits()
		cfg.RateLimits = &d
	}
	rate, err := newRateLimiter(*cfg.RateLimits, cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("verifier: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("verifier: data directory: %w", err)
	}
	st, err := store.OpenSQLite(ctx, filepath.Join(cfg.DataDir, DatabaseFile))
	if err != nil {
		return nil, fmt.Errorf("verifier: %w", err)
	}
	keys, err := issuer.LoadOrCreate(cfg.DataDir)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("verifier: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, store: st, keys: keys, metrics: newMetrics(cfg.Registry), rate: rate, audit: cfg.Audit, archive: audit.NewArchive(cfg.DataDir)}
	s.metrics.setRefs(cfg.Refs.Refs().ID())
	if s.audit == nil {
		ao := cfg.AuditOptions
		ao.DataDir = cfg.DataDir
		if ao.OnEnqueueError == nil {
			ao.OnEnqueueError = func(err error) {
				s.metrics.auditFailures.Inc()
				s.log.Error("an enqueued audit record was lost", "err", err)
			}
		}
		if s.tlog, err = audit.Open(ctx, ao); err != nil {
			st.Close()
			return nil, fmt.Errorf("verifier: %w", err)
		}
		s.audit = s.tlog
	}
	// The reference set in force is archived before any record names it,
	// and the start is recorded with the configuration that decides.
	if err := s.archive.PutRefs(cfg.Refs.Refs()); err != nil {
		s.Close()
		return nil, fmt.Errorf("verifier: %w", err)
	}
	if _, err := s.record(ctx, s.startRecord()); err != nil {
		s.Close()
		return nil, fmt.Errorf("verifier: recording the start: %w", err)
	}
	s.pipeline, err = appraisal.New(appraisal.Options{
		Nonces:       st,
		AKs:          st,
		Refs:         cfg.Refs,
		AllowWarning: cfg.AllowWarning,
		Now:          cfg.Now,
		Observe:      s.metrics.observeStep,
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	eo := cfg.Enrollment
	eo.Store, eo.Audit, eo.Log, eo.Build, eo.Now = st, serverLog{s}, cfg.Logger, cfg.Build, cfg.Now
	if s.enroll, err = enroll.New(eo); err != nil {
		s.Close()
		return nil, err
	}
	if cfg.Policy == nil {
		eng, err := authz.Default()
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("verifier: built-in authorization policy: %w", err)
		}
		cfg.Policy = authz.NewHolder(eng)
		s.cfg.Policy = cfg.Policy
	}
	s.access, err = access.New(access.Options{
		Store: st, Keys: keys, Policy: cfg.Policy, Issuer: cfg.Issuer, Build: cfg.Build,
		ElevationTTL: cfg.ElevationTTL, ExternalURL: cfg.ExternalURL, Audit: serverLog{s},
		OnDecision: s.observeDecision, OnRevoked: func() { s.feed.notify() }, Held: s.heldIdentity,
		RevocationHead: func() int64 { h, _, _ := s.feed.state(); return h },
		Logger:         cfg.Logger.With("component", "access"), Now: cfg.Now,
	})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("verifier: %w", err)
	}
	if err := s.startMonitoring(); err != nil {
		s.Close()
		return nil, err
	}
	s.handler = clientAddress(ratelimit.NewProxies(cfg.TrustedProxies), s.routes())
	return s, nil
}

// Access returns the authorization service (decisions, elevation,
// delegations).
func (s *Server) Access() *access.Service { return s.access }

// Policy returns the holder of the authorization policy in force; reload
// through it.
func (s *Server) Policy() *authz.Holder { return s.cfg.Policy }

// startMonitoring starts the behaviour monitor and the revocation feed.
func (s *Server) startMonitoring() error {
	if s.cfg.FeedHeartbeat <= 0 {
		s.cfg.FeedHeartbeat = DefaultFeedHeartbeat
	}
	s.feed = newFeedBroker(s.store)
	s.credCache = newCredentialCache()
	mon, err := monitor.New(monitor.Options{
		Store: s.store, Config: s.cfg.Monitor, Audit: serverLog{s}, Build: s.cfg.Build, Webhook: s.cfg.Webhook,
		OnRevocation: s.revoked, OnAlert: s.cfg.OnAlert, QueueSize: s.cfg.MonitorQueue, Delegations: s.access,
		Logger: s.log, Registry: s.cfg.Registry, Now: s.cfg.Now,
	})
	if err != nil {
		return fmt.Errorf("verifier: %w", err)
	}
	s.monitor = mon
	ctx, cancel := context.WithCancel(context.Background())
	s.stopBg, s.streams = cancel, ctx
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.feed.run(ctx, s.cfg.FeedHeartbeat, s) }()
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.drainAuditOutbox(ctx) }()
	return nil
}

// Handler returns the HTTP handler of the API.
func (s *Server) Handler() http.Handler { return s.handler }

// Store returns the server's database (for in-process administration, e.g.
// the demo enrolling its AK).
func (s *Server) Store() *store.Store { return s.store }

// Keys returns the issuing keys.
func (s *Server) Keys() *issuer.Keys { return s.keys }

// AuditLog returns the transparency log the server opened, or nil when
// Config.Audit supplied another Log.
func (s *Server) AuditLog() *audit.TLog { return s.tlog }

// Close waits (up to 10 s) until a signed checkpoint covers every record
// this server appended, closes the log it opened, and releases the database.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Server) close() error {
	var errs []error
	// Monitor and revocation feed first: they record to the audit log.
	if s.stopBg != nil {
		s.stopBg()
		s.bg.Wait()
	}
	if s.monitor != nil {
		s.monitor.Close()
	}
	if s.tlog != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.tlog.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("closing the audit log: %w", err))
		}
	}
	if err := s.store.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Serve serves the API on ln until ctx is done, then shuts down gracefully
// (in-flight requests get up to 10 s). It also prunes expired nonces.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	srv.RegisterOnShutdown(s.stopBg) // end the revocation streams, or Shutdown waits for them
	go s.pruneLoop(ctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	return nil
}

func (s *Server) pruneLoop(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// Keep used and expired nonces an hour, so a late replay is
			// reported as a replay rather than as an unknown nonce.
			if err := s.store.PruneCredentialUses(ctx, s.cfg.Now().Add(-time.Minute)); err != nil {
				s.log.Warn("pruning single-use credential records", "err", err)
			}
			if n, err := s.store.PruneNonces(ctx, s.cfg.Now().Add(-time.Hour)); err != nil {
				s.log.Warn("pruning nonces", "err", err)
			} else if n > 0 {
				s.log.Debug("pruned nonces", "count", n)
			}
			if _, err := s.store.PruneEnrollChallenges(ctx, s.cfg.Now().Add(-time.Hour)); err != nil {
				s.log.Warn("pruning enrollment challenges", "err", err)
			}
			// Credential revocations matter until the credential expires.
			if _, err := s.store.PruneRevocations(ctx, s.cfg.Now().Add(-time.Hour)); err != nil {
				s.log.Warn("pruning revocations", "err", err)
			}
		}
	}
}
