// Command vouch-agent is the agent-side helper of Vouch: it proves to a Vouch
// verifier, with a TPM, what the agent runs, and writes the short-lived
// credential the verifier issues.
//
//	vouch-agent ak --tpm sim --out ak.pem          # AK public key to enroll
//	vouch-agent attest --verifier https://vouch.example --tpm sim \
//	    --boot-log testdata/eventlogs/ubuntu-2404-amd-sevsnp.bin \
//	    --image-ref ghcr.io/acme/agent:1.4 --image-digest sha256:... \
//	    --audience https://docs.example --out cred.cwt
//	vouch-agent run --verifier https://vouch.example --upstream https://docs.example \
//	    --boot-log ... --image-ref ... --image-digest sha256:...   # the sidecar on 127.0.0.1:8479
//
// Every flag can also be set with a VOUCH_* environment variable (--image-ref
// is VOUCH_IMAGE_REF) or a YAML file (--config). Run "vouch-agent help" for
// the details.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/internal/cliconf"
)

// Exit codes.
const (
	exitOK      = 0
	exitError   = 1 // anything that went wrong locally or on the way
	exitUsage   = 2 // bad flags or arguments
	exitRefused = 3 // the verifier refused the attestation
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError marks errors in how the command was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// refusedError marks a refusal by the verifier.
type refusedError struct{ err *attest.Error }

func (e refusedError) Error() string { return "refused: " + e.err.Error() }
func (e refusedError) Unwrap() error { return e.err }

// app is what every command shares.
type app struct {
	stdout, stderr io.Writer
	log            *slog.Logger
	// listening, if set, is told the address the sidecar (run) listens on;
	// tests use it. adminListening is told its --admin-listen address.
	listening, adminListening func(net.Addr)
}

// run executes the command line and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return (&app{stdout: stdout, stderr: stderr}).execute(ctx, args)
}

// execute runs the command line on a and returns the exit code.
func (a *app) execute(ctx context.Context, args []string) int {
	stdout, stderr := a.stdout, a.stderr
	a.log = slog.New(slog.DiscardHandler)
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ue usageError
	var re refusedError
	switch {
	case errors.As(err, &re):
		fmt.Fprintln(stderr, re.Error())
		return exitRefused
	case errors.As(err, &ue), strings.HasPrefix(err.Error(), "unknown command"):
		fmt.Fprintf(stderr, "error: %v\nrun %q for usage\n", err, "vouch-agent help")
		return exitUsage
	}
	fmt.Fprintf(stderr, "error: %v\n", err)
	return exitError
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "vouch-agent",
		Short: "Attest this agent to a Vouch verifier with a TPM and obtain a credential",
		Long: `vouch-agent is the agent side of Vouch, a hardware-backed attestation service
for software agents.

It opens a TPM, measures the agent's workload (image reference and digest) into
PCR 13 as a canonical event log, creates a fresh TPM-resident agent key,
and proves to the verifier — with a quote over all PCR banks and a TPM2_Certify
of the agent key, both bound to the verifier's nonce and to what the agent asks
for — what it is and what it runs. The verifier answers with a short-lived
credential (a COSE_Sign1 CWT) bound to the agent key.

First enroll the TPM's attestation key with the verifier, by credential
activation against the TPM's EK certificate (the default; see enroll --help):

  vouch-agent enroll --verifier https://vouch.example

or, where the verifier has no EK roots for this TPM, by the operator's word:

  vouch-agent ak --out ak.pem              # then: vouch agents enroll --ak-pub ak.pem

then attest:

  vouch-agent attest --verifier https://vouch.example \
      --boot-log firmware.bin --image-ref ghcr.io/acme/agent:1.4 \
      --image-digest sha256:<64 hex> --audience https://docs.example --out cred.cwt

or run the sidecar, a loopback proxy to one relying party that keeps the
credential fresh and signs a proof of possession for every request, for
agents in any language (see run --help):

  vouch-agent run --verifier https://vouch.example --upstream https://docs.example \
      --boot-log firmware.bin --image-ref ghcr.io/acme/agent:1.4 --image-digest sha256:<64 hex>
  curl http://127.0.0.1:8479/documents/report-7

TPMs (--tpm): "sim" is the in-process TPM simulator. IT IS INSECURE AND FOR
DEVELOPMENT ONLY: its keys derive from a seed file in the state directory, and
it has no firmware, so --boot-log replays a recorded firmware event log into
it. "swtpm:HOST:PORT" is swtpm's TCP data channel (start it with
"swtpm socket --tpm2 --server type=tcp,port=PORT --flags not-need-init,startup-clear");
it has no firmware either. "/dev/tpmrm0" is a real TPM through the kernel
resource manager (user in group tss); its firmware log is read from
securityfs, or given with --boot-log (a copy of it).

Every flag can also be set with an environment variable: VOUCH_ and the flag
name in upper case with - as _ (--image-digest is VOUCH_IMAGE_DIGEST), or with a
YAML file of flag names to values (--config). Command-line flags win over the
environment, which wins over the file.

Exit codes: 0 success, 1 error, 2 usage error, 3 the verifier refused.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := cliconf.Apply(cmd); err != nil {
				return usageError{err}
			}
			l, err := cliconf.Logger(cmd, a.stderr)
			if err != nil {
				return usageError{err}
			}
			a.log = l
			return nil
		},
	}
	cliconf.AddFlags(root.PersistentFlags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(a.attestCmd(), a.runCmd(), a.akCmd(), a.quoteCmd(), a.enrollCmd())
	return root
}
