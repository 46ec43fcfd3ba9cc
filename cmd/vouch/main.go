// Command vouch is the operator's and auditor's tool for Vouch: it runs the
// end-to-end demo, verifies credentials, enrolls and revokes agents' TPMs,
// and derives and checks reference values. See `vouch --help`.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/internal/cliconf"
	"github.com/vouch-dev/vouch/internal/version"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "vouch:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "vouch",
		Short: "Operate and audit Vouch, hardware-backed attestation for software agents",
		Long: `vouch runs the Vouch demo, verifies credentials, manages which TPMs the
verifier trusts, and derives and checks reference values.

Every flag can also be set by a VOUCH_* environment variable (--data is
VOUCH_DATA) or in a YAML file given with --config.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := cliconf.Apply(cmd); err != nil {
				return err
			}
			quietLibraryLogs(cmd)
			return nil
		},
	}
	cliconf.AddFlags(root.PersistentFlags())
	root.AddCommand(newDemoCmd(), newCredCmd(), newAgentsCmd(), newRefsCmd(), newAuditCmd())
	root.AddCommand(newEventlogCmd(), newQuoteCmd())
	root.AddCommand(newDelegationsCmd(), newUsersCmd(), newAuthzCmd(), newBenchCmd())
	return root
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
