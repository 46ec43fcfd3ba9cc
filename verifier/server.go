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
//	GET  /v1/revocations?since=N        → 200 attest.RevocationPage (JSON)
//	GET  /v1/revocations/stream?since=N → text/event-stream of revocations
//	POST /v1/signals     ← attest.ReportBatch from a relying party (bearer token)
//	                     → 202 {"accepted": n, "ignored": m}
//	GET  /healthz        → 200 while the process serves
//	GET  /readyz         → 200 when the database answers and keys are loaded
//	GET  /metrics        → Prometheus text format
package verifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/verifier/appraisal"
	"github.com/vouch-dev/vouch/verifier/audit"
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

	// Audit receives the monitor's records (alerts, revocations,
	// quarantines, releases); nil records nothing yet.
	Audit audit.Log
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
}

// Server is a running verifier.
type Server struct {
	cfg      Config
	log      *slog.Logger
	store    *store.Store
	keys     *issuer.Keys
	pipeline *appraisal.Pipeline
	metrics  *metrics
	handler  http.Handler

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
	s := &Server{cfg: cfg, log: cfg.Logger, store: st, keys: keys, metrics: newMetrics(cfg.Registry)}
	s.pipeline, err = appraisal.New(appraisal.Options{
		Nonces:       st,
		AKs:          st,
		Refs:         cfg.Refs,
		AllowWarning: cfg.AllowWarning,
		Now:          cfg.Now,
		Observe:      s.metrics.observeStep,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	if err := s.startMonitoring(); err != nil {
		st.Close()
		return nil, err
	}
	s.handler = s.routes()
	return s, nil
}

// startMonitoring starts the behaviour monitor and the revocation feed.
func (s *Server) startMonitoring() error {
	if s.cfg.FeedHeartbeat <= 0 {
		s.cfg.FeedHeartbeat = DefaultFeedHeartbeat
	}
	s.feed = newFeedBroker(s.store)
	s.credCache = newCredentialCache()
	mon, err := monitor.New(monitor.Options{
		Store: s.store, Config: s.cfg.Monitor, Audit: s.cfg.Audit, Build: s.cfg.Build, Webhook: s.cfg.Webhook,
		OnRevocation: s.feed.notify, OnAlert: s.cfg.OnAlert, QueueSize: s.cfg.MonitorQueue,
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
	return nil
}

// Handler returns the HTTP handler of the API.
func (s *Server) Handler() http.Handler { return s.handler }

// Store returns the server's database (for in-process administration, e.g.
// the demo enrolling its AK).
func (s *Server) Store() *store.Store { return s.store }

// Keys returns the issuing keys.
func (s *Server) Keys() *issuer.Keys { return s.keys }

// Close stops the monitor and the revocation feed and releases the
// database.
func (s *Server) Close() error {
	s.stopBg()
	s.bg.Wait()
	s.monitor.Close()
	return s.store.Close()
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
			if n, err := s.store.PruneNonces(ctx, s.cfg.Now().Add(-time.Hour)); err != nil {
				s.log.Warn("pruning nonces", "err", err)
			} else if n > 0 {
				s.log.Debug("pruned nonces", "count", n)
			}
			// Credential revocations matter until the credential expires.
			if _, err := s.store.PruneRevocations(ctx, s.cfg.Now().Add(-time.Hour)); err != nil {
				s.log.Warn("pruning revocations", "err", err)
			}
		}
	}
}

// RefHolder holds the reference values in force and swaps them atomically
// on reload, so that each appraisal sees one consistent set.
type RefHolder struct {
	cur atomic.Pointer[policy.RefSet]
}

// NewRefHolder returns a holder serving refs.
func NewRefHolder(refs *policy.RefSet) *RefHolder {
	h := &RefHolder{}
	h.cur.Store(refs)
	return h
}

// Refs returns the set in force.
func (h *RefHolder) Refs() *policy.RefSet { return h.cur.Load() }

// Set replaces the set in force.
func (h *RefHolder) Set(refs *policy.RefSet) { h.cur.Store(refs) }
