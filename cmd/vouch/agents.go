package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/internal/version"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/store"
)

func newAgentsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "Manage the machines (attestation keys) and agents the verifier trusts",
		Long: `agents manages the verifier's enrollment registry: the attestation keys (AKs)
whose quotes it accepts. An AK that is not enrolled, or whose enrollment was
revoked, is refused (reasons ak-unknown, ak-revoked). It also shows what the
verifier's monitor saw of each machine and agent (trust, last attestation,
alerts, quarantines) and releases quarantines (see docs/monitoring.md).

These commands open the verifier's database directly (--data, the same
directory vouchd uses); run them on the verifier host. SQLite allows them to
run while vouchd does.`,
	}
	cmd.PersistentFlags().String("data", verifier.DefaultDataDir(), "the verifier's data directory")
	cmd.AddCommand(newEnrollCmd(), newAgentsListCmd(), newAgentsShowCmd(), newAgentsRevokeCmd(), newAgentsReleaseCmd())
	return cmd
}

func openStore(cmd *cobra.Command) (*store.Store, error) {
	dir, _ := cmd.Flags().GetString("data")
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("verifier data directory %s: %w (start vouchd once, or pass --data)", dir, err)
	}
	return store.OpenSQLite(cmd.Context(), filepath.Join(dir, verifier.DatabaseFile))
}

func operator() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "unknown"
}

func newEnrollCmd() *cobra.Command {
	var akFile, name string
	cmd := &cobra.Command{
		Use:   "enroll --ak-pub FILE [--name NAME]",
		Short: "Trust an attestation key on the operator's word (fallback)",
		Long: `enroll records an AK public key (PEM "PUBLIC KEY", as written by
vouch-agent ak --out) as trusted. This is operator enrollment, the fallback:
the verifier trusts the AK because you say it belongs to a machine you
control. The default is enrollment by credential activation against the
TPM's EK certificate (vouchd --ek-roots, vouch-agent enroll); use this for
TPMs without an EK certificate you can configure, or to re-admit a TPM whose
enrollment you revoked (see docs/hardware-trust.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			spki, err := readAKPublic(akFile)
			if err != nil {
				return err
			}
			st, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			e, err := EnrollAK(cmd.Context(), st, spki, name, operator())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "enrolled AK %x (operator enrollment by %s)\n", e.AKDigest, e.EnrolledBy)
			return nil
		},
	}
	cmd.Flags().StringVar(&akFile, "ak-pub", "", "AK public key, PEM (required)")
	cmd.Flags().StringVar(&name, "name", "", "a label for the machine")
	cmd.MarkFlagRequired("ak-pub")
	return cmd
}

// EnrollAK records an operator enrollment of the AK with the given
// SubjectPublicKeyInfo.
func EnrollAK(ctx context.Context, st *store.Store, spki []byte, name, by string) (*store.Enrollment, error) {
	if _, err := x509.ParsePKIXPublicKey(spki); err != nil {
		return nil, fmt.Errorf("AK public key: %w", err)
	}
	d := sha256.Sum256(spki)
	e := store.Enrollment{AKDigest: d[:], AKPublic: spki, Method: "operator", Name: name, EnrolledBy: by, EnrolledAt: time.Now()}
	if err := st.Enroll(ctx, e); err != nil {
		return nil, err
	}
	err := queueAudit(ctx, st, &audit.Record{Kind: audit.KindEnrollment, Outcome: "enrolled", User: by, TimeMillis: e.EnrolledAt.UnixMilli(),
		Agent: &audit.Agent{AKDigest: e.AKDigest}, Detail: map[string]string{"method": e.Method, "name": name}})
	return &e, err
}

// queueAudit queues the audit record of a change the CLI made in the
// database; vouchd appends it to the transparency log (store.QueueAuditRecord).
func queueAudit(ctx context.Context, st *store.Store, rec *audit.Record) error {
	rec.Version, rec.Build = audit.SchemaVersion, "vouch "+version.String()
	if rec.TimeMillis == 0 {
		rec.TimeMillis = time.Now().UnixMilli()
	}
	b, err := audit.Encode(rec)
	if err != nil {
		return fmt.Errorf("encoding the audit record: %w", err)
	}
	if err := st.QueueAuditRecord(ctx, b, rec.Time()); err != nil {
		return fmt.Errorf("the change is made, but its audit record could not be queued: %w", err)
	}
	return nil
}

func readAKPublic(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading AK public key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%s is not a PEM PUBLIC KEY (write one with vouch-agent ak --out)", path)
	}
	return block.Bytes, nil
}

func newAgentsListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List enrolled machines (AKs) with trust, last attestation, alerts and quarantines",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			ms, err := machineStatuses(cmd.Context(), st)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), ms)
			}
			return printMachines(cmd.OutOrStdout(), ms)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newAgentsRevokeCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke AK-DIGEST-PREFIX --reason TEXT",
		Short: "Stop trusting an attestation key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			found, err := st.FindEnrollments(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			switch len(found) {
			case 0:
				return fmt.Errorf("no enrolled AK starts with %s", args[0])
			case 1:
			default:
				return fmt.Errorf("%d AKs start with %s; give more digits", len(found), args[0])
			}
			err = st.RevokeEnrollment(cmd.Context(), found[0].AKDigest, operator(), reason, time.Now())
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("AK %x is already revoked", found[0].AKDigest)
			}
			if err != nil {
				return err
			}
			// Credentials already issued through this AK stop working too:
			// vouchd's revocation feed picks these entries up within a
			// heartbeat.
			rs, err := st.RevokeCredentialsOfAK(cmd.Context(), found[0].AKDigest, store.Revocation{
				Reason: "AK revoked: " + reason, RevokedBy: operator(), RevokedAt: time.Now()})
			if err != nil {
				return fmt.Errorf("AK revoked, but revoking its live credentials failed: %w", err)
			}
			if err := queueAudit(cmd.Context(), st, &audit.Record{Kind: audit.KindRevocation, Outcome: "revoked", User: operator(),
				Agent: &audit.Agent{AKDigest: found[0].AKDigest}, Reasons: []attest.Reason{attest.ReasonAKRevoked},
				Detail: map[string]string{audit.DetailRevocationKind: audit.RevocationOfAK, "reason": reason,
					"credentials_revoked": fmt.Sprint(len(rs))}}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked AK %x and %d live credentials issued through it\n", found[0].AKDigest, len(rs))
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded with the revocation; required)")
	cmd.MarkFlagRequired("reason")
	return cmd
}
