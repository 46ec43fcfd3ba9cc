// Command vouchd is the Vouch verifier: it appraises TPM evidence from agents
// and issues short-lived credentials bound to their TPM keys.
//
// With no flags it listens on 127.0.0.1:8700, keeps its state in
// $XDG_STATE_HOME/vouchd (~/.local/state/vouchd) and uses the reference values
// built into the binary (firmware-refs). See `vouchd --help`.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/internal/cliconf"
	"github.com/vouch-dev/vouch/internal/version"
	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/policy/authz"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/enroll"
	"github.com/vouch-dev/vouch/verifier/monitor"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "vouchd:", err)
		os.Exit(1)
	}
}

type options struct {
	listen, data, refs, issuer  string
	credTTL, nonceTTL, refsPoll time.Duration
	allowWarning                bool
	tlsCert, tlsKey             string
	authzDir, externalURL       string
	tlsClientCA                 string
	elevationTTL                time.Duration
	ekRoots, akRoots, ekAllow   string
	ekFetchIssuers              bool
	monitorConfig               string
	webhookURL, webhookSecret   string
	rate                        rateFlags
	trustedProxies              []string
}

// rateFlags are the --rate-* flags: per-client rate limits.
type rateFlags struct {
	attest, read, decide                float64
	attestBurst, readBurst, decideBurst int
	maxClients                          int
}

func newRoot() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:   "vouchd",
		Short: "Vouch verifier: appraise TPM evidence, issue short-lived agent credentials",
		Long: `vouchd is the Vouch verifier. Agents ask it for a challenge, send TPM evidence
(quote, firmware event log, workload measurements, agent key certification)
and receive a short-lived COSE credential bound to their TPM-resident key.

Every flag can also be set by a VOUCH_* environment variable (--data is
VOUCH_DATA) or in a YAML file given with --config; flags win over the
environment, which wins over the file.

Reference values (--refs DIR) are reloaded when a file in DIR changes and
on SIGHUP, atomically: a set that fails to load (a broken file) leaves the
previous set in force, and the error is logged and counted in
vouch_refs_reloads_total{result="failed"}. Replace files by renaming them in.

With no flags, vouchd listens on 127.0.0.1:8700 over plain HTTP, stores its
state under $XDG_STATE_HOME/vouchd and uses the built-in reference values.
Give --tls-cert and --tls-key to serve HTTPS; do that whenever it listens
beyond loopback.

vouchd also monitors what agents do (attestations, decisions, requests that
relying parties report) and responds to anomalies on its own: it revokes
credentials (relying parties follow GET /v1/revocations/stream), quarantines
workloads and machines, and sends signed alerts to --webhook-url. Rules,
thresholds and responses are in --monitor-config (reloaded on SIGHUP); see
docs/monitoring.md.

The unauthenticated endpoints are rate limited per client address (an IPv4
address, an IPv6 /64) with token buckets, in classes: attest (challenge,
attest, enroll; --rate-attest) and read (audit log, keys, revocations,
signals; --rate-read). Refusals are 429 with Retry-After. The admin API,
/healthz, /readyz and /metrics are never limited, /v1/authorize and
/v1/elevate only with --rate-decide. Behind a reverse proxy, list it in
--trusted-proxies, or every client shares the proxy's bucket and every
delegation's networks policy sees the proxy's address.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return cliconf.Apply(cmd)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := cliconf.Logger(cmd, os.Stderr)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, o, log)
		},
	}
	f := cmd.Flags()
	cliconf.AddFlags(cmd.PersistentFlags())
	f.StringVar(&o.listen, "listen", "127.0.0.1:8700", "address to listen on (host:port; port 0 picks a free one)")
	f.StringVar(&o.data, "data", verifier.DefaultDataDir(), "data directory: database, signing keys, audit log (created 0700)")
	f.StringVar(&o.refs, "refs", "", "directory of reference-value YAML files (default: the set built into vouchd); reloaded on change and on SIGHUP")
	f.DurationVar(&o.refsPoll, "refs-poll", 2*time.Second, "how often --refs is checked for changed files (0 disables; SIGHUP always reloads)")
	f.StringVar(&o.issuer, "issuer", "vouchd", "issuer (iss) of the credentials, e.g. https://vouch.example")
	f.DurationVar(&o.credTTL, "credential-ttl", verifier.DefaultCredentialTTL, "lifetime of issued credentials (max 1h)")
	f.DurationVar(&o.nonceTTL, "nonce-ttl", verifier.DefaultNonceTTL, "how long a challenge nonce stays usable")
	f.BoolVar(&o.allowWarning, "allow-warning", false, "also issue credentials when the appraisal status is warning")
	f.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate chain for HTTPS")
	f.StringVar(&o.tlsKey, "tls-key", "", "PEM private key for HTTPS")
	f.StringVar(&o.tlsClientCA, "tls-client-ca", "", "PEM CA certificates: verify TLS client certificates against them; a certificate for a registered user's key authenticates that user on the admin API")
	f.StringVar(&o.authzDir, "authz-policy", "", "authorization policy directory: schema.cedarschema, intents.yaml, policies/*.cedar (default: the built-in set); SIGHUP reloads it, keeping the old set if the new one is invalid")
	f.StringVar(&o.externalURL, "external-url", "", "this verifier's origin as agents and users address it (scheme://host[:port]), when behind a proxy; proofs and signed admin requests name it")
	f.DurationVar(&o.elevationTTL, "elevation-ttl", 10*time.Second, "lifetime of single-use elevation credentials (max 10s)")
	f.StringVar(&o.ekRoots, "ek-roots", "", "directory of TPM manufacturers' EK CA certificates (PEM/DER); enables enrollment by EK certificate and credential activation (POST /v1/enroll)")
	f.StringVar(&o.ekAllow, "ek-allowlist", "", "file of EK public key digests (hex SHA-256 of the SubjectPublicKeyInfo, one per line, # comments) of TPMs without EK certificates that may enroll")
	f.StringVar(&o.akRoots, "ak-roots", "", "directory of cloud providers' AK CA certificates; AKs with certificates chaining to them enroll without activation (vTPMs)")
	f.BoolVar(&o.ekFetchIssuers, "ek-fetch-issuers", false, "fetch a missing EK certificate issuer from its AIA URL (the verifier then makes outbound HTTP requests to URLs found in TPM certificates)")
	f.StringVar(&o.monitorConfig, "monitor-config", "", "YAML file of monitoring rules, thresholds and responses over the built-in defaults (reloaded on SIGHUP and when it changes; see docs/monitoring.md)")
	f.StringVar(&o.webhookURL, "webhook-url", "", "URL that receives alerts as signed JSON POSTs (https unless loopback)")
	f.StringVar(&o.webhookSecret, "webhook-secret-file", "", "file holding the webhook's HMAC-SHA256 key (at least 16 bytes; required with --webhook-url)")
	f.Float64Var(&o.rate.attest, "rate-attest", verifier.DefaultRateAttest, "requests per second each client address (IPv4 address, IPv6 /64) may make to POST /v1/challenge, /v1/attest, /v1/enroll, /v1/enroll/activate together (0 disables)")
	f.IntVar(&o.rate.attestBurst, "rate-attest-burst", verifier.DefaultRateAttestBurst, "requests a client may make at once in the attest class (0: twice --rate-attest)")
	f.Float64Var(&o.rate.read, "rate-read", verifier.DefaultRateRead, "requests per second each client address may make to GET /v1/log/..., /v1/keys, /v1/revocations (and /stream) and POST /v1/signals together (0 disables)")
	f.IntVar(&o.rate.readBurst, "rate-read-burst", verifier.DefaultRateReadBurst, "requests a client may make at once in the read class (0: twice --rate-read)")
	f.Float64Var(&o.rate.decide, "rate-decide", 0, "requests per second each client address may make to POST /v1/authorize and /v1/elevate (default 0: not limited; relying parties ask thousands of times a second)")
	f.IntVar(&o.rate.decideBurst, "rate-decide-burst", 0, "requests a client may make at once in the decide class (0: twice --rate-decide)")
	f.StringSliceVar(&o.trustedProxies, "trusted-proxies", nil, "CIDRs or addresses of reverse proxies in front of vouchd (comma-separated): for a request from one, the client is the address its X-Forwarded-For names (the rightmost hop that is not a trusted proxy) — for rate limits, delegations' networks and audit records alike; from anyone else the header is ignored (default none)")
	f.IntVar(&o.rate.maxClients, "rate-max-clients", verifier.DefaultRateMaxClients, "clients each rate-limit class tracks at most; idle ones are forgotten, and newcomers to a table full of active clients share one bucket")
	return cmd
}

// rateLimits turns the --rate-* flags into the verifier's configuration.
func rateLimits(f rateFlags, log *slog.Logger) (*verifier.RateLimits, error) {
	rl := &verifier.RateLimits{
		Attest:     verifier.RateLimit{PerSecond: f.attest, Burst: f.attestBurst},
		Read:       verifier.RateLimit{PerSecond: f.read, Burst: f.readBurst},
		Decide:     verifier.RateLimit{PerSecond: f.decide, Burst: f.decideBurst},
		MaxClients: f.maxClients,
	}
	if f.maxClients < 1 {
		return nil, fmt.Errorf("--rate-max-clients %d: at least 1", f.maxClients)
	}
	return rl, nil
}

// trustedProxies parses --trusted-proxies: CIDRs or bare addresses.
func trustedProxies(list []string, log *slog.Logger) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("--trusted-proxies: %q is neither a CIDR nor an address: %w", s, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Bits() == 0 {
			log.Warn("--trusted-proxies trusts every address: any client can choose the address it is seen as (rate limits, delegations' networks, audit records) with X-Forwarded-For", "prefix", p)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func loadRefs(dir string) (*policy.RefSet, error) {
	if dir == "" {
		return firmwarerefs.Load()
	}
	return policy.LoadRefs(os.DirFS(dir), ".")
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	// The transparency-log library logs through klog: warnings and worse
	// go to vouchd's log.
	cliconf.RouteLibraryLogs(log)
	rl, err := rateLimits(o.rate, log)
	if err != nil {
		return err
	}
	proxies, err := trustedProxies(o.trustedProxies, log)
	if err != nil {
		return err
	}
	refs, err := loadRefs(o.refs)
	if err != nil {
		return err
	}
	eo, err := enrollOptions(o, log)
	if err != nil {
		return err
	}
	loadPolicy := func() (*authz.Engine, error) {
		if o.authzDir == "" {
			return authz.Default()
		}
		return authz.Load(os.DirFS(o.authzDir))
	}
	eng, err := loadPolicy()
	if err != nil {
		return fmt.Errorf("authorization policy: %w", err)
	}
	policyHolder := authz.NewHolder(eng)
	go reloadOnHUP(ctx, log, policyHolder, loadPolicy)
	var monCfg *monitor.Config
	if o.monitorConfig != "" {
		if monCfg, err = monitor.LoadConfig(o.monitorConfig); err != nil {
			return err
		}
	}
	var webhook *monitor.WebhookOptions
	if o.webhookURL != "" {
		secret, err := os.ReadFile(o.webhookSecret)
		if err != nil {
			return fmt.Errorf("--webhook-secret-file: %w", err)
		}
		webhook = &monitor.WebhookOptions{URL: o.webhookURL, Secret: bytes.TrimSpace(secret)}
	}
	srv, err := verifier.New(ctx, verifier.Config{
		RateLimits:     rl,
		TrustedProxies: proxies,
		Enrollment:     eo,
		Policy:         policyHolder,
		ExternalURL:    o.externalURL,
		ElevationTTL:   o.elevationTTL,
		DataDir:        o.data,
		Refs:           verifier.NewRefHolder(refs),
		Issuer:         o.issuer,
		Build:          version.String(),
		CredentialTTL:  o.credTTL,
		NonceTTL:       o.nonceTTL,
		AllowWarning:   o.allowWarning,
		Logger:         log,
		Monitor:        monCfg,
		Webhook:        webhook,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	scheme := "http"
	if o.tlsCert != "" || o.tlsKey != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return fmt.Errorf("TLS: %w", err)
		}
		tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if o.tlsClientCA != "" {
			pem, err := os.ReadFile(o.tlsClientCA)
			if err != nil {
				return fmt.Errorf("TLS client CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("TLS client CA %s holds no PEM certificate", o.tlsClientCA)
			}
			tc.ClientCAs, tc.ClientAuth = pool, tls.VerifyClientCertIfGiven
		}
		ln = tls.NewListener(ln, tc)
		scheme = "https"
	} else if o.tlsClientCA != "" {
		return fmt.Errorf("--tls-client-ca needs --tls-cert and --tls-key")
	} else if host, _, _ := net.SplitHostPort(o.listen); !isLoopback(host) {
		log.Warn("serving plain HTTP beyond loopback; give --tls-cert and --tls-key", "listen", o.listen)
	}
	if o.refs != "" {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		interval := o.refsPoll
		if interval <= 0 {
			interval = -1
		}
		go srv.WatchRefs(ctx, verifier.WatchOptions{Dir: o.refs, Interval: interval, Trigger: hup})
	}
	if o.monitorConfig != "" {
		go watchMonitorConfig(ctx, o.monitorConfig, srv.Monitor(), log)
	}
	log.Info("vouchd listening", "url", scheme+"://"+ln.Addr().String(), "data", o.data,
		"refs", refs.ID(), "profiles", len(refs.Profiles), "images", len(refs.Images), "version", version.String(),
		"authz_policy", eng.ID(), "policies", len(eng.PolicyIDs()),
		"rate_attest", o.rate.attest, "rate_read", o.rate.read, "rate_decide", o.rate.decide, "trusted_proxies", len(proxies))
	fmt.Fprintf(os.Stderr, "vouchd listening on %s://%s (data %s)\n", scheme, ln.Addr(), o.data)
	if err := srv.Serve(ctx, ln); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("vouchd stopped")
	return nil
}

// enrollOptions loads the enrollment trust anchors the flags name.
func enrollOptions(o options, log *slog.Logger) (enroll.Options, error) {
	var eo enroll.Options
	var err error
	if o.ekRoots != "" {
		if eo.EKRoots, err = enroll.LoadAnchors(o.ekRoots); err != nil {
			return eo, fmt.Errorf("--ek-roots: %w", err)
		}
		log.Info("enrollment by EK certificate enabled", "ek_roots", o.ekRoots, "certificates", eo.EKRoots.Len())
	}
	if o.akRoots != "" {
		if eo.AKRoots, err = enroll.LoadAnchors(o.akRoots); err != nil {
			return eo, fmt.Errorf("--ak-roots: %w", err)
		}
	}
	if o.ekAllow != "" {
		if eo.EKAllowlist, err = enroll.LoadAllowlist(o.ekAllow); err != nil {
			return eo, fmt.Errorf("--ek-allowlist: %w", err)
		}
	}
	if o.ekFetchIssuers {
		eo.FetchIssuer = enroll.HTTPFetcher(nil)
	}
	if eo.EKRoots == nil && eo.AKRoots == nil && eo.EKAllowlist == nil {
		log.Warn("no --ek-roots, --ek-allowlist or --ak-roots: AKs can only be enrolled by an operator (vouch agents enroll)")
	}
	return eo, nil
}

// watchMonitorConfig reloads the monitor configuration on SIGHUP and when
// the file's modification time or size changes (checked every 2 s). A file
// that does not load keeps the configuration in force.
func watchMonitorConfig(ctx context.Context, file string, mon *monitor.Monitor, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	stamp := func() string {
		fi, err := os.Stat(file)
		if err != nil {
			return ""
		}
		return fmt.Sprint(fi.ModTime().UnixNano(), fi.Size())
	}
	last := stamp()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		case <-t.C:
			if s := stamp(); s == last {
				continue
			}
		}
		last = stamp()
		cfg, err := monitor.LoadConfig(file)
		if err == nil {
			err = mon.SetConfig(cfg)
		}
		if err != nil {
			mon.ConfigRejected()
			log.Error("monitor configuration not reloaded; the previous one stays in force", "file", file, "err", err)
			continue
		}
		log.Info("monitor configuration reloaded", "file", file)
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// reloadOnHUP reloads the authorization policy on SIGHUP. An invalid set is
// refused and the one in force kept.
func reloadOnHUP(ctx context.Context, log *slog.Logger, h *authz.Holder, load func() (*authz.Engine, error)) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			old := h.Engine().ID()
			e, err := h.Reload(load)
			if err != nil {
				log.Error("authorization policy reload refused; the previous set stays in force", "err", err, "in_force", old)
				continue
			}
			log.Info("authorization policy reloaded", "id", e.ID(), "previous", old, "policies", len(e.PolicyIDs()))
		}
	}
}
