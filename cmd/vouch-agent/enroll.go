package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
)

func (a *app) enrollCmd() *cobra.Command {
	var (
		tf         tpmFlags
		verifier   string
		name       string
		akCertFile string
		devEKCert  string
		printEK    bool
		jsonOut    bool
		timeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "enroll --verifier URL",
		Short: "Enroll this TPM's attestation key with the verifier by credential activation",
		Long: `enroll makes the verifier trust this TPM's attestation key (AK) on the strength
of the TPM manufacturer's certificate chain:

 1. it reads the EK certificate (NV 0x01c0000a ECC, 0x01c00002 RSA) and any
    intermediates (NV 0x01c00100...) and has the TPM certify the AK's creation;
 2. POST /v1/enroll: the verifier checks the EK certificate against its
    manufacturer roots (--ek-roots) and answers with a secret encrypted to
    the EK and bound to the AK (TPM2_MakeCredential);
 3. the TPM recovers the secret (TPM2_ActivateCredential), which it can only
    do if it holds both the EK and the AK; POST /v1/enroll/activate sends it
    back and the verifier records the enrollment.

A TPM without an EK certificate enrolls if the verifier's operator put its EK
on the allowlist (--ek-allowlist): --print-ek prints the digest to give them.
A cloud vTPM with an AK certificate passes it with --ak-cert.

Run it again after a TPM clear: the AK changes, the EK does not, and the new
AK supersedes the old one in the registry. Enrolling an enrolled AK is not an
error.`,
		Example: `  vouch-agent enroll --verifier https://vouch.example --tpm /dev/tpmrm0 --name web-7
  vouch-agent enroll --print-ek --tpm /dev/tpmrm0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !printEK && verifier == "" {
				return usagef("--verifier is required")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			tpm, err := tf.open(ctx, a)
			if err != nil {
				return err
			}
			defer tpm.Close()
			if devEKCert != "" {
				cert, err := readFileBounded(devEKCert, 8<<10)
				if err != nil {
					return err
				}
				kt := agentside.EKECC
				if strings.Contains(strings.ToLower(devEKCert), "rsa") {
					kt = agentside.EKRSA
				}
				if err := tpm.WriteEKCert(kt, cert); err != nil {
					return err
				}
			}
			if printEK {
				ek, err := tpm.EK()
				if err != nil {
					return err
				}
				der, err := agentside.EKPublicDER(ek.Public)
				if err != nil {
					return err
				}
				d := sha256.Sum256(der)
				if jsonOut {
					return json.NewEncoder(a.stdout).Encode(map[string]any{"ek_digest": hex.EncodeToString(d[:]), "ek_type": ek.Type, "ek_cert": ek.Cert != nil})
				}
				fmt.Fprintf(a.stdout, "%s  # %s EK, certificate in NV: %v\n", hex.EncodeToString(d[:]), ek.Type, ek.Cert != nil)
				return nil
			}
			client, err := agentside.NewClient(verifier, nil)
			if err != nil {
				return usageError{err}
			}
			var akCert []byte
			if akCertFile != "" {
				if akCert, err = readFileBounded(akCertFile, 8<<10); err != nil {
					return err
				}
			}
			res, err := tpm.Enroll(ctx, client, agentside.EnrollOptions{Name: name, AKCert: akCert})
			if err != nil {
				var ae *attest.Error
				var pe *attest.ProblemError
				if errors.As(err, &ae) && errors.As(err, &pe) {
					return refusedError{ae}
				}
				return err
			}
			if jsonOut {
				return json.NewEncoder(a.stdout).Encode(res)
			}
			state := "enrolled"
			if res.Already {
				state = "already enrolled"
			}
			fmt.Fprintf(a.stdout, "AK %s %s (method %s, EK %s)\n", res.AKDigest, state, res.Method, res.EKDigest)
			for _, s := range res.Superseded {
				fmt.Fprintf(a.stdout, "superseded AK %s of the same TPM (TPM cleared)\n", s)
			}
			return nil
		},
	}
	tf.add(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&verifier, "verifier", "", "verifier base URL (required unless --print-ek)")
	f.StringVar(&name, "name", "", "a label for this machine in the verifier's registry")
	f.StringVar(&akCertFile, "ak-cert", "", "AK certificate (DER) from the cloud provider, for vTPMs")
	f.BoolVar(&printEK, "print-ek", false, "print the EK public key digest (for the verifier's --ek-allowlist) and exit")
	f.StringVar(&devEKCert, "dev-ek-cert", "", "DEVELOPMENT: write this EK certificate (DER) into the NV of a simulator or swtpm first (name containing \"rsa\": RSA index)")
	f.BoolVar(&jsonOut, "json", false, "print the result as JSON")
	f.DurationVar(&timeout, "timeout", time.Minute, "time limit")
	return cmd
}
