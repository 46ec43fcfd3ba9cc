package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
)

// agentFlags are the flags of the commands that attest (attest, run): which
// TPM, which verifier, the workload to measure and what to ask for.
type agentFlags struct {
	tpm         tpmFlags
	verifier    string
	bootLog     string
	imageRef    string
	imageDigest string
	args        []string
	env         []string
	audience    string
	intent      string
	resources   []string
	delegation  string
	timeout     time.Duration
}

// add registers the flags; audience is the default of --audience.
func (f *agentFlags) add(fs *pflag.FlagSet, audience string) {
	f.tpm.add(fs)
	fs.StringVar(&f.verifier, "verifier", "", "verifier base URL, e.g. https://vouch.example (required)")
	fs.StringVar(&f.bootLog, "boot-log", "", "recorded TCG firmware event log (binary_bios_measurements format) to replay into a TPM without firmware (required with --tpm sim and swtpm)")
	fs.StringVar(&f.imageRef, "image-ref", "", "workload image reference, e.g. ghcr.io/acme/agent:1.4 (required)")
	fs.StringVar(&f.imageDigest, "image-digest", "", `workload image digest, "sha256:" and 64 lower-case hex digits (required)`)
	fs.StringArrayVar(&f.args, "arg", nil, "workload argument to measure, in order (repeatable)")
	fs.StringArrayVar(&f.env, "env", nil, "workload environment variable to measure, NAME=VALUE (repeatable); it is sent to the verifier, so no secrets")
	fs.StringVar(&f.audience, "audience", audience, "relying party the credential is for (its identifier, e.g. https://docs.example)")
	fs.StringVar(&f.intent, "intent", "", "intent the agent asks to act under, e.g. summarize-documents (needs --delegation)")
	fs.StringArrayVar(&f.resources, "resource", nil, `resource the agent asks for, a typed id such as 'Document::"customer-A/*"' (repeatable)`)
	fs.StringVar(&f.delegation, "delegation", "", "delegation id the agent acts under (vouch delegations create); the credential's scope is delegation ∩ intent ∩ policy on --resource")
	fs.DurationVar(&f.timeout, "timeout", time.Minute, "time limit of one attestation")
}

// request builds and validates the attestation request and workload from the
// flags, before anything touches the TPM or the network.
func (f *agentFlags) request() (*attest.Request, agentside.Workload, error) {
	var w agentside.Workload
	switch {
	case f.verifier == "":
		return nil, w, usagef("--verifier is required")
	case f.imageRef == "":
		return nil, w, usagef("--image-ref is required")
	case f.imageDigest == "":
		return nil, w, usagef("--image-digest is required")
	case f.timeout <= 0:
		return nil, w, usagef("--timeout must be positive")
	}
	w = agentside.Workload{ImageRef: f.imageRef, ImageDigest: f.imageDigest, Args: f.args}
	if len(f.env) > 0 {
		w.Env = map[string]string{}
		for _, kv := range f.env {
			name, value, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, w, usagef("--env %q: want NAME=VALUE", kv)
			}
			if _, dup := w.Env[name]; dup {
				return nil, w, usagef("--env %s given twice", name)
			}
			w.Env[name] = value
		}
	}
	if err := w.Validate(); err != nil {
		return nil, w, usageError{err}
	}
	req := &attest.Request{Audience: f.audience, Intent: f.intent, Resources: f.resources, Delegation: f.delegation}
	if err := req.Validate(); err != nil {
		return nil, w, usagef("invalid request: %v", err)
	}
	return req, w, nil
}

// openAgent opens the TPM, boots it with --boot-log (simulator, swtpm) or
// uses that log as the device's firmware log, measures w into PCR 13 and
// creates a fresh agent key. The caller closes both.
func (f *agentFlags) openAgent(ctx context.Context, a *app, w agentside.Workload) (*agentside.TPM, *agentside.Agent, error) {
	var bootLog []byte
	if f.bootLog != "" {
		var err error
		if bootLog, err = readFileBounded(f.bootLog, agentside.MaxFirmwareLogSize); err != nil {
			return nil, nil, err
		}
	}
	tpm, err := f.tpm.open(ctx, a)
	if err != nil {
		return nil, nil, err
	}
	agent, err := prepareAgent(tpm, f, bootLog, w)
	if err != nil {
		tpm.Close()
		return nil, nil, err
	}
	return tpm, agent, nil
}

func prepareAgent(tpm *agentside.TPM, f *agentFlags, bootLog []byte, w agentside.Workload) (*agentside.Agent, error) {
	switch {
	case tpm.Firmwareless() && bootLog == nil:
		return nil, usagef("TPM %q has no firmware: pass --boot-log FILE, a recorded firmware event log (e.g. testdata/eventlogs/ubuntu-2404-amd-sevsnp.bin)", f.tpm.spec)
	case !tpm.Firmwareless() && bootLog != nil:
		// A device: the log its firmware wrote, copied where the agent can
		// read it (securityfs is root-only).
		if err := tpm.UseFirmwareLog(bootLog); err != nil {
			return nil, err
		}
	case bootLog != nil:
		if err := tpm.Boot(bootLog); err != nil {
			return nil, fmt.Errorf("%s: %w", f.bootLog, err)
		}
	}
	if err := tpm.MeasureWorkload(w); err != nil {
		return nil, err
	}
	return agentside.NewAgent(tpm)
}
