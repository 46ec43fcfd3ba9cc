package policy

import (
	"fmt"
)

// ReplayCompat names a replay semantics other than the TCG specification's,
// to reproduce what another tool prints for the same log.
type ReplayCompat string

// CompatTPM2Tools54 reproduces tpm2_eventlog of tpm2-tools 5.4 and 5.5 (the
// Debian 12 package), which differs from the TCG PC Client specification
// (and from what a TPM holds) in three ways:
//
//   - it extends EV_NO_ACTION events (with their all-zero digests) into their
//     PCR (tpm2-tools issue #3224, fixed by pull request #3230 in 5.6), which
//     changes PCR 0 of every log with SP800-155 or StartupLocality events;
//   - it ignores the StartupLocality event, so PCR 0 of a platform that
//     started its TPM from locality 3 (Intel TXT) starts at zero, not 3;
//   - it does not reset the PCR to 0…04 for an EV_EFI_HCRTM_EVENT.
//
// It also crashes (SIGSEGV) on an event whose PCR index is outside 0–23,
// such as the EV_NO_ACTION on PCR 0xFFFFFFFF that Windows appends;
// [ReplayEventLogCompat] refuses such logs in this mode.
const CompatTPM2Tools54 ReplayCompat = "tpm2-tools-5.4"

// maxPCRIndex is the highest PCR of a PC Client TPM.
const maxPCRIndex = 23

// ReplayEventLogCompat replays raw with the semantics compat names; the
// empty compat is [ReplayEventLog], the TCG specification's.
func ReplayEventLogCompat(raw []byte, compat ReplayCompat) (Replay, error) {
	switch compat {
	case "":
		return ReplayEventLog(raw)
	case CompatTPM2Tools54:
	default:
		return nil, fmt.Errorf("unknown replay compatibility %q; known: %q", compat, CompatTPM2Tools54)
	}
	el, err := parseForReplay(raw)
	if err != nil {
		return nil, err
	}
	out := Replay{}
	for name, alg := range bankHashes {
		if !containsAlg(el.Algs, alg) {
			continue
		}
		h := alg.CryptoHash()
		pcrs := map[int][]byte{}
		for _, ev := range el.Events(alg) {
			if ev.MRIndex() > maxPCRIndex {
				return nil, fmt.Errorf("event %d (%v) is on PCR %d; %s crashes on PCR indices above %d", ev.Num(), ev.Type, ev.MRIndex(), compat, maxPCRIndex)
			}
			idx := int(ev.MRIndex())
			d := ev.ReplayedDigest()
			if len(d) == 0 {
				continue
			}
			if len(d) != h.Size() {
				return nil, fmt.Errorf("event %d: %s digest is %d bytes, want %d", ev.Num(), name, len(d), h.Size())
			}
			cur, ok := pcrs[idx]
			if !ok {
				cur = make([]byte, h.Size())
			}
			pcrs[idx] = extendPCR(h, cur, d)
		}
		if len(pcrs) > 0 {
			out[name] = pcrs
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("event log has no measured events")
	}
	return out, nil
}
