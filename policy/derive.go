package policy

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-eventlog/extract"
	statepb "github.com/google/go-eventlog/proto/state"
	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"
	"github.com/google/go-eventlog/tpmeventlog"
)

// BootPCRs are the boot PCRs: firmware code and configuration, option ROMs,
// boot manager code and configuration, GPT, secure boot policy, and the boot
// loader's measurements of kernel, initrd and command line (PCRs 8 and 9 on
// GRUB systems). Events on them are appraised one by one, or by golden value
// where they cannot be classified. PCR 10+ are runtime (IMA) or workload.
var BootPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}

// DeriveOptions say how to turn a known-good log into a profile.
type DeriveOptions struct {
	Name        string
	Description string
	Source      string
	// Verify is the bank (default sha256, or sha1 when that is all the log
	// has), loader and quirks. With AutoQuirks, the fewest quirks the log
	// needs are found and added; they are written into the profile, where a
	// reviewer sees them.
	Verify     VerifyOptions
	AutoQuirks bool
	SecureBoot string // "required", "disabled" or "any"; default: what the log shows
	// PCRs are pinned by golden value in addition to those whose events
	// the event rules cannot classify.
	PCRs []int
}

// Derived is a derived profile and what a reviewer should know about it.
type Derived struct {
	Profile  *Profile
	Boot     *BootFacts
	Warnings []string
}

// DeriveProfile derives a profile from a known-good machine's log; see Derive.
func DeriveProfile(eventLog []byte, opts DeriveOptions) (*Profile, error) {
	d, err := Derive(eventLog, opts)
	if err != nil {
		return nil, err
	}
	return d.Profile, nil
}

// Derive replays a known-good machine's firmware event log, parses it the
// way the verifier will (with the profile's quirks), and writes a profile
// that allows exactly what that machine booted: its firmware, option ROMs,
// EFI applications, kernels and boot loader files and commands, its secure
// boot databases (the dbx as a minimum), its kernel parameters (forbidding
// DefaultForbiddenParams it does not use), and golden values for the boot
// PCRs holding events the rules cannot classify.
//
// A log whose secure boot state go-eventlog cannot parse (a log the
// verifier would refuse) still gives a profile, usable offline, with a
// warning and golden values for the PCRs concerned.
func Derive(eventLog []byte, opts DeriveOptions) (*Derived, error) {
	v := opts.Verify
	boot, stateErr, err := OfflineBoot(eventLog, &v, opts.AutoQuirks)
	if err != nil {
		return nil, err
	}
	d := &Derived{Boot: boot}
	if stateErr != nil {
		d.Warnings = append(d.Warnings, fmt.Sprintf("go-eventlog cannot parse this log with quirks [%s] (%v); the verifier will refuse attestations from this platform, and the profile pins golden values instead of secure boot rules", strings.Join(v.Quirks, ","), stateErr))
	}
	if len(v.Quirks) > len(opts.Verify.Quirks) && stateErr == nil {
		d.Warnings = append(d.Warnings, fmt.Sprintf("this platform needs parsing quirks [%s]; they are written into the profile, and apply to it alone", strings.Join(v.Quirks, ",")))
	}
	p := &Profile{Name: opts.Name, Description: opts.Description, Source: opts.Source, Verify: v, PCRs: map[int]PCRValues{}}
	golden := map[int]bool{}
	for _, idx := range opts.PCRs {
		golden[idx] = true
	}
	var params []string
	seen := map[string]bool{}
	addDigest := func(l *DigestList, e *BootEvent, note string) {
		k := string(rune(e.PCR)) + string(e.Digest)
		if seen[k] {
			return
		}
		seen[k] = true
		*l = append(*l, DigestItem{Digest: e.Digest, Note: note})
	}
	for i := range boot.Events {
		e := &boot.Events[i]
		switch e.Class {
		case ClassFirmwareVersion:
			if !slices.ContainsFunc(p.Firmware.Versions, func(h HexBytes) bool { return bytes.Equal(h, e.Data) }) {
				p.Firmware.Versions = append(p.Firmware.Versions, e.Data)
			}
		case ClassFirmware:
			addDigest(&p.Firmware.Blobs, e, e.TypeName())
		case ClassOptionROM:
			addDigest(&p.Firmware.OptionROMs, e, e.Text)
		case ClassEFIApp:
			addDigest(&p.EFIApps, e, e.Text)
		case ClassKernel:
			addDigest(&p.Kernels, e, e.Text)
		case ClassBootFile:
			addDigest(&p.BootFiles, e, e.Text)
		case ClassSBAuthority:
			addDigest(&p.SecureBoot.Authorities, e, authorityNote(e))
		case ClassLoaderCommand:
			if !slices.Contains(p.LoaderCommands, e.Text) {
				p.LoaderCommands = append(p.LoaderCommands, e.Text)
			}
		case ClassKernelCmdline:
			for _, prm := range e.Params {
				if !slices.Contains(params, prm) {
					params = append(params, prm)
				}
			}
			if p.KernelCmdline == nil {
				p.KernelCmdline = &CmdlineRules{}
			}
		case ClassUnclassified:
			if e.PCR <= maxEventPCR {
				golden[e.PCR] = true
			}
		}
	}
	if p.KernelCmdline != nil {
		p.KernelCmdline.Allowed = params
		for _, f := range DefaultForbiddenParams {
			if !slices.ContainsFunc(params, func(prm string) bool { return prm == f || paramName(prm) == f }) {
				p.KernelCmdline.Forbidden = append(p.KernelCmdline.Forbidden, f)
			}
		}
	}
	p.SecureBoot.Mode = opts.SecureBoot
	if sb := boot.SecureBoot; sb != nil {
		if p.SecureBoot.Mode == "" {
			p.SecureBoot.Mode = SecureBootDisabled
			if sb.Enabled {
				p.SecureBoot.Mode = SecureBootRequired
			}
		}
		notes := certNotes(boot)
		p.SecureBoot.PK = entryList(sb.PK, notes)
		p.SecureBoot.KEK = entryList(sb.KEK, notes)
		p.SecureBoot.DB = entryList(sb.DB, notes)
		p.SecureBoot.DBXMin = entryList(sb.DBX, nil)
	} else if p.SecureBoot.Mode == "" {
		p.SecureBoot.Mode = SecureBootAny
	}
	for idx := range golden {
		if val, ok := boot.PCRs[idx]; ok {
			p.PCRs[idx] = PCRValues{val}
		} else {
			// A PCR the log never extends stays zero.
			p.PCRs[idx] = PCRValues{make([]byte, bankSizes[v.Bank])}
		}
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	// The derived profile must accept the machine it was derived from.
	set, err := NewRefSet([]Profile{*p}, nil, DenyList{})
	if err != nil {
		return nil, err
	}
	if r := AppraiseBoot(set, &set.Profiles[0], boot, false); len(r.Findings) > 0 {
		return nil, fmt.Errorf("derived profile does not accept its own log (a bug): %s", r.Findings[0].Detail)
	}
	d.Profile = p
	return d, nil
}

// OfflineBoot replays a firmware event log against itself and classifies
// it, as the verifier would after verifying a quote of the same PCRs. v's
// bank defaults to sha256 (sha1, with its quirk, for SHA-1-only logs); with
// auto, the fewest quirks the log needs are added to v. stateErr reports
// that go-eventlog could not parse the log's state with v (the verifier
// would refuse it); the events are then classified without secure boot
// state.
func OfflineBoot(eventLog []byte, v *VerifyOptions, auto bool) (b *BootFacts, stateErr, err error) {
	replay, err := ReplayEventLog(eventLog)
	if err != nil {
		return nil, nil, err
	}
	if v.Bank == "" {
		v.Bank = "sha256"
		if _, ok := replay["sha256"]; !ok {
			if _, ok := replay["sha1"]; ok {
				v.Bank = "sha1"
			}
		}
	}
	if v.Bank == "sha1" && !v.Has(QuirkSHA1) {
		v.Quirks = append(v.Quirks, QuirkSHA1)
	}
	pcrs, ok := replay[Bank(v.Bank)]
	if !ok {
		return nil, nil, fmt.Errorf("the log has no %s digests; it has %v", v.Bank, replay.Banks())
	}
	state, stateErr := ExtractState(eventLog, Bank(v.Bank), pcrs, *v)
	if stateErr != nil && auto {
		for _, extra := range [][]string{{QuirkEFIAppBeforeCalling}, {QuirkEmptySBVar}, {QuirkEFIAppBeforeCalling, QuirkEmptySBVar}} {
			try := *v
			try.Quirks = append(slices.Clone(v.Quirks), extra...)
			if s, err := ExtractState(eventLog, Bank(v.Bank), pcrs, try); err == nil {
				state, stateErr = s, nil
				*v = try
				break
			}
		}
	}
	slices.Sort(v.Quirks)
	v.Quirks = slices.Compact(v.Quirks)
	if stateErr != nil {
		events, err := logEvents(eventLog, Bank(v.Bank))
		if err != nil {
			return nil, nil, err
		}
		return NewBootFacts(Bank(v.Bank), pcrs, events, nil), stateErr, nil
	}
	return NewBootFacts(Bank(v.Bank), pcrs, state.GetRawEvents(), state), nil, nil
}

// logEvents returns a log's measured events of one bank, as raw events.
func logEvents(eventLog []byte, b Bank) ([]*statepb.Event, error) {
	el, err := tcg.ParseEventLog(eventLog, tcg.ParseOpts{AllowPadding: true})
	if err != nil {
		return nil, fmt.Errorf("parsing event log: %w", err)
	}
	h := b.CryptoHash()
	var out []*statepb.Event
	for _, ev := range el.Events(bankHashes[b]) {
		hh := h.New()
		hh.Write(ev.Data)
		out = append(out, &statepb.Event{
			PcrIndex: uint32(ev.Index), UntrustedType: uint32(ev.Type), Data: ev.Data,
			Digest: ev.Digest, DigestVerified: bytes.Equal(hh.Sum(nil), ev.Digest),
		})
	}
	if len(out) == 0 {
		return nil, errors.New("the log has no events")
	}
	return out, nil
}

func entryList(ids []string, notes map[string]string) EntryList {
	if len(ids) == 0 {
		return nil
	}
	out := make(EntryList, 0, len(ids))
	for _, id := range ids {
		if !slices.ContainsFunc(out, func(e EntryItem) bool { return e.ID == id }) {
			out = append(out, EntryItem{ID: id, Note: notes[id]})
		}
	}
	return out
}

// certNotes names the certificates of the secure boot databases by subject,
// for reviewers.
func certNotes(b *BootFacts) map[string]string {
	notes := map[string]string{}
	for i := range b.Events {
		e := &b.Events[i]
		if e.Class != ClassSecureBoot {
			continue
		}
		v, err := tcg.ParseUEFIVariableData(bytes.NewReader(e.Data))
		if err != nil {
			continue
		}
		certs, _, err := v.SignatureData()
		if err != nil {
			continue
		}
		for _, c := range certs {
			sum := sha256.Sum256(c.Raw)
			notes["cert:"+hex.EncodeToString(sum[:])] = subjectOf(&c)
		}
	}
	return notes
}

func subjectOf(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return c.Subject.CommonName
	}
	return c.Subject.String()
}

// authorityNote describes an EV_EFI_VARIABLE_AUTHORITY event for reviewers.
func authorityNote(e *BootEvent) string {
	v, err := tcg.ParseUEFIVariableData(bytes.NewReader(e.Data))
	if err != nil {
		return e.Text
	}
	if a, err := tcg.ParseUEFIVariableAuthority(v); err == nil && len(a.Certs) > 0 {
		return v.VarName() + ": " + subjectOf(&a.Certs[0])
	}
	return v.VarName()
}

// ExtractState replays the log against the given PCR values of one bank and
// extracts the firmware state (secure boot, EFI apps, GRUB) with the parsing
// relaxations of v. The values must come from a verified quote for the
// result to mean anything; for derivation they come from the log itself.
func ExtractState(eventLog []byte, b Bank, pcrs map[int][]byte, v VerifyOptions) (st *statepb.FirmwareLogState, err error) {
	h := b.CryptoHash()
	if h == 0 {
		return nil, fmt.Errorf("unknown bank %q", b)
	}
	defer func() {
		// go-eventlog panics on event types it does not know.
		if p := recover(); p != nil {
			st, err = nil, fmt.Errorf("the event log parser failed: %v", p)
		}
	}()
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
