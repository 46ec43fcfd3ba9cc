package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/policy"
)

func newRefsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "refs",
		Short: "Derive and check reference values (firmware-refs)",
	}
	cmd.AddCommand(newRefsDeriveCmd())
	return cmd
}

func newRefsDeriveCmd() *cobra.Command {
	var o policy.DeriveOptions
	var logFile, out, pcrs string
	var images []string
	cmd := &cobra.Command{
		Use:   "derive --eventlog FILE --name NAME --out DIR",
		Short: "Write a platform profile from a known-good machine's event log",
		Long: `derive replays a known-good machine's TCG firmware event log and writes a
reference profile pinning its boot PCRs (0-9 by default) to DIR/NAME.yaml.
It also parses the log the way the verifier will; a log that needs a quirk
(--quirk) fails here with the parser's reason.

Review the file before rolling it out: it trusts whatever booted on that
machine.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := os.ReadFile(logFile)
			if err != nil {
				return err
			}
			if o.Source == "" {
				o.Source = filepath.Base(logFile)
			}
			if pcrs != "" {
				if o.PCRs, err = parsePCRList(pcrs); err != nil {
					return err
				}
			}
			p, err := policy.DeriveProfile(raw, o)
			if err != nil {
				return err
			}
			var imgs []policy.Image
			for _, im := range images {
				digest, repo, _ := strings.Cut(im, "=")
				imgs = append(imgs, policy.Image{Digest: digest, Repository: repo})
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			path := filepath.Join(out, p.Name+".yaml")
			f, err := os.Create(path)
			if err != nil {
				return err
			}
			if err := policy.MarshalProfileYAML(f, *p, imgs); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: profile %s, bank %s, %d PCRs, secure boot %s\n", path, p.Name, p.Verify.Bank, len(p.PCRs), p.SecureBoot)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&logFile, "eventlog", "", "TCG firmware event log of a known-good machine (required)")
	f.StringVar(&o.Name, "name", "", "profile name, e.g. gce-ubuntu-2404 (required)")
	f.StringVar(&o.Description, "description", "", "what the profile describes")
	f.StringVar(&o.Source, "source", "", "where the log came from (default: its file name)")
	f.StringVar(&out, "out", ".", "directory to write NAME.yaml to")
	f.StringVar(&o.Verify.Bank, "bank", "", "PCR bank: sha256, sha384 or sha1 (default: sha256, or sha1 for SHA-1-only logs)")
	f.StringSliceVar(&o.Verify.Quirks, "quirk", nil, "parsing relaxation this platform needs: "+strings.Join(policy.KnownQuirks, ", "))
	f.StringVar(&o.Verify.Loader, "loader", "", "boot loader to parse: grub or none")
	f.StringVar(&o.SecureBoot, "secure-boot", "", "required, disabled or any (default: what the log shows)")
	f.StringVar(&pcrs, "pcrs", "", "PCRs to pin, e.g. 0-7,9 (default 0-9)")
	f.StringSliceVar(&images, "image", nil, "allowed workload image, sha256:HEX[=REPOSITORY] (repeatable)")
	cmd.MarkFlagRequired("eventlog")
	cmd.MarkFlagRequired("name")
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
