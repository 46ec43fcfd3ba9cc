package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/store"
)

func newAgentsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "Manage the TPMs (attestation keys) the verifier trusts",
		Long: `agents manages the verifier's enrollment registry: the attestation keys (AKs)
whose quotes it accepts. An AK that is not enrolled, or whose enrollment was
revoked, is refused (reasons ak-unknown, ak-revoked).

These commands open the verifier's database directly (--data, the same
directory vouchd uses); run them on the verifier host. SQLite allows them to
run while vouchd does.`,
	}
	cmd.PersistentFlags().String("data", verifier.DefaultDataDir(), "the verifier's data directory")
	cmd.AddCommand(newEnrollCmd(), newAgentsListCmd(), newAgentsRevokeCmd())
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
	return &e, nil
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
		Short: "List enrolled attestation keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			list, err := st.Enrollments(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				type row struct {
					AK         string     `json:"ak_digest"`
					Method     string     `json:"method"`
					Name       string     `json:"name,omitempty"`
					By         string     `json:"enrolled_by"`
					At         time.Time  `json:"enrolled_at"`
					RevokedAt  *time.Time `json:"revoked_at,omitempty"`
					RevokedBy  string     `json:"revoked_by,omitempty"`
					RevokeNote string     `json:"revoke_reason,omitempty"`
					EK         string     `json:"ek_digest,omitempty"`
					Detail     string     `json:"detail,omitempty"`
				}
				rows := []row{}
				for _, e := range list {
					rows = append(rows, row{hex.EncodeToString(e.AKDigest), e.Method, e.Name, e.EnrolledBy, e.EnrolledAt, e.RevokedAt, e.RevokedBy, e.RevokeReason, hex.EncodeToString(e.EKDigest), e.Detail})
				}
				return printJSON(cmd.OutOrStdout(), rows)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "AK\tSTATUS\tMETHOD\tNAME\tENROLLED\tBY")
			for _, e := range list {
				status := "active"
				if !e.Active() {
					status = "revoked " + e.RevokedAt.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%x\t%s\t%s\t%s\t%s\t%s\n", e.AKDigest[:8], status, e.Method, e.Name, e.EnrolledAt.Format(time.RFC3339), e.EnrolledBy)
			}
			return tw.Flush()
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
			fmt.Fprintf(cmd.OutOrStdout(), "revoked AK %x\n", found[0].AKDigest)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded with the revocation; required)")
	cmd.MarkFlagRequired("reason")
	return cmd
}
