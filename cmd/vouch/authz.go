package main

import (
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/policy/authz"
)

func newAuthzCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "authz", Short: "Check and show authorization policy (Cedar schema, intents, policies)"}
	cmd.AddCommand(newAuthzCheckCmd())
	return cmd
}

func newAuthzCheckCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check [DIR]",
		Short: "Validate a policy directory as vouchd --authz-policy would load it",
		Long: `check loads DIR (schema.cedarschema, intents.yaml, policies/*.cedar; default:
the built-in set), validates every policy against the schema and every intent
against the schema's actions, and prints the policy set id, its policies and
the intent catalogue. It exits non-zero with every error when the set would be
refused; run it before sending vouchd a SIGHUP.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var fsys fs.FS = authz.DefaultFS()
			if len(args) == 1 {
				fsys = os.DirFS(args[0])
			}
			e, err := authz.Load(fsys)
			if err != nil {
				return err
			}
			type intentView struct {
				Name        string   `json:"name"`
				Description string   `json:"description,omitempty"`
				Actions     []string `json:"actions"`
				Elevate     []string `json:"elevate,omitempty"`
			}
			var intents []intentView
			for _, n := range e.Catalogue().Names() {
				in, _ := e.Intent(n)
				intents = append(intents, intentView{n, in.Description, in.Actions, in.Elevate})
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), map[string]any{"id": e.ID(), "policies": e.PolicyIDs(), "intents": intents})
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "policy set %s: valid\n  policies: %s\n  intents:\n", e.ID(), strings.Join(e.PolicyIDs(), ", "))
			for _, in := range intents {
				fmt.Fprintf(w, "    %-22s %s", in.Name, strings.Join(in.Actions, ", "))
				if len(in.Elevate) > 0 {
					fmt.Fprintf(w, "; just in time: %s", strings.Join(in.Elevate, ", "))
				}
				fmt.Fprintln(w)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
