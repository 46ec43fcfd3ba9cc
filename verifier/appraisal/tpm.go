package appraisal

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/google/go-tpm-tools/proto/attest"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm-tools/quote"
	"github.com/google/go-tpm-tools/server"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/protobuf/proto"

	vattest "github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/verifier/store"
)

// AKResult is the attestation key, trusted.
type AKResult struct {
	Attestation *attest.Attestation // the decoded TPM part of the evidence
	Public      crypto.PublicKey
	SPKI        []byte // DER SubjectPublicKeyInfo
	Digest      []byte // SHA-256 of SPKI
	Enrollment  *store.Enrollment
}

// QuoteResult is the verified platform state.
type QuoteResult struct {
	Machine *attest.MachineState // go-tpm-tools' parse of the replayed firmware log
	Boot    *policy.BootFacts    // its events, classified for appraisal (shared: never modify)
	Verify  policy.VerifyOptions // bank and quirks the verification needed
	Quote   *tpmpb.Quote         // the verified quote of that bank
	PCRs    map[int][]byte       // its PCR values
}

// akAttributes are required of an AK: a restricted signing key that never
// leaves the TPM, so that what it signs was produced by the TPM itself.
const akAttributes = tpm2.FlagSign | tpm2.FlagRestricted | tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin

func (p *Pipeline) checkAK(ctx context.Context, refs *policy.RefSet, o *Outcome) error {
	var att attest.Attestation
	if err := proto.Unmarshal(o.Evidence.TPM, &att); err != nil {
		return vattest.Errorf(vattest.ReasonRequestMalformed, "evidence field 4 is not a go-tpm-tools Attestation protobuf: %w", err)
	}
	pub, err := tpm2.DecodePublic(att.GetAkPub())
	if err != nil {
		return vattest.Errorf(vattest.ReasonAKMalformed, "the AK public area cannot be decoded: %w", err)
	}
	if pub.Attributes&akAttributes != akAttributes || pub.Attributes&tpm2.FlagDecrypt != 0 {
		return vattest.Errorf(vattest.ReasonAKAttributes, "the AK has attributes %#x; an AK must be a restricted, fixedTPM, fixedParent, sensitiveDataOrigin signing key (%#x) and not a decryption key", uint32(pub.Attributes), uint32(akAttributes))
	}
	key, err := pub.Key()
	if err != nil {
		return vattest.Errorf(vattest.ReasonAKMalformed, "the AK public key cannot be extracted: %w", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return vattest.Errorf(vattest.ReasonAKMalformed, "the AK public key cannot be encoded: %w", err)
	}
	digest := sha256.Sum256(spki)
	if denied, note := refs.AKDenied(digest[:]); denied {
		return vattest.Errorf(vattest.ReasonAKDenied, "attestation key %x is on the deny list of reference set %s%s; the machine is considered compromised: revoke its enrollment and investigate", digest[:8], refs.ID(), denyNote(note))
	}
	enr, err := p.opts.AKs.Enrollment(ctx, digest[:])
	switch {
	case errors.Is(err, store.ErrNotFound):
		return vattest.Errorf(vattest.ReasonAKUnknown, "attestation key %x is not enrolled; enroll it (`vouch agents enroll --ak-pub`) or by credential activation", digest[:8])
	case err != nil:
		return fmt.Errorf("looking up AK enrollment: %w", err)
	case !enr.Active():
		return vattest.Errorf(vattest.ReasonAKRevoked, "attestation key %x was revoked at %s by %s (%s); re-enroll the machine if it is trusted again", digest[:8], enr.RevokedAt.Format("2006-01-02T15:04:05Z07:00"), enr.RevokedBy, enr.RevokeReason)
	}
	o.AK = &AKResult{Attestation: &att, Public: key, SPKI: spki, Digest: digest[:], Enrollment: enr}
	return nil
}

var bankAlgs = map[string]tpm2.Algorithm{"sha1": tpm2.AlgSHA1, "sha256": tpm2.AlgSHA256, "sha384": tpm2.AlgSHA384}

func toServerOpts(v policy.VerifyOptions, binding []byte, ak crypto.PublicKey) server.VerifyOpts {
	o := server.VerifyOpts{
		Nonce:                         binding,
		TrustedAKs:                    []crypto.PublicKey{ak},
		HashAlgo:                      bankAlgs[v.Bank],
		AllowSHA1:                     v.Has(policy.QuirkSHA1),
		AllowEFIAppBeforeCallingEvent: v.Has(policy.QuirkEFIAppBeforeCalling),
		AllowEmptySBVar:               v.Has(policy.QuirkEmptySBVar),
	}
	if v.Loader == "grub" {
		o.Loader = server.GRUB
	}
	return o
}

func (p *Pipeline) verifyQuote(refs *policy.RefSet, o *Outcome) error {
	att := o.AK.Attestation
	if len(att.GetEventLog()) == 0 {
		return vattest.Errorf(vattest.ReasonEventLogMissing, "the evidence has no TCG firmware event log; measured boot cannot be appraised without it (on Linux it is /sys/kernel/security/tpm0/binary_bios_measurements)")
	}
	if len(att.GetEventLog()) > policy.MaxEventLogSize {
		return vattest.Errorf(vattest.ReasonRequestTooLarge, "the firmware event log is %d bytes; at most %d are accepted", len(att.GetEventLog()), policy.MaxEventLogSize)
	}
	byBank := map[tpm2.Algorithm]*tpmpb.Quote{}
	for _, q := range att.GetQuotes() {
		alg := tpm2.Algorithm(q.GetPcrs().GetHash())
		if byBank[alg] != nil {
			return vattest.Errorf(vattest.ReasonQuoteInvalid, "the evidence has two quotes of the %v bank; send one quote per bank", alg)
		}
		byBank[alg] = q
	}
	logDigest := sha256.Sum256(att.GetEventLog())
	verified := map[tpm2.Algorithm]bool{}
	var firstErr error
	// No downgrade: a log with SHA-256 (or SHA-384) digests, quoted on that
	// bank, is never verified on its SHA-1 bank, whatever a profile allows.
	// Otherwise a log whose SHA-256 digests do not replay could pass on
	// SHA-1 digests chosen to.
	noSHA1 := (byBank[tpm2.AlgSHA256] != nil && logHasBank(att.GetEventLog(), tpm2.AlgSHA256)) ||
		(byBank[tpm2.AlgSHA384] != nil && logHasBank(att.GetEventLog(), tpm2.AlgSHA384))
	for _, cand := range refs.VerifyCandidates() {
		alg := bankAlgs[cand.Bank]
		q := byBank[alg]
		if q == nil || (alg == tpm2.AlgSHA1 && noSHA1) {
			continue
		}
		// The quote's signature, nonce and PCR digest are checked on every
		// attestation; only the log replay, a pure function of the log, the
		// PCR values and the options, is cached.
		if !verified[alg] {
			if err := quote.Verify(q, o.AK.Public, o.Binding); err != nil {
				return vattest.Errorf(vattest.ReasonQuoteInvalid, "the %s quote does not verify against the enrolled AK and the binding of nonce, agent key and request: %w", cand.Bank, err)
			}
			verified[alg] = true
		}
		key := replayKey(cand, q.GetPcrs(), logDigest[:], att.GetAkCert())
		r, ok := p.replays.Get(key)
		if !ok {
			ms, err := verifyAttestation(att, toServerOpts(cand, o.Binding, o.AK.Public))
			var boot *policy.BootFacts
			if err != nil {
				err = classifyLogError(cand, err)
			} else {
				boot, err = classifyBoot(cand, q.GetPcrs(), ms)
			}
			r = replayResult{machine: ms, boot: boot, err: err}
			p.replays.Add(key, r)
		}
		if r.err == nil {
			pcrs := make(map[int][]byte, len(q.GetPcrs().GetPcrs()))
			for idx, v := range q.GetPcrs().GetPcrs() {
				pcrs[int(idx)] = v
			}
			o.Quote = &QuoteResult{Machine: r.machine, Boot: r.boot, Verify: cand, Quote: q, PCRs: pcrs}
			return nil
		}
		if firstErr == nil {
			firstErr = r.err
		}
	}
	if firstErr == nil {
		return vattest.Errorf(vattest.ReasonQuoteInvalid, "the evidence has no quote of a bank this verifier's reference profiles use (sha256, or one a profile names)")
	}
	return firstErr
}

// verifyAttestation calls go-tpm-tools' VerifyAttestation, turning a panic
// into an error: go-eventlog panics on event types it does not know
// (tcg.Event.UntrustedType), and event types are not covered by the PCR
// replay, so an enrolled but compromised machine could send one.
func verifyAttestation(att *attest.Attestation, opts server.VerifyOpts) (ms *attest.MachineState, err error) {
	defer func() {
		if p := recover(); p != nil {
			ms, err = nil, vattest.Errorf(vattest.ReasonEventLogMalformed, "the firmware event log parser failed on this log (%v); an event has a type the parser does not know", p)
		}
	}()
	return server.VerifyAttestation(att, opts)
}

// replayResult is the outcome of replaying one firmware log against one set
// of PCR values with one set of options. Machine is shared: never modify it.
type replayResult struct {
	machine *attest.MachineState
	boot    *policy.BootFacts
	err     error
}

// classifyBoot classifies the verified log's events for appraisal, once
// per replay: go-tpm-tools' MachineState carries the raw events of the
// verified replay and the parsed secure boot state.
func classifyBoot(v policy.VerifyOptions, pcrs *tpmpb.PCRs, ms *attest.MachineState) (*policy.BootFacts, error) {
	st, err := server.ConvertToFirmwareState(ms)
	if err != nil {
		return nil, vattest.Errorf(vattest.ReasonEventLogMalformed, "the verified firmware log state cannot be read: %w", err)
	}
	vals := make(map[int][]byte, len(pcrs.GetPcrs()))
	for idx, d := range pcrs.GetPcrs() {
		vals[int(idx)] = d
	}
	return policy.NewBootFacts(policy.Bank(v.Bank), vals, st.GetRawEvents(), st), nil
}

// replayKey identifies a replay: the options, the quoted PCR values, the log
// and the AK certificate (whose instance information go-tpm-tools merges
// into the machine state).
func replayKey(v policy.VerifyOptions, pcrs *tpmpb.PCRs, logDigest, akCert []byte) [32]byte {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00", v.Key(), pcrs.GetHash())
	idxs := make([]uint32, 0, len(pcrs.GetPcrs()))
	for i := range pcrs.GetPcrs() {
		idxs = append(idxs, i)
	}
	sort.Slice(idxs, func(a, b int) bool { return idxs[a] < idxs[b] })
	var b [4]byte
	for _, i := range idxs {
		binary.BigEndian.PutUint32(b[:], i)
		h.Write(b[:])
		d := pcrs.GetPcrs()[i]
		binary.BigEndian.PutUint32(b[:], uint32(len(d)))
		h.Write(b[:])
		h.Write(d)
	}
	h.Write(logDigest)
	c := sha256.Sum256(akCert)
	h.Write(c[:])
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// classifyLogError maps a go-tpm-tools event-log failure (after the quote
// itself verified) to a reason. go-tpm-tools wraps go-eventlog's errors with
// %v, so the text is all there is; TestLogErrorClassification pins it.
func classifyLogError(v policy.VerifyOptions, err error) error {
	var ve *vattest.Error
	if errors.As(err, &ve) {
		return err
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "failed to replay event log"), strings.Contains(msg, "failed to verify"):
		return vattest.Errorf(vattest.ReasonEventLogReplay, "replaying the firmware event log does not give the quoted %s PCRs: an event was changed, added or removed (%v)", v.Bank, err)
	case strings.Contains(msg, "failed to parse event log"), strings.Contains(msg, "parse first event"):
		return vattest.Errorf(vattest.ReasonEventLogMalformed, "the firmware event log cannot be parsed: %v", err)
	case strings.Contains(msg, "SHA-1 is not allowed"):
		return vattest.Errorf(vattest.ReasonRefsNoProfile, "the log only verifies on the SHA-1 bank, and no reference profile allows %q", policy.QuirkSHA1)
	}
	return vattest.Errorf(vattest.ReasonEventLogEvent, "the firmware event log replays to the quoted PCRs, but an event's content is invalid or does not match its digest, or the platform needs a quirk no profile allows: %v", err)
}

func denyNote(note string) string {
	if note == "" {
		return ""
	}
	return " (" + note + ")"
}

// logHasBank reports whether a TCG event log carries digests of a bank: a
// crypto-agile log lists its algorithms in the Spec ID event (the first
// event, in the SHA-1 format); a log without one is SHA-1 only.
func logHasBank(log []byte, alg tpm2.Algorithm) bool {
	const headerLen = 32 // PCR index, type, SHA-1 digest, event size
	if len(log) < headerLen {
		return false
	}
	size := int(binary.LittleEndian.Uint32(log[28:32]))
	data := log[headerLen:]
	if size > len(data) {
		return false
	}
	data = data[:size]
	// TCG_EfiSpecIDEvent: signature[16], platformClass u32, versions 3×u8,
	// uintnSize u8, numberOfAlgorithms u32, then {algorithmId u16, digestSize u16}.
	if len(data) < 28 || string(data[:15]) != "Spec ID Event03" {
		return alg == tpm2.AlgSHA1
	}
	n := int(binary.LittleEndian.Uint32(data[24:28]))
	for i := 0; i < n && 28+4*i+4 <= len(data); i++ {
		if tpm2.Algorithm(binary.LittleEndian.Uint16(data[28+4*i:])) == alg {
			return true
		}
	}
	return false
}
