package policy

import (
	"fmt"
	"slices"

	"github.com/google/go-eventlog/extract"
	statepb "github.com/google/go-eventlog/proto/state"
	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tpmeventlog"
)

// BootPCRs are the PCRs a derived profile pins by default: firmware code and
// configuration, option ROMs, boot manager code and configuration, GPT, and
// the boot loader's measurements of kernel, initrd and command line (PCRs 8
// and 9 on GRUB systems). PCR 10+ are runtime (IMA) or workload PCRs.
var BootPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}

// DeriveOptions say how to turn a known-good log into a profile.
type DeriveOptions struct {
	Name        string
	Description string
	Source      string
	Verify      VerifyOptions // bank defaults to sha256, or sha1 when that is all the log has
	SecureBoot  string        // "required", "disabled" or "any"; default: what the log shows
	PCRs        []int         // default BootPCRs, limited to those the log measures
}

// DeriveProfile replays a known-good machine's firmware event log and returns
// a profile that pins its PCR values. It also parses the log the way the
// verifier will (with the profile's quirks), so a log that needs a quirk the
// options do not allow fails here, with the parser's reason, rather than at
// the first attestation.
func DeriveProfile(eventLog []byte, opts DeriveOptions) (*Profile, error) {
	replay, err := ReplayEventLog(eventLog)
	if err != nil {
		return nil, err
	}
	v := opts.Verify
	if v.Bank == "" {
		v.Bank = "sha256"
		if _, ok := replay["sha256"]; !ok {
			if _, ok := replay["sha1"]; ok {
				v.Bank = "sha1"
				if !v.Has(QuirkSHA1) {
					v.Quirks = append(v.Quirks, QuirkSHA1)
				}
			}
		}
	}
	bank, ok := replay[Bank(v.Bank)]
	if !ok {
		return nil, fmt.Errorf("the log has no %s digests; it has %v", v.Bank, replay.Banks())
	}
	state, err := ExtractState(eventLog, Bank(v.Bank), bank, v)
	if err != nil {
		return nil, fmt.Errorf("the log does not parse with quirks %v: %w", v.Quirks, err)
	}
	sb := opts.SecureBoot
	if sb == "" {
		sb = "disabled"
		if state.GetSecureBoot().GetEnabled() {
			sb = "required"
		}
	}
	want := opts.PCRs
	if len(want) == 0 {
		want = BootPCRs
	}
	p := &Profile{
		Name:        opts.Name,
		Description: opts.Description,
		Source:      opts.Source,
		Verify:      v,
		SecureBoot:  sb,
		PCRs:        map[int]HexBytes{},
	}
	for _, idx := range want {
		if d, ok := bank[idx]; ok {
			p.PCRs[idx] = d
		}
	}
	if len(p.PCRs) == 0 {
		return nil, fmt.Errorf("the log measures none of PCRs %v", want)
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	p.Verify.Quirks = slices.Clip(p.Verify.Quirks)
	return p, nil
}

// ExtractState replays the log against the given PCR values of one bank and
// extracts the firmware state (secure boot, EFI apps, GRUB) with the parsing
// relaxations of v. The values must come from a verified quote for the
// result to mean anything; for derivation they come from the log itself.
func ExtractState(eventLog []byte, b Bank, pcrs map[int][]byte, v VerifyOptions) (*statepb.FirmwareLogState, error) {
	h := b.CryptoHash()
	if h == 0 {
		return nil, fmt.Errorf("unknown bank %q", b)
	}
	bank := register.PCRBank{TCGHashAlgo: tcgAlgs[b]}
	for idx, d := range pcrs {
		bank.PCRs = append(bank.PCRs, register.PCR{Index: idx, Digest: d, DigestAlg: h})
	}
	opts := extract.Opts{
		AllowEmptySBVar:               v.Has(QuirkEmptySBVar),
		AllowEFIAppBeforeCallingEvent: v.Has(QuirkEFIAppBeforeCalling),
	}
	if v.Loader == "grub" {
		opts.Loader = extract.GRUB
	}
	return tpmeventlog.ReplayAndExtract(eventLog, bank, opts)
}

var tcgAlgs = map[Bank]statepb.HashAlgo{"sha1": statepb.HashAlgo_SHA1, "sha256": statepb.HashAlgo_SHA256, "sha384": statepb.HashAlgo_SHA384}
