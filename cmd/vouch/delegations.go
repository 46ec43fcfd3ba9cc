package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/access"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/store"
)

// adminFlags are how a command reaches the admin API as a user.
type adminFlags struct {
	server, user, key string
}

func (a *adminFlags) add(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&a.server, "server", "http://127.0.0.1:8700", "the verifier's URL")
	f.StringVar(&a.user, "user", os.Getenv("USER"), "your user id, as registered with the verifier")
	f.StringVar(&a.key, "key", "", "your user key file (PKCS#8 PEM, from vouch users keygen; required)")
}

func (a *adminFlags) client() (*access.Client, error) {
	if a.key == "" {
		return nil, errors.New("give --key (your user key file, made with vouch users keygen) and --user")
	}
	k, err := access.LoadUserKey(a.key)
	if err != nil {
		return nil, err
	}
	return access.NewClient(a.server, a.user, k, nil)
}

func newDelegationsCmd() *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{
		Use:   "delegations",
		Short: "Delegate intents to agents, and suspend, resume or revoke delegations",
		Long: `delegations manages what you let agents do for you. A delegation names the
agents (by image digest and/or agent id), one intent from the verifier's
intent catalogue, the resources (typed ids and prefix patterns such as
Document::"customer-A/*"), until when, and optionally the source networks
and a daily time window (UTC). An agent asks for credentials under it; the
credential's scope is delegation ∩ intent ∩ policy.

Every request is signed with your user key (--key, --user): see vouch users.
Suspending, resuming and revoking take effect at the verifier immediately;
relying parties that decide remotely see it on their next request.`,
	}
	af.add(cmd)
	cmd.AddCommand(newDelegationsCreateCmd(&af), newDelegationsListCmd(&af), newDelegationsShowCmd(&af))
	for _, op := range []string{"suspend", "resume", "revoke"} {
		cmd.AddCommand(newDelegationsStatusCmd(&af, op))
	}
	return cmd
}

func newDelegationsCreateCmd(af *adminFlags) *cobra.Command {
	var q access.DelegationRequest
	var expiresIn, startsIn time.Duration
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create --intent NAME --resource RES... (--image-digest D | --agent-id ID)... [--expires-in 8h]",
		Short: "Delegate an intent on some resources to some agents",
		Example: `  vouch delegations create --user alice --key alice.key \
    --intent summarize-documents \
    --image-digest sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d \
    --resource 'Document::"customer-A/*"' --resource 'Summary::"customer-A/*"' \
    --expires-in 8h --network 10.0.0.0/8 --window 08:00-18:00`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := af.client()
			if err != nil {
				return err
			}
			now := time.Now()
			q.ExpiresAt = now.Add(expiresIn)
			if startsIn > 0 {
				nb := now.Add(startsIn)
				q.NotBefore = &nb
			}
			d, err := c.CreateDelegation(cmd.Context(), &q)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), d)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n", d.ID)
			fmt.Fprintf(cmd.ErrOrStderr(), "delegation %s: intent %s on %s, %s until %s\n", d.ID, d.Intent, strings.Join(d.Resources, ", "), d.Status, d.ExpiresAt.Local().Format(time.RFC3339))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&q.Intent, "intent", "", "intent from the catalogue (required)")
	f.StringArrayVar(&q.Resources, "resource", nil, `resource or prefix pattern, e.g. 'Document::"customer-A/*"' (repeatable, required)`)
	f.StringArrayVar(&q.ImageDigests, "image-digest", nil, "agents running this image digest (repeatable)")
	f.StringArrayVar(&q.AgentIDs, "agent-id", nil, "the agent with this id, its credential sub (repeatable)")
	f.StringArrayVar(&q.Actions, "action", nil, "narrow the intent to these actions (repeatable; default: all of the intent's)")
	f.StringArrayVar(&q.Networks, "network", nil, "allowed source network, CIDR or address (repeatable; default: any)")
	f.StringVar(&q.Window, "window", "", "daily time window in UTC, HH:MM-HH:MM (default: any time)")
	f.DurationVar(&expiresIn, "expires-in", 8*time.Hour, "how long the delegation lasts")
	f.DurationVar(&startsIn, "starts-in", 0, "start later than now")
	f.BoolVar(&asJSON, "json", false, "print the delegation as JSON")
	cmd.MarkFlagRequired("intent")
	cmd.MarkFlagRequired("resource")
	return cmd
}

func newDelegationsListCmd(af *adminFlags) *cobra.Command {
	var asJSON, all bool
	var of string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List your delegations (admins: --all or --of USER)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := af.client()
			if err != nil {
				return err
			}
			user := af.user
			if all {
				user = ""
			}
			if of != "" {
				user = of
			}
			list, err := c.Delegations(cmd.Context(), user)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tUSER\tSTATUS\tINTENT\tRESOURCES\tEXPIRES")
			for _, d := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.User, d.Status, d.Intent, strings.Join(d.Resources, " "), d.ExpiresAt.Local().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&all, "all", false, "every user's delegations (admins)")
	cmd.Flags().StringVar(&of, "of", "", "this user's delegations (admins)")
	return cmd
}

func newDelegationsShowCmd(af *adminFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show one delegation as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client()
			if err != nil {
				return err
			}
			d, err := c.Delegation(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), d)
		},
	}
}

func newDelegationsStatusCmd(af *adminFlags, op string) *cobra.Command {
	var reason string
	var asJSON bool
	short := map[string]string{
		"suspend": "Suspend a delegation: refused until resumed",
		"resume":  "Resume a suspended delegation",
		"revoke":  "Revoke a delegation, for good",
	}[op]
	cmd := &cobra.Command{
		Use:   op + " ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client()
			if err != nil {
				return err
			}
			d, err := c.SetStatus(cmd.Context(), args[0], op, reason)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), d)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "delegation %s is %s\n", d.ID, d.Status)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded and audited)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the delegation as JSON")
	return cmd
}

func newUsersCmd() *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{
		Use:   "users",
		Short: "Make user keys and register users who may delegate to agents",
		Long: `users manages who may delegate. A user is an id and a public key (Ed25519 or
ECDSA P-256); the user signs every admin API request with the private key
(or presents a TLS client certificate for that key, when vouchd verifies
client certificates with --tls-client-ca).

Bootstrap: make a key with "vouch users keygen", then register the first
admin on the verifier host, straight in its database:

  vouch users keygen --out admin.key
  vouch users add --data ~/.local/state/vouchd --id admin --public-key admin.key.pub --admin

Admins then register others over the API (vouch users add --id bob
--public-key bob.pub --user admin --key admin.key).`,
	}
	af.add(cmd)
	cmd.AddCommand(newUsersKeygenCmd(), newUsersAddCmd(&af), newUsersListCmd(&af))
	return cmd
}

func newUsersKeygenCmd() *cobra.Command {
	var out, kind string
	cmd := &cobra.Command{
		Use:   "keygen --out FILE [--type ed25519|p256]",
		Short: "Make a user key: FILE (private, 0600) and FILE.pub",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := access.GenerateUserKey(kind)
			if err != nil {
				return err
			}
			if err := access.WriteUserKey(out, k); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (private, keep it) and %s.pub (register it)\n", out, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "private key file to create (required)")
	cmd.Flags().StringVar(&kind, "type", "ed25519", "key type: ed25519 or p256")
	cmd.MarkFlagRequired("out")
	return cmd
}

func newUsersAddCmd(af *adminFlags) *cobra.Command {
	var id, pubFile, data string
	var admin, asJSON bool
	cmd := &cobra.Command{
		Use:   "add --id ID --public-key FILE [--admin] (--data DIR | --user ADMIN --key FILE)",
		Short: "Register a user, locally in the verifier's database or through the API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pub, err := os.ReadFile(pubFile)
			if err != nil {
				return err
			}
			q := &access.UserRequest{ID: id, PublicKey: string(pub), Admin: admin}
			var v access.UserView
			if data != "" {
				u, err := access.CheckUser(q, "local:"+operator(), time.Now())
				if err != nil {
					return err
				}
				st, err := openStoreAt(cmd, data)
				if err != nil {
					return err
				}
				defer st.Close()
				if err := st.AddUser(cmd.Context(), *u); err != nil {
					return err
				}
				if err := queueAudit(cmd.Context(), st, &audit.Record{Kind: audit.KindConfig, Outcome: "user-added", User: "local:" + operator(),
					Detail: map[string]string{"user": u.ID, "admin": fmt.Sprint(u.Admin)}}); err != nil {
					return err
				}
				v = access.UserViewOf(u)
			} else {
				c, err := af.client()
				if err != nil {
					return err
				}
				r, err := c.AddUser(cmd.Context(), q)
				if err != nil {
					return err
				}
				v = *r
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "registered user %s (admin %v, key sha256:%s)\n", v.ID, v.Admin, v.KeyDigest)
			return nil
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "user id (required)")
	cmd.Flags().StringVar(&pubFile, "public-key", "", "the user's public key, PEM (FILE.pub from keygen; required)")
	cmd.Flags().BoolVar(&admin, "admin", false, "may register users and manage every delegation")
	cmd.Flags().StringVar(&data, "data", "", "register straight in the verifier's data directory (bootstrap, on the verifier host)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.MarkFlagRequired("id")
	cmd.MarkFlagRequired("public-key")
	return cmd
}

func newUsersListCmd(af *adminFlags) *cobra.Command {
	var data string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list (--data DIR | --user ADMIN --key FILE)",
		Short: "List users",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list []access.UserView
			if data != "" {
				st, err := openStoreAt(cmd, data)
				if err != nil {
					return err
				}
				defer st.Close()
				us, err := st.Users(cmd.Context())
				if err != nil {
					return err
				}
				for i := range us {
					list = append(list, access.UserViewOf(&us[i]))
				}
			} else {
				c, err := af.client()
				if err != nil {
					return err
				}
				if list, err = c.Users(cmd.Context()); err != nil {
					return err
				}
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tADMIN\tKEY SHA-256\tCREATED\tBY")
			for _, u := range list {
				fmt.Fprintf(tw, "%s\t%v\t%.16s…\t%s\t%s\n", u.ID, u.Admin, u.KeyDigest, u.CreatedAt.Local().Format(time.RFC3339), u.CreatedBy)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&data, "data", "", "read the verifier's data directory directly")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// openStoreAt opens the database of a verifier data directory.
func openStoreAt(cmd *cobra.Command, dir string) (*store.Store, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("verifier data directory %s: %w (start vouchd once)", dir, err)
	}
	return store.OpenSQLite(cmd.Context(), filepath.Join(dir, verifier.DatabaseFile))
}
