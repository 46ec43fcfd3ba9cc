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
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/internal/cliconf"
	"github.com/vouch-dev/vouch/internal/version"
	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/monitor"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "vouchd:", err)
		os.Exit(1)
	}
}

type options struct {
	listen, data, refs, issuer string
	credTTL, nonceTTL          time.Duration
	allowWarning               bool
	tlsCert, tlsKey            string
	monitorConfig              string
	webhookURL, webhookSecret  string
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

With no flags, vouchd listens on 127.0.0.1:8700 over plain HTTP, stores its
state under $XDG_STATE_HOME/vouchd and uses the built-in reference values.
Give --tls-cert and --tls-key to serve HTTPS; do that whenever it listens
beyond loopback.

vouchd also monitors what agents do (attestations, decisions, requests that
relying parties report) and responds to anomalies on its own: it revokes
credentials (relying parties follow GET /v1/revocations/stream), quarantines
workloads and machines, and sends signed alerts to --webhook-url. Rules,
thresholds and responses are in --monitor-config (reloaded on SIGHUP); see
docs/monitoring.md.`,
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
	f.StringVar(&o.refs, "refs", "", "directory of reference-value YAML files (default: the set built into vouchd)")
	f.StringVar(&o.issuer, "issuer", "vouchd", "issuer (iss) of the credentials, e.g. https://vouch.example")
	f.DurationVar(&o.credTTL, "credential-ttl", verifier.DefaultCredentialTTL, "lifetime of issued credentials (max 1h)")
	f.DurationVar(&o.nonceTTL, "nonce-ttl", verifier.DefaultNonceTTL, "how long a challenge nonce stays usable")
	f.BoolVar(&o.allowWarning, "allow-warning", false, "also issue credentials when the appraisal status is warning")
	f.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate chain for HTTPS")
	f.StringVar(&o.tlsKey, "tls-key", "", "PEM private key for HTTPS")
	f.StringVar(&o.monitorConfig, "monitor-config", "", "YAML file of monitoring rules, thresholds and responses over the built-in defaults (reloaded on SIGHUP and when it changes; see docs/monitoring.md)")
	f.StringVar(&o.webhookURL, "webhook-url", "", "URL that receives alerts as signed JSON POSTs (https unless loopback)")
	f.StringVar(&o.webhookSecret, "webhook-secret-file", "", "file holding the webhook's HMAC-SHA256 key (at least 16 bytes; required with --webhook-url)")
	return cmd
}

func loadRefs(dir string) (*policy.RefSet, error) {
	if dir == "" {
		return firmwarerefs.Load()
	}
	return policy.LoadRefs(os.DirFS(dir), ".")
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	refs, err := loadRefs(o.refs)
	if err != nil {
		return err
	}
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
		DataDir:       o.data,
		Refs:          verifier.NewRefHolder(refs),
		Issuer:        o.issuer,
		Build:         version.String(),
		CredentialTTL: o.credTTL,
		NonceTTL:      o.nonceTTL,
		AllowWarning:  o.allowWarning,
		Logger:        log,
		Monitor:       monCfg,
		Webhook:       webhook,
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
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		scheme = "https"
	} else if host, _, _ := net.SplitHostPort(o.listen); !isLoopback(host) {
		log.Warn("serving plain HTTP beyond loopback; give --tls-cert and --tls-key", "listen", o.listen)
	}
	if o.monitorConfig != "" {
		go watchMonitorConfig(ctx, o.monitorConfig, srv.Monitor(), log)
	}
	log.Info("vouchd listening", "url", scheme+"://"+ln.Addr().String(), "data", o.data,
		"refs", refs.ID(), "profiles", len(refs.Profiles), "images", len(refs.Images), "version", version.String())
	fmt.Fprintf(os.Stderr, "vouchd listening on %s://%s (data %s)\n", scheme, ln.Addr(), o.data)
	if err := srv.Serve(ctx, ln); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("vouchd stopped")
	return nil
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
