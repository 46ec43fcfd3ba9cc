package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
)

// defaultAudience is the relying party of the Vouch demo.
const defaultAudience = "vouch-demo"

// tpmFlags are the flags of every command that opens a TPM.
type tpmFlags struct {
	spec  string
	state string
}

func (f *tpmFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.spec, "tpm", agentside.SpecSimulator,
		`TPM to use: "sim" (in-process simulator; INSECURE, development only), "swtpm:HOST:PORT" (swtpm's TCP data channel; start swtpm with --flags not-need-init,startup-clear) or "/dev/tpmrm0" (a real TPM through the kernel resource manager; firmware log from securityfs)`)
	fs.StringVar(&f.state, "state", "",
		"state directory; the simulator keeps its seed there, so its AK stays the same between runs (default $XDG_STATE_HOME/vouch-agent or ~/.local/state/vouch-agent)")
}

// open opens the TPM the flags name.
func (f *tpmFlags) open(ctx context.Context, a *app) (*agentside.TPM, error) {
	state := f.state
	if state == "" {
		var err error
		if state, err = agentside.DefaultStateDir(); err != nil {
			return nil, err
		}
	}
	return agentside.Open(ctx, f.spec, agentside.OpenOptions{StateDir: state, Logger: a.log})
}

type attestFlags struct {
	agentFlags
	out  string
	json bool
}

func (a *app) attestCmd() *cobra.Command {
	var f attestFlags
	cmd := &cobra.Command{
		Use:   "attest",
		Short: "Attest to the verifier and write the credential it issues",
		Long: `attest opens the TPM, boots it with a recorded firmware event log (simulator
and swtpm only), measures the workload into PCR 13, creates a fresh agent key in the TPM,
asks the verifier for a nonce (POST /v1/challenge), sends evidence bound to
that nonce, the agent key and the request (POST /v1/attest), and writes the
credential the verifier issues to --out (mode 0600).

The credential is bound to the agent key, which lives only in this process's
TPM session: with the simulator, the key is gone when the command exits, so
this command is for trying the flow and for tests; a long-running agent uses
the agentside package directly.

On a refusal it prints "refused: <reason>: <detail>" and exits with status 3.`,
		Example: `  vouch-agent attest --verifier http://127.0.0.1:8443 \
      --boot-log testdata/eventlogs/ubuntu-2404-amd-sevsnp.bin \
      --image-ref ghcr.io/acme/agent:1.4 \
      --image-digest sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 \
      --audience https://docs.example --intent summarize-documents \
      --delegation dlg_… --resource 'Document::"customer-A/report-7"' --out cred.cwt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runAttest(cmd.Context(), &f) },
	}
	fs := cmd.Flags()
	f.add(fs, defaultAudience)
	fs.StringVar(&f.out, "out", "credential.cwt", `file to write the credential to (mode 0600); "-" writes it to standard output`)
	fs.BoolVar(&f.json, "json", false, "print the result as JSON")
	return cmd
}

func (a *app) runAttest(ctx context.Context, f *attestFlags) error {
	if f.out == "" {
		return usagef("--out is empty")
	}
	req, w, err := f.request()
	if err != nil {
		return err
	}
	client, err := agentside.NewClient(f.verifier, nil)
	if err != nil {
		return usageError{err}
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	tpm, agent, err := f.openAgent(ctx, a, w)
	if err != nil {
		return err
	}
	defer tpm.Close()
	defer agent.Close()
	a.log.Info("attesting", "verifier", client.Base(), "audience", req.Audience, "image_digest", w.ImageDigest)
	iss, err := agent.AttestIssued(ctx, client, req)
	if err != nil {
		// A refusal is a problem document from the verifier; anything else
		// (including a 5xx without one) is an error on the way.
		var ae *attest.Error
		var pe *attest.ProblemError
		if errors.As(err, &ae) && errors.As(err, &pe) {
			return refusedError{ae}
		}
		return err
	}
	if err := writeOutput(f.out, iss.Credential, 0o600, a.stdout); err != nil {
		return err
	}
	if f.json {
		return json.NewEncoder(a.stdout).Encode(map[string]any{
			"credential_file":  f.out,
			"credential_bytes": len(iss.Credential),
			"log_index":        iss.LogIndex,
			"audience":         req.Audience,
		})
	}
	if f.out != "-" {
		msg := fmt.Sprintf("credential written to %s (%d bytes", f.out, len(iss.Credential))
		if iss.LogIndex != "" {
			msg += ", audit log index " + iss.LogIndex
		}
		fmt.Fprintln(a.stdout, msg+")")
	}
	return nil
}

// readFileBounded reads a file of at most limit bytes.
func readFileBounded(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}

// writeOutput writes data to path atomically with the given mode, or to
// stdout when path is "-".
func writeOutput(path string, data []byte, mode os.FileMode, stdout io.Writer) error {
	if path == "-" {
		_, err := stdout.Write(data)
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(data)
	if err := tmp.Chmod(mode); werr == nil {
		werr = err
	}
	if err := tmp.Close(); werr == nil {
		werr = err
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), path)
	}
	if werr != nil {
		return fmt.Errorf("writing %s: %w", path, werr)
	}
	return nil
}
