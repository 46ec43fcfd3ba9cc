package main

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"

	"github.com/spf13/cobra"
)

func (a *app) akCmd() *cobra.Command {
	var (
		tf      tpmFlags
		out     string
		jsonOut bool
	)
	cmd := &cobra.Command{
		Use:   "ak",
		Short: "Write the TPM's attestation key (AK) public key, to enroll it with the verifier",
		Long: `ak writes the public key of the TPM's attestation key as a PEM "PUBLIC KEY"
(SubjectPublicKeyInfo) file and prints its digest: the SHA-256 of the DER
SubjectPublicKeyInfo, in hex. Give the file to the verifier operator:

  vouch agents enroll --ak-pub ak.pem

The AK is the ECC P-256 restricted signing key of go-tpm-tools
(client.AttestationKeyECC) in the owner hierarchy; it is the same every time
for a given TPM. With --tpm sim it is derived from the seed in the state
directory: keep that directory to keep the AK, and never enroll a simulator
AK where production agents are appraised.`,
		Example: "  vouch-agent ak --tpm sim --out ak.pem",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("--out is empty")
			}
			tpm, err := tf.open(cmd.Context(), a)
			if err != nil {
				return err
			}
			defer tpm.Close()
			pub, err := tpm.AKPublic()
			if err != nil {
				return err
			}
			der, err := x509.MarshalPKIXPublicKey(pub)
			if err != nil {
				return fmt.Errorf("encoding the AK public key: %w", err)
			}
			sum := sha256.Sum256(der)
			digest := hex.EncodeToString(sum[:])
			if err := writeOutput(out, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644, a.stdout); err != nil {
				return err
			}
			if jsonOut {
				return json.NewEncoder(a.stdout).Encode(map[string]any{
					"ak_pub_file": out,
					"ak_digest":   digest,
					"tpm":         tf.spec,
					"simulated":   tpm.Simulated(),
				})
			}
			if out != "-" {
				fmt.Fprintf(a.stdout, "AK public key written to %s\n", out)
			}
			fmt.Fprintf(a.stdout, "AK digest (SHA-256 of SPKI): %s\n", digest)
			if tpm.Simulated() {
				fmt.Fprintln(a.stdout, "warning: this AK belongs to the INSECURE TPM simulator; enroll it only on development verifiers")
			}
			if out != "-" {
				fmt.Fprintf(a.stdout, "enroll it with: vouch agents enroll --ak-pub %s\n", out)
			}
			return nil
		},
	}
	tf.add(cmd.Flags())
	cmd.Flags().StringVar(&out, "out", "ak.pem", `file to write the PEM public key to; "-" writes it to standard output`)
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the result as JSON")
	return cmd
}
