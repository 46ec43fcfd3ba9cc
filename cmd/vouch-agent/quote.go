package main

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/internal/tpm2tools"
)

// Files written by quote --export-tpm2-tools.
const (
	exportAKPEM = "ak.pem"
	exportAKTSS = "ak.pub"
	exportMsg   = "quote.msg"
	exportSig   = "quote.sig"
	exportPCRs  = "quote.pcrs"
	exportNonce = "nonce.hex"
)

func (a *app) quoteCmd() *cobra.Command {
	var (
		tf       tpmFlags
		dir      string
		nonceHex string
		bank     string
		bootLog  string
		jsonOut  bool
	)
	cmd := &cobra.Command{
		Use:   "quote --export-tpm2-tools DIR",
		Short: "Quote the PCRs with the AK and write the quote in tpm2-tools' file formats",
		Long: `quote has the TPM quote every PCR (0-23) of one bank with the attestation key
the agent attests with, over --nonce (random when not given), and writes the
quote in the formats of tpm2-tools, so that an independent tool can check it:

  DIR/ak.pem       AK public key, PEM (tpm2_createak -f pem)
  DIR/ak.pub       AK public key, TPM2B_PUBLIC (tpm2_createak -f tss)
  DIR/quote.msg    TPMS_ATTEST (tpm2_quote -m)
  DIR/quote.sig    TPMT_SIGNATURE (tpm2_quote -s)
  DIR/quote.pcrs   PCR values (tpm2_quote -o)
  DIR/nonce.hex    the qualifying data, hex

  tpm2_checkquote -u DIR/ak.pem -m DIR/quote.msg -s DIR/quote.sig \
      -f DIR/quote.pcrs -g sha256 -q $(cat DIR/nonce.hex)

With a TPM without firmware (sim, swtpm), --boot-log replays a recorded
firmware log first, so that the PCRs are not all zero.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usagef("--export-tpm2-tools DIR is required")
			}
			hash, alg, err := bankHash(bank)
			if err != nil {
				return err
			}
			nonce := make([]byte, 32)
			if nonceHex != "" {
				if nonce, err = hex.DecodeString(nonceHex); err != nil || len(nonce) == 0 || len(nonce) > 64 {
					return usagef("--nonce %q: want 1 to 64 bytes in hex", nonceHex)
				}
			} else if _, err := rand.Read(nonce); err != nil {
				return err
			}
			var logBytes []byte
			if bootLog != "" {
				if logBytes, err = readFileBounded(bootLog, agentside.MaxFirmwareLogSize); err != nil {
					return err
				}
			}
			tpm, err := tf.open(cmd.Context(), a)
			if err != nil {
				return err
			}
			defer tpm.Close()
			if logBytes != nil {
				if err := tpm.Boot(logBytes); err != nil {
					return fmt.Errorf("%s: %w", bootLog, err)
				}
			}
			q, err := tpm.Quote(nonce, hash)
			if err != nil {
				return err
			}
			files, err := exportFiles(q, alg)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			names := make([]string, 0, len(files))
			for name := range files {
				names = append(names, name)
			}
			sort.Strings(names)
			for _, name := range names {
				if err := writeOutput(filepath.Join(dir, name), files[name], 0o644, a.stdout); err != nil {
					return err
				}
			}
			check := fmt.Sprintf("tpm2_checkquote -u %s -m %s -s %s -f %s -g %s -q %x",
				filepath.Join(dir, exportAKPEM), filepath.Join(dir, exportMsg), filepath.Join(dir, exportSig),
				filepath.Join(dir, exportPCRs), bank, nonce)
			if jsonOut {
				return json.NewEncoder(a.stdout).Encode(map[string]any{"dir": dir, "files": names, "nonce": hex.EncodeToString(nonce), "bank": bank, "check": check})
			}
			fmt.Fprintf(a.stdout, "quote of the %s PCRs written to %s\ncheck it with: %s\n", bank, dir, check)
			return nil
		},
	}
	tf.add(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&dir, "export-tpm2-tools", "", "directory to write the quote to, in tpm2-tools' formats (required)")
	f.StringVar(&nonceHex, "nonce", "", "qualifying data, hex (default: 32 random bytes)")
	f.StringVar(&bank, "bank", "sha256", "PCR bank to quote: sha1, sha256 or sha384")
	f.StringVar(&bootLog, "boot-log", "", "recorded firmware event log to replay first (TPMs without firmware only)")
	f.BoolVar(&jsonOut, "json", false, "print the result as JSON")
	return cmd
}

func bankHash(name string) (crypto.Hash, tpm2.TPMIAlgHash, error) {
	switch strings.ToLower(name) {
	case "sha1":
		return crypto.SHA1, tpm2.TPMAlgSHA1, nil
	case "sha256":
		return crypto.SHA256, tpm2.TPMAlgSHA256, nil
	case "sha384":
		return crypto.SHA384, tpm2.TPMAlgSHA384, nil
	}
	return 0, 0, usagef("--bank %q: use sha1, sha256 or sha384", name)
}

// exportFiles renders a quote as tpm2-tools files.
func exportFiles(q *agentside.Quote, alg tpm2.TPMIAlgHash) (map[string][]byte, error) {
	tss, err := tpm2tools.MarshalAKPublicTSS(q.AKPublic)
	if err != nil {
		return nil, err
	}
	ak, err := tpm2tools.ParseAKPublic(tss)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(ak.Key)
	if err != nil {
		return nil, err
	}
	b := tpm2tools.Bank{Hash: alg}
	for i := range 24 {
		v, ok := q.PCRs[i]
		if !ok {
			continue
		}
		b.PCRs = append(b.PCRs, i)
		b.Values = append(b.Values, v)
	}
	pcrs, err := tpm2tools.MarshalPCRs([]tpm2tools.Bank{b})
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		exportAKPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		exportAKTSS: tss,
		exportMsg:   q.Message,
		exportSig:   q.Signature,
		exportPCRs:  pcrs,
		exportNonce: []byte(hex.EncodeToString(q.Nonce) + "\n"),
	}, nil
}
