package main

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/internal/tpm2tools"
)

func newQuoteCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "quote",
		Short: "Verify TPM quotes given as tpm2-tools files",
	}
	cmd.AddCommand(newQuoteVerifyCmd())
	return cmd
}

func newQuoteVerifyCmd() *cobra.Command {
	var akFile, msgFile, sigFile, pcrsFile, nonceHex, hashName string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify --ak-pub FILE --msg FILE --sig FILE --pcrs FILE --nonce HEX",
		Short: "Verify a quote written by tpm2_quote, like tpm2_checkquote",
		Long: `verify checks a TPM quote given as the files tpm2-tools writes, the way
tpm2_checkquote does, and prints the quoted PCRs:

  tpm2_createak ... -u ak.pub -f pem     (or -f tss, the default)
  tpm2_quote -c ak.ctx -l sha256:0,1,7 -q <nonce hex> -m quote.msg -s quote.sig -o quote.pcrs

  vouch quote verify --ak-pub ak.pub --msg quote.msg --sig quote.sig \
      --pcrs quote.pcrs --nonce <nonce hex>

It checks the signature by the AK over the message (--hash, default sha256),
that the message is a TPM-generated quote whose qualifying data is the nonce,
that the PCR file holds exactly the PCRs the quote selects, and that their
values hash to the quote's PCR digest. With a -f tss AK file it also checks
that the AK is a restricted, fixedTPM signing key.

Exit status 0 when the quote verifies; 1 with the reason otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nonce, err := hex.DecodeString(strings.TrimPrefix(nonceHex, "0x"))
			if err != nil {
				return fmt.Errorf("--nonce %q is not hex", nonceHex)
			}
			hash, err := parseHashName(hashName)
			if err != nil {
				return err
			}
			akRaw, err := readBounded(akFile, tpm2tools.MaxPublicSize)
			if err != nil {
				return fmt.Errorf("--ak-pub: %w", err)
			}
			ak, err := tpm2tools.ParseAKPublic(akRaw)
			if err != nil {
				return fmt.Errorf("--ak-pub %s: %w", akFile, err)
			}
			msg, err := readBounded(msgFile, tpm2tools.MaxMessageSize)
			if err != nil {
				return fmt.Errorf("--msg: %w", err)
			}
			sig, err := readBounded(sigFile, tpm2tools.MaxSignatureSize)
			if err != nil {
				return fmt.Errorf("--sig: %w", err)
			}
			pcrs, err := readBounded(pcrsFile, tpm2tools.MaxPCRFileSize)
			if err != nil {
				return fmt.Errorf("--pcrs: %w", err)
			}
			q, err := tpm2tools.Verify(tpm2tools.VerifyOpts{AK: ak, Message: msg, Signature: sig, PCRs: pcrs, Nonce: nonce, Hash: hash})
			if err != nil {
				return err
			}
			if asJSON {
				out := map[string]map[string]string{}
				for _, b := range q.Banks {
					m := map[string]string{}
					for i, p := range b.PCRs {
						m[strconv.Itoa(p)] = hex.EncodeToString(b.Values[i])
					}
					out[tpm2tools.AlgName(b.Hash)] = m
				}
				return printJSON(cmd.OutOrStdout(), map[string]any{"verified": true, "pcrs": out})
			}
			w := cmd.OutOrStdout()
			fmt.Fprintln(w, "quote verified: signature, nonce and PCR digest")
			fmt.Fprintln(w, "pcrs:")
			for _, b := range q.Banks {
				fmt.Fprintf(w, "  %s:\n", tpm2tools.AlgName(b.Hash))
				for i, p := range b.PCRs {
					fmt.Fprintf(w, "    %-3d: 0x%x\n", p, b.Values[i])
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&akFile, "ak-pub", "", "AK public key: PEM (tpm2_createak -f pem) or TPM2B_PUBLIC (-f tss)")
	f.StringVar(&msgFile, "msg", "", "quote message (tpm2_quote -m)")
	f.StringVar(&sigFile, "sig", "", "quote signature (tpm2_quote -s)")
	f.StringVar(&pcrsFile, "pcrs", "", "PCR values (tpm2_quote -o)")
	f.StringVar(&nonceHex, "nonce", "", "the qualifying data the quote must carry, hex (tpm2_quote -q)")
	f.StringVar(&hashName, "hash", "sha256", "hash of the signature and PCR digest: sha1, sha256, sha384, sha512")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	for _, n := range []string{"ak-pub", "msg", "sig", "pcrs", "nonce"} {
		cmd.MarkFlagRequired(n)
	}
	return cmd
}

func parseHashName(s string) (tpm2.TPMIAlgHash, error) {
	switch strings.ToLower(s) {
	case "sha1":
		return tpm2.TPMAlgSHA1, nil
	case "sha256", "":
		return tpm2.TPMAlgSHA256, nil
	case "sha384":
		return tpm2.TPMAlgSHA384, nil
	case "sha512":
		return tpm2.TPMAlgSHA512, nil
	}
	return 0, fmt.Errorf("--hash %q: use sha1, sha256, sha384 or sha512", s)
}
