// Package agentside is the attester half of Vouch: it opens a TPM, measures
// the workload into it, holds the agent's TPM-resident key, assembles the
// evidence the verifier appraises, talks to the verifier's HTTP API, and signs
// the per-request proof of possession that goes with a credential.
//
// # Flow
//
//	tpm, _ := agentside.Open(ctx, "sim", agentside.OpenOptions{StateDir: dir})
//	defer tpm.Close()
//	_ = tpm.Boot(firmwareLog)                       // simulator and swtpm only
//	_ = tpm.MeasureWorkload(agentside.Workload{...}) // PCR 13, canonical event log
//	agent, _ := agentside.NewAgent(tpm)              // fresh agent key, certified by the AK
//	defer agent.Close()
//	cred, _ := agent.Attest(ctx, client, &attest.Request{Audience: "vouch-demo"})
//	hc := &http.Client{Transport: &agentside.Transport{Credential: ..., Key: agent.Signer()}}
//
// A long-running agent keeps its credential fresh with a [Renewer]: it holds
// the one Agent (one TPM-resident key for the process's life), attests at
// start and again at about 2/3 of each credential's lifetime, retries with
// capped backoff, verifies every credential with the verifier's published
// keys, and fails closed ([Renewer.Credential] is nil once the credential
// expired):
//
//	r, _ := agentside.NewRenewer(agentside.RenewerOptions{Agent: agent, Client: client, Request: req})
//	go r.Run(ctx)
//	<-r.Ready()
//	hc := &http.Client{Transport: r.Transport(nil)}
//
// "vouch-agent run" is that Renewer behind a loopback proxy to one relying
// party, for agents written in other languages.
//
// # TPMs
//
// [Open] takes a spec naming the TPM:
//
//   - "sim": the go-tpm-tools in-process simulator (the Microsoft reference
//     TPM). INSECURE, FOR DEVELOPMENT ONLY: its hierarchy seeds derive from a
//     random number stored in a file of the state directory, so anyone who can
//     read that file can compute every key of the "TPM", including the AK. It
//     exists so that the whole flow runs on a laptop or in CI with a TPM nobody
//     here wrote, and so that the AK stays the same from run to run and can be
//     enrolled once. Never enroll a simulator AK in a verifier that appraises
//     production agents.
//   - "swtpm:HOST:PORT": swtpm's TCP data channel (raw TPM 2.0 commands), as
//     started by "swtpm socket --tpm2 --server type=tcp,port=PORT --flags
//     not-need-init,startup-clear --tpmstate dir=DIR". Also a development TPM
//     (its state directory holds its secrets), but a real, separate one.
//   - "/dev/tpmrm0": a real TPM through the kernel resource manager
//     ("/dev/tpm0" uses /dev/tpmrm0 when it exists). The firmware event log
//     is read from /sys/kernel/security/tpmN/binary_bios_measurements, or
//     given with [TPM.UseFirmwareLog]. The user needs access to the device
//     (group tss on most distributions).
//
// swtpm is spoken to over its raw TCP data channel rather than the
// Microsoft-simulator protocol (go-tpm's tpm2/transport/tcp): the data
// channel works with any swtpm started as above, needs no control-channel
// power cycle (which would reset the PCRs a boot replay extended), and the
// framing is done here (tpmStream). tpm2-tools reach the same swtpm through
// its "swtpm" TCTI on the same port (control channel on port+1).
//
// Every use of a TPM goes through one mutex, so a [TPM] and the [Agent] on it
// can be shared between goroutines; TPMs themselves are not concurrent.
//
// # Development boot
//
// The simulator and swtpm have no firmware, so their PCRs start at zero.
// [TPM.Boot] replays a real recorded TCG firmware event log into them, so that the verifier's
// measured-boot appraisal runs on real data. See its documentation for what
// can and cannot be replayed.
//
// # Measurement
//
// [TPM.MeasureWorkload] records the workload image (reference, digest, args,
// environment) as Container-Optimized-OS TLV events in a TCG canonical event
// log on PCR 13, the convention of Confidential Space, so that the verifier
// replays it with the same extractor.
package agentside
