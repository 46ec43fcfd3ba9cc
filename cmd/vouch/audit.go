package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/internal/cliconf"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/audit/auditor"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Verify the verifier's tamper-evident audit log, query it, prove entries",
		Long: `audit checks the verifier's audit log from outside, trusting nothing the
verifier serves: every decision vouchd takes (attestations issued or refused,
credentials, authorization decisions, revocations, enrollments, configuration
changes) is a record in a transparency log (RFC 6962 Merkle tree, C2SP
tlog-tiles, checkpoints signed with an Ed25519 note key).

--log is a vouchd URL (it serves the log under /v1/log/) or a directory: the
verifier's data directory (e.g. one kept by vouch demo --data DIR) or the log
directory inside it. --pubkey is a file holding the checkpoint verifier key
(vouchd writes it to DATA/log.pub and serves it at /v1/log/key); without it
the key pinned in --state is used, else the one the log publishes (trusted on
first use, which the output says). See docs/audit.md.`,
	}
	cmd.PersistentFlags().String("log", verifier.DefaultDataDir(), "the log: a vouchd URL, or a verifier data directory")
	cmd.PersistentFlags().String("pubkey", "", "file with the checkpoint verifier key (note format)")
	cmd.AddCommand(newAuditVerifyCmd(), newAuditShowCmd(), newAuditProveCmd(), newAuditWitnessCmd())
	return cmd
}

// quietLibraryLogs routes the log libraries' own logging (klog, used by the
// transparency-log library) to the CLI's logger, warnings and worse only.
func quietLibraryLogs(cmd *cobra.Command) {
	lg, err := cliconf.Logger(cmd, os.Stderr)
	if err != nil {
		lg = slog.New(slog.DiscardHandler)
	}
	cliconf.RouteLibraryLogs(lg)
}

func auditOptions(cmd *cobra.Command) (auditor.Options, error) {
	loc, _ := cmd.Flags().GetString("log")
	src, err := auditor.OpenSource(loc, nil)
	if err != nil {
		return auditor.Options{}, err
	}
	opts := auditor.Options{Source: src}
	if f, _ := cmd.Flags().GetString("pubkey"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return opts, fmt.Errorf("--pubkey: %w", err)
		}
		opts.PublicKey = strings.TrimSpace(string(b))
	}
	return opts, nil
}

func newAuditVerifyCmd() *cobra.Command {
	var state string
	var reappraise, evidence, asJSON bool
	var workers int
	var witnesses, witnessKeys []string
	cmd := &cobra.Command{
		Use:   "verify [--log URL|DIR] [--pubkey FILE] [--state FILE] [--reappraise] [--witness URL|FILE --witness-key FILE]",
		Short: "Verify the whole log: signature, consistency, every entry, tile and record",
		Long: `verify checks the checkpoint's signature; checks it is consistent with the
last checkpoint this auditor saw (kept in --state, so a history rewritten or
truncated between runs is caught even when the new checkpoint is validly
signed); recomputes the Merkle tree from every entry and compares it with the
signed root and every tile; decodes every record; checks every archived
evidence file against the digest its record names (--evidence, default on);
and with --reappraise re-runs the appraisal of every attestation's archived
evidence against the archived reference set its record names, reporting any
record whose outcome differs.

With --witness (a witness's URL, or a file holding a checkpoint it cosigned)
and --witness-key (its public key file), it also checks that the log shown
here is the history the witness saw, or an extension of it: a log that shows
different auditors different histories (split-view) is caught.

Every problem is reported with its kind (entry-altered, tile-altered,
checkpoint-signature, truncated, rewritten, evidence-altered, ...) and the
log index it starts at; the command then exits 1. The state file is only
updated by a run that found nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			quietLibraryLogs(cmd)
			opts, err := auditOptions(cmd)
			if err != nil {
				return err
			}
			opts.StatePath, opts.Reappraise, opts.Evidence, opts.Workers = state, reappraise, evidence, workers
			if len(witnesses) > 0 {
				if len(witnessKeys) == 0 {
					return errors.New("--witness needs --witness-key: the public key of each witness trusted")
				}
				if opts.Witnessed, err = witnessedCheckpoints(cmd.Context(), witnesses); err != nil {
					return err
				}
				for _, f := range witnessKeys {
					k, err := readKeyFile(f)
					if err != nil {
						return fmt.Errorf("--witness-key: %w", err)
					}
					opts.WitnessKeys = append(opts.WitnessKeys, k)
				}
			}
			prog := newProgress(cmd.ErrOrStderr(), asJSON)
			opts.Progress = prog.update
			rep, err := auditor.Verify(cmd.Context(), opts)
			prog.done()
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), rep); err != nil {
					return err
				}
			} else {
				printAuditReport(cmd.OutOrStdout(), rep)
			}
			if !rep.OK() {
				return fmt.Errorf("audit: %d problem(s) found in the log", len(rep.Findings)+int(rep.MoreFindings))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", "", "file keeping the last verified checkpoint between runs (created if missing)")
	f.BoolVar(&reappraise, "reappraise", false, "re-run the appraisal of every attestation's archived evidence")
	f.BoolVar(&evidence, "evidence", true, "check every archived evidence file against its record's digest")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.IntVar(&workers, "workers", 0, "entry bundles fetched and hashed in parallel (default: one per CPU)")
	f.StringSliceVar(&witnesses, "witness", nil, "a witness's URL, or a file with a checkpoint it cosigned (repeatable)")
	f.StringSliceVar(&witnessKeys, "witness-key", nil, "file with a trusted witness's public key (repeatable)")
	return cmd
}

func printAuditReport(w io.Writer, r *auditor.Report) {
	fmt.Fprintf(w, "log        %s\n", r.Source)
	fmt.Fprintf(w, "origin     %s (key %s)\n", r.Origin, r.KeySource)
	fmt.Fprintf(w, "checkpoint %d entries, root %x\n", r.Size, r.Root)
	if r.PreviousSize != nil {
		fmt.Fprintf(w, "previous   %d entries (from the state file)\n", *r.PreviousSize)
	}
	fmt.Fprintf(w, "records    %d in %s (%.0f records/s):", r.Records, r.Elapsed.Round(time.Millisecond), r.PerSecond)
	for _, k := range sortedKeys(r.ByKind) {
		fmt.Fprintf(w, " %s %d", k, r.ByKind[k])
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "evidence   %d archived files checked\n", r.Evidence)
	for _, v := range r.Witnessed {
		fmt.Fprintf(w, "witness    %s saw %d entries, root %x\n", v.Witness, v.Size, v.Root)
	}
	if r.Skipped != nil {
		fmt.Fprintf(w, "reappraised %d attestations", r.Reappraised)
		for _, k := range sortedKeys(r.Skipped) {
			fmt.Fprintf(w, "; %d %s", r.Skipped[k], k)
		}
		fmt.Fprintln(w)
	}
	if r.OK() {
		fmt.Fprintf(w, "OK: the log verifies")
		if r.StateSaved {
			fmt.Fprintf(w, "; state saved")
		}
		fmt.Fprintln(w)
		return
	}
	fmt.Fprintf(w, "TAMPERING OR DAMAGE: %d problem(s)\n", len(r.Findings)+int(r.MoreFindings))
	for _, f := range r.Findings {
		fmt.Fprintf(w, "  ✗ %s\n", f)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// progress draws a progress line on a terminal.
type progress struct {
	w       io.Writer
	on      bool
	mu      sync.Mutex
	last    time.Time
	start   time.Time
	printed bool
}

func newProgress(w io.Writer, quiet bool) *progress {
	p := &progress{w: w, start: time.Now()}
	if f, ok := w.(*os.File); ok && !quiet {
		p.on = isatty.IsTerminal(f.Fd())
	}
	return p
}

func (p *progress) update(done, total uint64) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.last) < 100*time.Millisecond && done != total {
		return
	}
	p.last = time.Now()
	const width = 30
	frac := 1.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	n := int(frac * width)
	rate := float64(done) / time.Since(p.start).Seconds()
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d entries %3.0f%% %.0f/s ", strings.Repeat("█", n), strings.Repeat("·", width-n), done, total, frac*100, rate)
	p.printed = true
}

func (p *progress) done() {
	if p.printed {
		fmt.Fprintln(p.w)
	}
}

func newAuditShowCmd() *cobra.Command {
	var agent, user, since, kind string
	var asJSON bool
	var limit int
	cmd := &cobra.Command{
		Use:   "show [--agent ID] [--user U] [--since T] [--kind K]",
		Short: "List the records of one agent, one user, or since a time",
		Long: `show verifies the log as verify does (without evidence checks or state) and
prints the records that match every filter given: --agent matches the agent
id (credential sub) or a hex prefix of the AK or agent-key digest; --user
matches the delegating user or delegation id; --since is an RFC 3339 time or
a duration back from now (24h); --kind is a record kind (attestation,
decision, revocation, enrollment, config, ...). It exits 1 if the log does
not verify, after printing what matched.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			quietLibraryLogs(cmd)
			opts, err := auditOptions(cmd)
			if err != nil {
				return err
			}
			var from time.Time
			if since != "" {
				if d, err := time.ParseDuration(since); err == nil {
					from = time.Now().Add(-d)
				} else if from, err = time.Parse(time.RFC3339, since); err != nil {
					return fmt.Errorf("--since %q: give an RFC 3339 time or a duration such as 24h", since)
				}
			}
			type row struct {
				Index  uint64        `json:"index"`
				Record *audit.Record `json:"record"`
			}
			var rows []row
			opts.OnRecord = func(i uint64, r *audit.Record) {
				if (limit > 0 && len(rows) >= limit) || !matches(r, agent, user, kind, from) {
					return
				}
				rows = append(rows, row{i, r})
			}
			rep, err := auditor.Verify(cmd.Context(), opts)
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), map[string]any{"records": rows, "findings": rep.Findings, "size": rep.Size}); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "INDEX\tTIME\tKIND\tOUTCOME\tAGENT\tREASONS\tDETAIL")
				for _, r := range rows {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Index, r.Record.Time().UTC().Format(time.RFC3339), r.Record.Kind, r.Record.Outcome,
						agentLabel(r.Record), joinReasons(r.Record), recordDetail(r.Record))
				}
				tw.Flush()
				fmt.Fprintf(cmd.OutOrStdout(), "%d of %d records match\n", len(rows), rep.Records)
				for _, f := range rep.Findings {
					fmt.Fprintf(cmd.ErrOrStderr(), "✗ %s\n", f)
				}
			}
			if !rep.OK() {
				return fmt.Errorf("audit: the log does not verify (%d problems); the records shown cannot be trusted", len(rep.Findings))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&agent, "agent", "", "agent id, or hex prefix of its AK or agent-key digest")
	f.StringVar(&user, "user", "", "delegating user or delegation id")
	f.StringVar(&since, "since", "", "only records at or after this time (RFC 3339, or a duration such as 24h)")
	f.StringVar(&kind, "kind", "", "only records of this kind")
	f.IntVar(&limit, "limit", 0, "print at most this many records (0: all)")
	f.BoolVar(&asJSON, "json", false, "print the records as JSON")
	return cmd
}

func matches(r *audit.Record, agent, user, kind string, since time.Time) bool {
	if kind != "" && string(r.Kind) != kind {
		return false
	}
	if !since.IsZero() && r.Time().Before(since) {
		return false
	}
	if user != "" && r.User != user && r.Delegation != user {
		return false
	}
	if agent != "" {
		a := r.Agent
		if a == nil {
			return false
		}
		p := strings.ToLower(agent)
		if a.ID != agent && !(len(p) >= 4 && (strings.HasPrefix(hex.EncodeToString(a.AKDigest), p) || strings.HasPrefix(hex.EncodeToString(a.KeyDigest), p))) {
			return false
		}
	}
	return true
}

func agentLabel(r *audit.Record) string {
	if r.Agent == nil {
		return "-"
	}
	if r.Agent.ID != "" {
		return r.Agent.ID
	}
	if len(r.Agent.AKDigest) > 0 {
		return fmt.Sprintf("ak:%x", r.Agent.AKDigest[:min(8, len(r.Agent.AKDigest))])
	}
	return "-"
}

func joinReasons(r *audit.Record) string {
	if len(r.Reasons) == 0 {
		return "-"
	}
	s := make([]string, len(r.Reasons))
	for i, x := range r.Reasons {
		s[i] = string(x)
	}
	return strings.Join(s, ",")
}

func recordDetail(r *audit.Record) string {
	var parts []string
	if r.Step != "" {
		parts = append(parts, "step="+r.Step)
	}
	if c := r.Credential; c != nil {
		parts = append(parts, fmt.Sprintf("cti=%x aud=%s exp=%s", c.ID, c.Audience, time.Unix(c.Expiry, 0).UTC().Format(time.RFC3339)))
	}
	if r.User != "" {
		parts = append(parts, "user="+r.User)
	}
	if r.Action != "" {
		parts = append(parts, "action="+r.Action)
	}
	if r.RefSetID != "" {
		parts = append(parts, fmt.Sprintf("refs=%.19s", r.RefSetID))
	}
	if e := r.Detail[audit.DetailEvent]; e != "" {
		parts = append(parts, "event="+e)
	}
	return strings.Join(parts, " ")
}

func newAuditProveCmd() *cobra.Command {
	var index uint64
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "prove --index N [--log URL|DIR] [--pubkey FILE]",
		Short: "Prove that one record is in the log: an inclusion proof against the signed checkpoint",
		Long: `prove fetches the signed checkpoint, the entry at --index and its RFC 6962
inclusion proof (from the log's tiles), verifies the proof against the
checkpoint's root, and prints the record with the proof. A credential's
record index is its LogIndex claim (-65539) and the Vouch-Log-Index header of
the response that issued it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			quietLibraryLogs(cmd)
			if !cmd.Flags().Changed("index") {
				return errors.New("--index is required")
			}
			opts, err := auditOptions(cmd)
			if err != nil {
				return err
			}
			inc, err := auditor.Prove(cmd.Context(), opts, index)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), inc)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "entry %d is included in the checkpoint of size %d (root %x), signed by %s\n", inc.Index, inc.Size, inc.Root, strings.SplitN(inc.Checkpoint, "\n", 2)[0])
			fmt.Fprintf(w, "leaf hash  %x\n", inc.LeafHash)
			for i, h := range inc.Proof {
				fmt.Fprintf(w, "proof[%d]   %x\n", i, h)
			}
			if r := inc.Record; r != nil {
				fmt.Fprintf(w, "record     %s %s %s at %s; %s %s\n", r.Kind, r.Outcome, agentLabel(r), r.Time().UTC().Format(time.RFC3339), joinReasons(r), recordDetail(r))
			}
			return nil
		},
	}
	cmd.Flags().Uint64Var(&index, "index", 0, "log index of the record (a credential's LogIndex)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the proof and record as JSON")
	return cmd
}
