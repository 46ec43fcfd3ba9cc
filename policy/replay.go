package policy

import (
	"bytes"
	"crypto"
	"fmt"
	"sort"
	"strings"

	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"
)

// WorkloadPCR is the PCR the agent's canonical event log extends (the
// Confidential Space convention for COS TLV events).
const WorkloadPCR = 13

// MaxEventLogSize bounds a firmware event log read from anywhere.
const MaxEventLogSize = 1 << 20

// Bank names a PCR bank by its hash: "sha1", "sha256" or "sha384".
type Bank string

var bankHashes = map[Bank]register.HashAlg{
	"sha1":   register.HashSHA1,
	"sha256": register.HashSHA256,
	"sha384": register.HashSHA384,
}

// CryptoHash returns the hash of the bank, or 0 for an unknown bank.
func (b Bank) CryptoHash() crypto.Hash {
	if h, ok := bankHashes[b]; ok {
		return h.CryptoHash()
	}
	return 0
}

// Replay is the PCR values a firmware event log replays to, per bank and
// PCR, for the banks and PCRs the log has events for.
type Replay map[Bank]map[int][]byte

// Banks returns the banks of r in a stable order.
func (r Replay) Banks() []Bank {
	out := make([]Bank, 0, len(r))
	for b := range r {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// ReplayEventLog computes the PCR values a TCG PC Client firmware event log
// (SHA-1 "legacy" or crypto-agile) extends to, the way a TPM would: every
// event except EV_NO_ACTION is extended into its PCR; a StartupLocality
// EV_NO_ACTION sets PCR 0's initial value to the locality, and an
// EV_EFI_HCRTM_EVENT resets the PCR to 0…04 first. Digest-less banks of an
// event are skipped for that event.
//
// Replay alone proves nothing: the values are what the log claims. They are
// evidence only once compared with PCRs a TPM quoted. Use it to derive
// reference values from a known-good machine's log.
func ReplayEventLog(raw []byte) (Replay, error) {
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
		locality := byte(0)
		for _, ev := range el.Events(alg) {
			idx := int(ev.MRIndex())
			data := ev.RawData()
			if ev.Type == tcg.NoAction {
				if idx == 0 && len(data) == 17 && strings.HasPrefix(string(data), "StartupLocality") {
					locality = data[16]
				}
				continue
			}
			d := ev.ReplayedDigest()
			if len(d) == 0 {
				continue
			}
			if len(d) != h.Size() {
				return nil, fmt.Errorf("event %d: %s digest is %d bytes, want %d", ev.Num(), name, len(d), h.Size())
			}
			cur, seen := pcrs[idx]
			if ev.Type == tcg.EFIHCRTMEvent {
				cur = append(bytes.Repeat([]byte{0}, h.Size()-1), 4)
			} else if !seen {
				cur = make([]byte, h.Size())
				if idx == 0 {
					cur[h.Size()-1] = locality
				}
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

// extendPCR returns H(cur ‖ digest), what TPM2_PCR_Extend leaves in a PCR.
func extendPCR(h crypto.Hash, cur, digest []byte) []byte {
	hh := h.New()
	hh.Write(cur)
	hh.Write(digest)
	return hh.Sum(nil)
}

// parseForReplay bounds and parses a firmware event log for replay.
func parseForReplay(raw []byte) (*tcg.EventLog, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("event log is empty")
	}
	if len(raw) > MaxEventLogSize {
		return nil, fmt.Errorf("event log is %d bytes; at most %d are read", len(raw), MaxEventLogSize)
	}
	el, err := tcg.ParseEventLog(raw, tcg.ParseOpts{AllowPadding: true})
	if err != nil {
		return nil, fmt.Errorf("parsing event log: %w", err)
	}
	return el, nil
}

func containsAlg(algs []register.HashAlg, a register.HashAlg) bool {
	for _, x := range algs {
		if x == a {
			return true
		}
	}
	return false
}
