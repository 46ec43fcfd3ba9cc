// Command vouchd is the Vouch verifier: it appraises TPM evidence from agents
// and issues short-lived credentials bound to their TPM keys.
//
// With no flags it listens on 127.0.0.1:8700, keeps its state in
// $XDG_STATE_HOME/vouchd (~/.local/state/vouchd) and uses the reference values
// built into the binary (firmware-refs). See `vouchd --help`.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/internal/cliconf"
	"github.com/vouch-dev/vouch/internal/version"
	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/verifier"
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
beyond loopback.`,
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
	f.StringVar(&o.data, "data", defaultDataDir(), "data directory: database, signing keys, audit log (created 0700)")
	f.StringVar(&o.refs, "refs", "", "directory of reference-value YAML files (default: the set built into vouchd)")
	f.StringVar(&o.issuer, "issuer", "vouchd", "issuer (iss) of the credentials, e.g. https://vouch.example")
	f.DurationVar(&o.credTTL, "credential-ttl", verifier.DefaultCredentialTTL, "lifetime of issued credentials (max 1h)")
	f.DurationVar(&o.nonceTTL, "nonce-ttl", verifier.DefaultNonceTTL, "how long a challenge nonce stays usable")
	f.BoolVar(&o.allowWarning, "allow-warning", false, "also issue credentials when the appraisal status is warning")
	f.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate chain for HTTPS")
	f.StringVar(&o.tlsKey, "tls-key", "", "PEM private key for HTTPS")
	return cmd
}

func defaultDataDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "vouchd")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "vouchd")
	}
	return "vouchd-data"
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
	klog.SetSlogLogger(slog.New(minLevel{log.Handler(), slog.LevelWarn}))
	refs, err := loadRefs(o.refs)
	if err != nil {
		return err
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
	log.Info("vouchd listening", "url", scheme+"://"+ln.Addr().String(), "data", o.data,
		"refs", refs.ID(), "profiles", len(refs.Profiles), "images", len(refs.Images), "version", version.String())
	fmt.Fprintf(os.Stderr, "vouchd listening on %s://%s (data %s)\n", scheme, ln.Addr(), o.data)
	if err := srv.Serve(ctx, ln); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("vouchd stopped")
	return nil
}

type minLevel struct {
	slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.Handler.Enabled(ctx, l)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
