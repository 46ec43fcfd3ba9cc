package appraisal

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"fmt"

	"github.com/GoogleCloudPlatform/confidential-space/server/coscel"
	"github.com/GoogleCloudPlatform/confidential-space/server/extract"
	"github.com/google/go-eventlog/cel"
	statepb "github.com/google/go-eventlog/proto/state"
	"github.com/google/go-eventlog/register"

	vattest "github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/policy"
)

// maxCELRecords bounds the canonical event log of one workload. A launch is a
// handful of records (reference, digest, a few args and env vars, separator).
const maxCELRecords = 1024

// WorkloadResult is the verified workload measurement.
type WorkloadResult struct {
	policy.Workload
	Records int // CEL records replayed
}

// verifyWorkload replays the canonical event log against the quoted PCR 13
// of the verified bank, checks every record's digest against its content, and
// extracts the image. Replay covers the whole PCR: a value extended into
// PCR 13 that the CEL does not show fails it, and an empty CEL is refused
// rather than replayed vacuously.
func verifyWorkload(o *Outcome) (err error) {
	// The CEL libraries index into bytes they do not always check (see
	// parseCOSRecord); a panic on a malformed log the checks here missed is
	// a refusal, never a crash of the verifier.
	defer func() {
		if p := recover(); p != nil {
			err = vattest.Errorf(vattest.ReasonCELMalformed, "the canonical event log parser failed on this log (%v)", p)
		}
	}()
	raw := o.AK.Attestation.GetCanonicalEventLog()
	if len(raw) == 0 {
		return vattest.Errorf(vattest.ReasonCELMissing, "the evidence has no canonical event log; the agent must measure its image (reference, digest) into PCR %d before attesting", policy.WorkloadPCR)
	}
	if err := checkCELFraming(raw, 0); err != nil {
		return vattest.Errorf(vattest.ReasonCELMalformed, "the canonical event log is not well framed: %w", err)
	}
	log, err := cel.DecodeToCEL(bytes.NewBuffer(raw))
	if err != nil {
		return vattest.Errorf(vattest.ReasonCELMalformed, "the canonical event log cannot be decoded: %w", err)
	}
	recs := log.Records()
	switch {
	case len(recs) == 0:
		return vattest.Errorf(vattest.ReasonCELMissing, "the canonical event log has no records")
	case len(recs) > maxCELRecords:
		return vattest.Errorf(vattest.ReasonCELMalformed, "the canonical event log has %d records; at most %d are accepted", len(recs), maxCELRecords)
	case log.MRType() != cel.PCRType:
		return vattest.Errorf(vattest.ReasonCELMalformed, "the canonical event log measures into %v registers; TPM PCRs are expected", log.MRType())
	}
	hash := policy.Bank(o.Quote.Verify.Bank).CryptoHash()
	pcr13, ok := o.Quote.PCRs[policy.WorkloadPCR]
	if !ok {
		return vattest.Errorf(vattest.ReasonQuoteInvalid, "the quote does not cover PCR %d, where the workload is measured", policy.WorkloadPCR)
	}
	bank := register.PCRBank{
		TCGHashAlgo: tcgHashAlgo(hash),
		PCRs:        []register.PCR{{Index: policy.WorkloadPCR, Digest: pcr13, DigestAlg: hash}},
	}
	if err := log.Replay(bank); err != nil {
		return vattest.Errorf(vattest.ReasonCELReplay, "replaying the canonical event log does not give the quoted PCR %d (%s): %w", policy.WorkloadPCR, o.Quote.Verify.Bank, err)
	}
	for i, r := range recs {
		if r.Index != policy.WorkloadPCR {
			return vattest.Errorf(vattest.ReasonCELMalformed, "record %d measures PCR %d; workload records belong in PCR %d", i, r.Index, policy.WorkloadPCR)
		}
		tlv, err := parseCOSRecord(r)
		if err != nil {
			return vattest.Errorf(vattest.ReasonCELMalformed, "record %d is not a COS TLV event: %w", i, err)
		}
		if err := cel.VerifyDigests(tlv, r.Digests); err != nil {
			return vattest.Errorf(vattest.ReasonCELRecordDigest, "record %d (COS event type %d): its content does not match its digest: %w", i, tlv.EventType, err)
		}
	}
	state, err := extract.VerifiedCOSState(log, uint8(cel.PCRType), extract.Options{})
	if err != nil {
		return vattest.Errorf(vattest.ReasonCELMalformed, "the canonical event log's events are not a valid launch: %w", err)
	}
	if last := recs[len(recs)-1]; !isSeparator(last) {
		return vattest.Errorf(vattest.ReasonCELMalformed, "the canonical event log does not end with a launch separator; the agent must close its measurements before attesting")
	}
	c := state.GetContainer()
	if c.GetImageDigest() == "" || c.GetImageReference() == "" {
		return vattest.Errorf(vattest.ReasonCELMalformed, "the canonical event log measures no image digest and reference")
	}
	o.Workload = &WorkloadResult{
		Workload: policy.Workload{
			ImageRef:    c.GetImageReference(),
			ImageDigest: c.GetImageDigest(),
			Args:        c.GetArgs(),
			Env:         c.GetEnvVars(),
		},
		Records: len(recs),
	}
	return nil
}

// CEL TLV framing: a type byte, a big-endian 32-bit length, the value.
const (
	celTLVHeader  = 5
	celDigestsTLV = 3 // the record field whose value is itself a list of TLVs
)

// checkCELFraming checks that every TLV length in raw, and in the digest
// lists nested in it, fits in the bytes that follow. go-eventlog's decoder
// allocates whatever length a TLV header claims before reading it, so an
// unchecked 7-byte CEL could make the verifier allocate 4 GiB (found by
// FuzzWorkloadStepCEL).
func checkCELFraming(raw []byte, depth int) error {
	for off := 0; off < len(raw); {
		if len(raw)-off < celTLVHeader {
			return fmt.Errorf("truncated TLV header at byte %d", off)
		}
		typ, n := raw[off], binary.BigEndian.Uint32(raw[off+1:])
		rest := len(raw) - off - celTLVHeader
		if uint64(n) > uint64(rest) {
			return fmt.Errorf("TLV at byte %d declares %d value bytes; %d remain", off, n, rest)
		}
		if typ == celDigestsTLV && depth == 0 {
			value := raw[off+celTLVHeader : off+celTLVHeader+int(n)]
			if err := checkCELFraming(value, 1); err != nil {
				return fmt.Errorf("digests at byte %d: %w", off, err)
			}
		}
		off += celTLVHeader + int(n)
	}
	return nil
}

func isSeparator(r cel.Record) bool {
	tlv, err := parseCOSRecord(r)
	return err == nil && tlv.EventType == coscel.LaunchSeparatorType
}

// parseCOSRecord parses a record's content as a COS TLV event. The content's
// value is itself a TLV, and coscel (through go-eventlog's
// TLV.UnmarshalBinary) slices its header without checking that it is there:
// a value shorter than a TLV header panicked the verifier (found by
// FuzzWorkloadStepCEL). So the length is checked first.
func parseCOSRecord(r cel.Record) (coscel.COSTLV, error) {
	if n := len(r.Content.Value); n < celTLVHeader {
		return coscel.COSTLV{}, fmt.Errorf("its content is %d bytes, shorter than a TLV header (%d)", n, celTLVHeader)
	}
	return coscel.ParseToCOSTLV(r.Content)
}

func tcgHashAlgo(h crypto.Hash) statepb.HashAlgo {
	switch h {
	case crypto.SHA1:
		return statepb.HashAlgo_SHA1
	case crypto.SHA384:
		return statepb.HashAlgo_SHA384
	}
	return statepb.HashAlgo_SHA256
}
