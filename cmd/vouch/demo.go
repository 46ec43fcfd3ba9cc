package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/internal/cliconf"
	"github.com/vouch-dev/vouch/internal/demo"
)

func newDemoCmd() *cobra.Command {
	var dataDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole Vouch flow on this machine, with no setup",
		Long: `demo starts a verifier on a loopback port, boots the in-process TPM simulator
from a real recorded firmware event log (RHEL 8, UEFI, secure boot), measures an
agent's container image into PCR 13, enrolls the TPM's attestation key, attests,
and calls a protected resource with the credential and per-request proofs of
possession. A user, alice, delegates an intent on customer A's documents to
the agent's image through the signed admin API; the credential's scope is
what that delegation, the intent catalogue and the Cedar policy allow, and
the relying party asks the verifier to decide every request. It then shows
what an attacker meets: a replayed proof, a stolen credential used with
another key (which the monitor then revokes), a delete outside the intent,
a just-in-time write elevation used twice, a revoked delegation, a second
agent that misbehaves (a burst of requests, then actions outside its
declared intent) and is detected, revoked at the relying party and
quarantined, and an agent running an image no reference value allows (after
which the machine is quarantined). Last, it verifies the verifier's audit
log as an outside auditor would (signed checkpoint, Merkle tree, every
record, every attestation re-appraised from its archived evidence). It
prints a short summary and exits 0 when every step went as expected.

With --data DIR the verifier's data directory (database, signing keys) is
kept in DIR for inspection instead of a temporary directory; verify its audit
log again with vouch audit verify --log DIR.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := cliconf.Logger(cmd, os.Stderr)
			if err != nil {
				return err
			}
			if lvl, _ := cmd.Flags().GetString("log-level"); !cmd.Flags().Changed("log-level") && lvl == "info" {
				// The narration tells the story; service logs only on request.
				logger = nil
			}
			out := cmd.OutOrStdout()
			if asJSON {
				out = nil
			}
			sum, err := demo.Run(cmd.Context(), demo.Options{DataDir: dataDir, Out: out, Logger: logger})
			if err != nil {
				return fmt.Errorf("demo: %w", err)
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), sum); err != nil {
					return err
				}
			} else {
				printSummary(cmd, sum)
			}
			if !sum.OK() {
				return fmt.Errorf("demo: some steps did not go as expected")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data", "", "keep the verifier's data directory here (default: a temporary directory, removed)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the summary as JSON instead of the narration")
	return cmd
}

func printSummary(cmd *cobra.Command, s *demo.Summary) {
	w := cmd.OutOrStdout()
	ok := 0
	for _, st := range s.Steps {
		if st.OK {
			ok++
		}
	}
	fmt.Fprintf(w, "\nSummary: %d of %d steps as expected in %s. One agent attested and was served; a replayed proof,\n", ok, len(s.Steps), s.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "a stolen credential and an unapproved image were refused. Least privilege: the credential carried only\n")
	fmt.Fprintf(w, "what alice delegated; a delete was refused, one write was elevated just in time and its reuse refused,\n")
	fmt.Fprintf(w, "and the revoked delegation was refused on the very next request.\n")
	if s.Quarantined {
		fmt.Fprintf(w, "The monitor raised %d alerts: it revoked the stolen credential, caught the misbehaving agent (burst, then\n", len(s.Alerts))
		fmt.Fprintf(w, "actions outside its intent), revoked it — refused at the relying party %v after the revocation — and\n", s.RevocationToRefusal.Round(time.Millisecond))
		fmt.Fprintf(w, "quarantined its workload, then its whole machine when it came back with a changed image.\n")
	}
	fmt.Fprintf(w, "Every decision is in the transparency log (%d records); a witness cosigned it, and a history rewritten\n", s.AuditRecords)
	fmt.Fprintf(w, "with the log's own key was caught as a split view.\n")
	if s.Kept {
		fmt.Fprintf(w, "The verifier's data is in %s (inspect it with `vouch agents list --data %s`,\n", s.DataDir, s.DataDir)
		fmt.Fprintf(w, "`vouch agents show <AK prefix> --data %s`; audit it with `vouch audit verify --log %s`).\n", s.DataDir, s.DataDir)
	}
}
