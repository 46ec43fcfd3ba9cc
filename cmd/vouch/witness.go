package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/internal/cliconf"
	"github.com/vouch-dev/vouch/verifier/audit/auditor"
	"github.com/vouch-dev/vouch/verifier/audit/witness"
)

func newAuditWitnessCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "witness",
		Short: "Run a witness that verifies the log and cosigns its checkpoints",
		Long: `A witness is an auditor that publishes what it saw. It verifies the whole
log (like vouch audit verify --state) and, only when nothing is wrong and the
log extends what it cosigned before, adds its own Ed25519 signature to the
log's checkpoint and serves it at GET /checkpoint.

Auditors then pass the witness's checkpoint to vouch audit verify --witness:
a log that shows them a history other than the one its witnesses saw (a split
view) is caught, even when every checkpoint it serves is validly signed by
its own key. Run witnesses apart from the verifier, by other people.

  vouch audit witness keygen --name witness.example.org --out witness.key
  vouch audit witness run --log https://vouchd.example:8443 --pubkey log.pub \
      --key witness.key --state witness.json --listen 127.0.0.1:8477
  vouch audit verify --log https://vouchd.example:8443 --pubkey log.pub \
      --witness http://127.0.0.1:8477 --witness-key witness.pub`,
	}
	cmd.AddCommand(newWitnessKeygenCmd(), newWitnessRunCmd())
	return cmd
}

func newWitnessKeygenCmd() *cobra.Command {
	var name, out string
	cmd := &cobra.Command{
		Use:   "keygen --name NAME --out FILE",
		Short: "Create a witness key (FILE, 0600) and its public key (FILE.pub)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" || out == "" {
				return errors.New("--name and --out are required")
			}
			skey, vkey, err := witness.GenerateKey(name)
			if err != nil {
				return err
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("--out: %w (an existing key is never overwritten)", err)
			}
			if _, err := fmt.Fprintln(f, skey); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			if err := os.WriteFile(out+".pub", []byte(vkey+"\n"), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "witness key %s (keep it secret)\npublic key  %s.pub: %s\n", out, out, vkey)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the witness's name, e.g. its host name")
	cmd.Flags().StringVar(&out, "out", "", "file for the secret key; the public key goes to FILE.pub")
	return cmd
}

func newWitnessRunCmd() *cobra.Command {
	var keyFile, state, listen string
	var interval time.Duration
	var evidence, once bool
	cmd := &cobra.Command{
		Use:   "run --log URL|DIR --pubkey FILE --key FILE --state FILE [--listen ADDR]",
		Short: "Verify and cosign the log every --interval, and serve the latest cosigned checkpoint",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts, err := auditOptions(cmd)
			if err != nil {
				return err
			}
			if opts.PublicKey == "" {
				return errors.New("--pubkey is required: a witness never trusts the key a log publishes")
			}
			if keyFile == "" || state == "" {
				return errors.New("--key and --state are required")
			}
			skey, err := readKeyFile(keyFile)
			if err != nil {
				return fmt.Errorf("--key: %w", err)
			}
			logger, err := cliconf.Logger(cmd, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			w, err := witness.New(witness.Options{Source: opts.Source, LogKey: opts.PublicKey, SignerKey: skey,
				StatePath: state, Evidence: evidence, Logger: logger})
			if err != nil {
				return err
			}
			if once {
				rep, err := w.Observe(cmd.Context())
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "cosigned %d entries, root %x, as %s\n", rep.Size, rep.Root, w.Name())
				_, err = cmd.OutOrStdout().Write(w.Checkpoint())
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen: %w", err)
			}
			mux := http.NewServeMux()
			mux.Handle("GET "+witness.CheckpointPath, w)
			mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) { io.WriteString(rw, "ok\n") })
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
			go srv.Serve(ln)
			logger.Info("witness serving", "url", "http://"+ln.Addr().String()+witness.CheckpointPath, "name", w.Name(), "public_key", w.VerifierKey(), "log", opts.Source.String())
			w.Run(ctx, interval)
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyFile, "key", "", "the witness's secret key file (vouch audit witness keygen)")
	f.StringVar(&state, "state", "", "file keeping the last checkpoint verified (and FILE.cosigned, the last cosigned)")
	f.StringVar(&listen, "listen", "127.0.0.1:8477", "address to serve GET /checkpoint on")
	f.DurationVar(&interval, "interval", time.Minute, "how often to verify and cosign the log")
	f.BoolVar(&evidence, "evidence", true, "also check every archived evidence file")
	f.BoolVar(&once, "once", false, "verify and cosign once, print the cosigned checkpoint and exit")
	return cmd
}

// readKeyFile reads a one-line key file.
func readKeyFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if len(b) > 4096 {
		return "", fmt.Errorf("%s is %d bytes: not a key file", path, len(b))
	}
	return strings.TrimSpace(string(b)), nil
}

// witnessedCheckpoints reads the --witness checkpoints: a witness URL (its
// GET /checkpoint) or a file holding a cosigned checkpoint.
func witnessedCheckpoints(ctx context.Context, locs []string) ([][]byte, error) {
	var out [][]byte
	hc := &http.Client{Timeout: 10 * time.Second}
	for _, loc := range locs {
		var b []byte
		var err error
		if strings.HasPrefix(loc, "http://") || strings.HasPrefix(loc, "https://") {
			b, err = fetchCheckpoint(ctx, hc, strings.TrimSuffix(loc, "/")+witness.CheckpointPath)
		} else {
			b, err = os.ReadFile(loc)
			if err == nil && len(b) > auditor.MaxCheckpoint {
				err = fmt.Errorf("%d bytes, over the %d-byte bound", len(b), auditor.MaxCheckpoint)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("--witness %s: %w", loc, err)
		}
		out = append(out, b)
	}
	return out, nil
}

func fetchCheckpoint(ctx context.Context, hc *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, auditor.MaxCheckpoint+1))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the witness answered %s: %.200s", resp.Status, strings.TrimSpace(string(b)))
	}
	if len(b) > auditor.MaxCheckpoint {
		return nil, fmt.Errorf("over the %d-byte bound", auditor.MaxCheckpoint)
	}
	return b, nil
}
