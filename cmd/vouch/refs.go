package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/policy"
)

func newRefsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "refs",
		Short: "Derive, check and compare reference values (firmware-refs)",
		Long: `refs manages reference values: the YAML profiles, image allowlists and deny
lists vouchd appraises evidence against (schema: firmware-refs/README.md).

  derive  write a profile from a known-good machine's event log
  check   appraise an event log offline, event by event
  diff    compare two reference sets before rolling one out`,
	}
	cmd.AddCommand(newRefsDeriveCmd(), newRefsCheckCmd(), newRefsDiffCmd())
	return cmd
}

func newRefsDeriveCmd() *cobra.Command {
	var o policy.DeriveOptions
	var logFile, celFile, out, pcrs string
	var images []string
	cmd := &cobra.Command{
		Use:   "derive --eventlog FILE [--cel FILE] --out DIR",
		Short: "Write a platform profile from a known-good machine's event log",
		Long: `derive replays a known-good machine's TCG firmware event log, parses it the
way the verifier will, and writes DIR/NAME.yaml: a profile allowing exactly
what that machine booted (firmware, option ROMs, EFI applications, kernels,
boot loader files and commands, secure boot databases with its dbx as the
minimum, its kernel parameters) and golden PCR values for the boot PCRs
whose events cannot be classified. With --cel, the workload image (digest,
repository, arguments, environment) from the agent's canonical event log is
added to the allowed images.

The parsing quirks a platform needs (EFI application before the calling
event, empty SecureBoot variable, SHA-1-only log) are found and written into
the profile, where a reviewer sees them; --quirk fixes them instead.

Review the file before rolling it out: it trusts whatever booted on that
machine. Compare sets with 'vouch refs diff'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := os.ReadFile(logFile)
			if err != nil {
				return err
			}
			if o.Name == "" {
				o.Name = profileNameFrom(logFile)
			}
			if o.Source == "" {
				o.Source = filepath.Base(logFile)
			}
			if pcrs != "" {
				if o.PCRs, err = parsePCRList(pcrs); err != nil {
					return err
				}
			}
			o.AutoQuirks = len(o.Verify.Quirks) == 0
			d, err := policy.Derive(raw, o)
			if err != nil {
				return err
			}
			var imgs []policy.Image
			for _, im := range images {
				digest, repo, _ := strings.Cut(im, "=")
				imgs = append(imgs, policy.Image{Digest: digest, Repository: repo})
			}
			if celFile != "" {
				b, err := os.ReadFile(celFile)
				if err != nil {
					return err
				}
				w, err := policy.ParseWorkloadCEL(b)
				if err != nil {
					return err
				}
				im := policy.Image{Digest: w.ImageDigest, Repository: policy.Repository(w.ImageRef), Args: w.Args, Note: "derived from " + filepath.Base(celFile)}
				if im.Args == nil {
					im.Args = []string{}
				}
				im.Env = &policy.EnvRules{Allowed: envEntries(w.Env)}
				imgs = append(imgs, im)
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			path := filepath.Join(out, d.Profile.Name+".yaml")
			f, err := os.Create(path)
			if err != nil {
				return err
			}
			if err := policy.MarshalProfileYAML(f, *d.Profile, imgs); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			for _, w := range d.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			p := d.Profile
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: profile %s, bank %s, quirks [%s], secure boot %s, %d EFI apps, %d kernels, %d golden PCRs\n",
				path, p.Name, p.Verify.Bank, strings.Join(p.Verify.Quirks, ","), p.SecureBoot.Mode, len(p.EFIApps), len(p.Kernels), len(p.PCRs))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&logFile, "eventlog", "", "TCG firmware event log of a known-good machine (required)")
	f.StringVar(&celFile, "cel", "", "the workload's canonical event log (PCR 13), to allow its image")
	f.StringVar(&o.Name, "name", "", "profile name, e.g. gce-ubuntu-2404 (default: from the log's file name)")
	f.StringVar(&o.Description, "description", "", "what the profile describes")
	f.StringVar(&o.Source, "source", "", "where the log came from (default: its file name)")
	f.StringVar(&out, "out", ".", "directory to write NAME.yaml to")
	f.StringVar(&o.Verify.Bank, "bank", "", "PCR bank: sha256, sha384 or sha1 (default: sha256, or sha1 for SHA-1-only logs)")
	f.StringSliceVar(&o.Verify.Quirks, "quirk", nil, "parsing relaxation this platform needs (default: found from the log): "+strings.Join(policy.KnownQuirks, ", "))
	f.StringVar(&o.Verify.Loader, "loader", "", "boot loader go-tpm-tools should parse: grub or none")
	f.StringVar(&o.SecureBoot, "secure-boot", "", "required, disabled or any (default: what the log shows)")
	f.StringVar(&pcrs, "pcrs", "", "PCRs to pin by golden value besides those with unclassified events, e.g. 0-7,9")
	f.StringSliceVar(&images, "image", nil, "allowed workload image, sha256:HEX[=REPOSITORY] (repeatable)")
	cmd.MarkFlagRequired("eventlog")
	return cmd
}

func envEntries(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k := range env {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// profileNameFrom turns a file name into a profile name.
func profileNameFrom(file string) string {
	base := strings.ToLower(strings.TrimSuffix(filepath.Base(file), filepath.Ext(file)))
	var b strings.Builder
	for _, r := range base {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '-':
			b.WriteRune(r)
		default:
			b.WriteRune('-')
		}
	}
	return strings.Trim(b.String(), "-.")
}

// loadRefsDir loads a reference directory; "" or "builtin" name the default
// set built into the binaries, "builtin+platforms" that set with every
// example platform profile (firmware-refs/platforms).
func loadRefsDir(dir string) (*policy.RefSet, error) {
	switch dir {
	case "", "builtin":
		return firmwarerefs.Load()
	case "builtin+platforms":
		return firmwarerefs.LoadWithPlatforms()
	}
	return policy.LoadRefs(os.DirFS(dir), ".")
}

// errNotAffirming makes `vouch refs check` exit non-zero.
var errNotAffirming = errors.New("appraisal is not affirming")

func newRefsCheckCmd() *cobra.Command {
	var refsDir, logFile, celFile, profile string
	var asJSON, all bool
	cmd := &cobra.Command{
		Use:   "check --refs DIR --eventlog FILE [--cel FILE]",
		Short: "Appraise an event log offline and show every event's result",
		Long: `check appraises a firmware event log (and optionally a workload CEL) against a
reference set offline, the way vouchd appraises a quote whose PCRs the log
replays to: it picks the profile that matches (or the closest, or --profile)
and prints, per event, match / mismatch / unknown with the expected and
actual values, then every finding with its reason.

"unknown" marks events no rule and no golden value covers (PCRs above 9
without a golden value); they do not affect the result. The command exits
with status 1 when the result is not affirming.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			refs, err := loadRefsDir(refsDir)
			if err != nil {
				return err
			}
			raw, err := os.ReadFile(logFile)
			if err != nil {
				return err
			}
			var celRaw []byte
			if celFile != "" {
				if celRaw, err = os.ReadFile(celFile); err != nil {
					return err
				}
			}
			rep, err := policy.Check(refs, raw, celRaw, policy.CheckOptions{Profile: profile})
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), rep); err != nil {
					return err
				}
			} else {
				printReport(cmd.OutOrStdout(), rep, all)
			}
			if rep.StatusName != "affirming" {
				cmd.SilenceErrors = asJSON
				return errNotAffirming
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&refsDir, "refs", "", "directory of reference-value YAML files (default: the built-in set)")
	f.StringVar(&logFile, "eventlog", "", "TCG firmware event log to appraise (required)")
	f.StringVar(&celFile, "cel", "", "the workload's canonical event log (PCR 13)")
	f.StringVar(&profile, "profile", "", "appraise against this profile only")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.BoolVar(&all, "all", false, "list events appraised by a matching golden PCR value too")
	cmd.MarkFlagRequired("eventlog")
	return cmd
}

func printReport(w io.Writer, r *policy.Report, all bool) {
	fmt.Fprintf(w, "reference set %s\nverification  bank %s, quirks [%s]\n", r.RefSetID, r.Verify.Bank, strings.Join(r.Verify.Quirks, ","))
	if r.StateError != "" {
		fmt.Fprintf(w, "WARNING       the verifier's parser refuses this log: %s\n", r.StateError)
	}
	fmt.Fprintf(w, "profile       %s (of %d considered)\n\n", orDash(r.Profile), r.Considered)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tPCR\tCLASS\tRESULT\tBY\tACTUAL\tEXPECTED")
	hidden := 0
	for _, e := range r.Events {
		if !all && e.Result == policy.ResultMatch && e.By == "pcr" {
			hidden++
			continue
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\n", e.Num, e.PCR, e.Class, e.Result, e.By, clip(e.Actual, 72), clip(e.Expected, 40))
	}
	tw.Flush()
	if hidden > 0 {
		fmt.Fprintf(w, "(%d events in PCRs matching their golden value not shown; --all shows them)\n", hidden)
	}
	fmt.Fprintln(w)
	for _, f := range r.Findings {
		fmt.Fprintf(w, "[%s] %s=%d\n    %s\n", f.Reason, f.Claim, f.Value, f.Detail)
	}
	if r.Workload != nil {
		fmt.Fprintf(w, "workload: %s\n", r.Workload.Status)
		for _, c := range r.Workload.Reasons {
			fmt.Fprintf(w, "  [%s] %s\n", c.Reason, c.Detail)
		}
	}
	fmt.Fprintf(w, "result: %s\n", r.StatusName)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func clip(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len([]rune(s)) > n {
		return string([]rune(s)[:n-1]) + "…"
	}
	return s
}

func newRefsDiffCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "diff A B",
		Short: "List what reference set B adds to and removes from A",
		Long: `diff compares two reference sets, each a directory, "builtin" (the default
set built into vouch) or "builtin+platforms" (it with every example platform
profile of firmware-refs/platforms), field by field: profiles added or removed, and per profile every
allowed digest, secure boot entry, kernel parameter, loader command and
golden value added (+) or removed (-); images and deny lists likewise.
It prints both sets' ids, the ids credentials and audit records carry.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := loadRefsDir(args[0])
			if err != nil {
				return err
			}
			b, err := loadRefsDir(args[1])
			if err != nil {
				return err
			}
			changes := policy.Diff(a, b)
			if asJSON {
				return printJSON(cmd.OutOrStdout(), struct {
					A       string          `json:"a"`
					B       string          `json:"b"`
					Changes []policy.Change `json:"changes"`
				}{a.ID(), b.ID(), changes})
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "--- %s %s\n+++ %s %s\n", args[0], a.ID(), args[1], b.ID())
			for _, c := range changes {
				fmt.Fprintln(w, clip(c.String(), 160))
			}
			if len(changes) == 0 {
				fmt.Fprintln(w, "no differences")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func parsePCRList(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("--pcrs %q: %q is not a number", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				return nil, fmt.Errorf("--pcrs %q: %q is not a number", s, hi)
			}
		}
		if a < 0 || b > 23 || a > b {
			return nil, fmt.Errorf("--pcrs %q: PCRs are 0-23", s)
		}
		for i := a; i <= b; i++ {
			out = append(out, i)
		}
	}
	return out, nil
}
