package agentside

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"
	"github.com/google/go-tpm-tools/cel"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// MaxFirmwareLogSize bounds a firmware event log. Real logs are 15–75 KiB.
const MaxFirmwareLogSize = 512 << 10

// maxBootPCR is the highest PCR a replayed log may measure into. PCRs 17–22
// are the dynamic-root-of-trust PCRs, reset only at locality 4 by a late
// launch; locality 0, where the simulator is driven, cannot reproduce them.
const maxBootPCR = 16

// startupLocalityPrefix starts the data of the EV_NO_ACTION event that says
// from which locality TPM2_Startup was issued (its last byte).
const startupLocalityPrefix = "StartupLocality\x00"

// ErrUnreplayable is wrapped by the error [TPM.Boot] returns for a firmware
// log that a freshly started simulator cannot reproduce.
var ErrUnreplayable = errors.New("the firmware event log cannot be replayed into this TPM")

// Boot replays a recorded TCG PC Client firmware event log (the binary format
// of /sys/kernel/security/tpm0/binary_bios_measurements) into the simulator's
// PCRs, as the firmware of a real machine would have measured it, and keeps
// the log as the TPM's firmware event log. For development TPMs without
// firmware only: the simulator, and swtpm as long as the PCRs the log
// measures into are still zero. Call it once, before [TPM.MeasureWorkload].
//
// Every event except EV_NO_ACTION is extended, with its recorded digest, into
// its PCR in each allocated bank the log has digests for. Banks the log lacks
// stay untouched: a SHA-1-only log (TPM 1.2 format, e.g. Debian 10) leaves the
// SHA-256 and SHA-384 banks at zero, so a verifier can only appraise it with
// SHA-1 PCRs (go-tpm-tools VerifyOpts.AllowSHA1).
//
// Logs that a simulator driven at locality 0 cannot reproduce are refused
// with an error wrapping [ErrUnreplayable]:
//   - a StartupLocality event with a locality other than 0 (Intel TXT
//     platforms start the TPM from locality 3, which sets PCR 0's initial
//     value to 3; e.g. glinux-alex, gdc-host),
//   - an EV_EFI_HCRTM_EVENT (a hardware core root of trust resets PCR 0 to
//     ...04 through _TPM_Hash_Start, which locality 0 cannot do),
//   - events on PCRs above 16 (dynamic-root-of-trust PCRs; e.g. host-gmes),
//   - events on PCR 13, which Vouch reserves for the workload measurements
//     (e.g. option-rom-sha1); the canonical event log would no longer replay.
func (t *TPM) Boot(log []byte) error {
	if !t.Firmwareless() {
		return fmt.Errorf("boot replay: %w for TPM %q; a real TPM was measured by its own firmware", ErrNotSupported, t.spec)
	}
	if len(log) == 0 {
		return errors.New("boot replay: the firmware event log is empty")
	}
	if len(log) > MaxFirmwareLogSize {
		return fmt.Errorf("boot replay: the firmware event log is %d bytes; at most %d are accepted", len(log), MaxFirmwareLogSize)
	}
	// The verifier parses with the same options (go-tpm-tools server).
	el, err := tcg.ParseEventLog(log, tcg.ParseOpts{})
	if err != nil {
		return fmt.Errorf("boot replay: the firmware event log cannot be parsed: %w", err)
	}
	if len(el.Algs) == 0 {
		return errors.New("boot replay: the firmware event log has no SHA-1, SHA-256 or SHA-384 digests")
	}
	if err := checkReplayable(el.Events(el.Algs[0])); err != nil {
		return err
	}
	// Plan every extension before touching the TPM, so that a bad log leaves
	// the PCRs as they were.
	type extension struct {
		pcr    int
		alg    tpm2.Algorithm
		digest []byte
	}
	var plan []extension
	for _, sel := range t.banks {
		hash, err := sel.Hash.Hash()
		if err != nil {
			continue
		}
		logAlg, ok := logBank(el.Algs, sel.Hash)
		if !ok {
			t.log.Debug("boot replay: the firmware log has no digests for this bank; leaving it untouched", "bank", hash.String())
			continue
		}
		for i, ev := range el.Events(logAlg) {
			if ev.Type == tcg.NoAction {
				continue
			}
			if len(ev.Digest) != hash.Size() {
				return fmt.Errorf("%w: event %d (%v, PCR %d) has no %v digest", ErrUnreplayable, i+1, ev.Type, ev.Index, hash)
			}
			plan = append(plan, extension{ev.Index, sel.Hash, ev.Digest})
		}
	}
	if len(plan) == 0 {
		return fmt.Errorf("%w: it has no digests for any allocated PCR bank", ErrUnreplayable)
	}
	return t.do(func(rw io.ReadWriter) error {
		if t.booted {
			return errors.New("boot replay: the simulator was already booted; open a fresh one")
		}
		if t.cel != nil {
			return errors.New("boot replay: the workload was already measured; boot first, as firmware runs before the workload")
		}
		// swtpm keeps its PCRs while it runs: replay only into fresh ones.
		for _, x := range plan {
			v, err := tpm2.ReadPCR(rw, x.pcr, x.alg)
			if err != nil {
				return fmt.Errorf("boot replay: reading PCR %d (%v): %w", x.pcr, x.alg, err)
			}
			if !bytes.Equal(v, make([]byte, len(v))) {
				return fmt.Errorf("%w: PCR %d (%v) was already extended; replay needs a freshly started TPM (restart swtpm)", ErrUnreplayable, x.pcr, x.alg)
			}
		}
		t.booted = true // even on failure: the PCRs may be half extended
		for _, x := range plan {
			if err := tpm2.PCRExtend(rw, tpmutil.Handle(x.pcr), x.alg, x.digest, ""); err != nil {
				return fmt.Errorf("boot replay: extending PCR %d (%v): %w", x.pcr, x.alg, err)
			}
		}
		t.firmwareLog = append([]byte(nil), log...)
		t.log.Debug("boot replay done", "events", len(plan), "log_banks", fmt.Sprint(el.Algs))
		return nil
	})
}

// checkReplayable refuses logs a simulator at locality 0 cannot reproduce.
func checkReplayable(events []tcg.Event) error {
	for i, ev := range events {
		n := i + 1 // events are numbered from 1, after the spec ID event
		if ev.Type == tcg.NoAction {
			d := ev.Data
			if len(d) == len(startupLocalityPrefix)+1 && string(d[:len(startupLocalityPrefix)]) == startupLocalityPrefix && d[len(d)-1] != 0 {
				return fmt.Errorf("%w: event %d says TPM2_Startup ran at locality %d (e.g. Intel TXT), so PCR 0 started at %d; the simulator starts at locality 0", ErrUnreplayable, n, d[len(d)-1], d[len(d)-1])
			}
			continue
		}
		switch {
		case ev.Type == tcg.EFIHCRTMEvent:
			return fmt.Errorf("%w: event %d is an H-CRTM measurement on PCR %d, made by hardware before the firmware ran (_TPM_Hash_Start); locality 0 cannot reproduce it", ErrUnreplayable, n, ev.Index)
		case ev.Index < 0 || ev.Index > maxBootPCR:
			return fmt.Errorf("%w: event %d (%v) measures into PCR %d; PCRs above %d belong to a dynamic root of trust (late launch at locality 4)", ErrUnreplayable, n, ev.Type, ev.Index, maxBootPCR)
		case ev.Index == cel.CosEventPCR:
			return fmt.Errorf("%w: event %d (%v) measures into PCR %d, which Vouch reserves for the workload's canonical event log", ErrUnreplayable, n, ev.Type, ev.Index)
		}
	}
	return nil
}

// logBank returns the log's hash algorithm that matches a TPM bank.
func logBank(algs []register.HashAlg, bank tpm2.Algorithm) (register.HashAlg, bool) {
	for _, a := range algs {
		if a.GoTPMAlg() == bank {
			return a, true
		}
	}
	return 0, false
}
