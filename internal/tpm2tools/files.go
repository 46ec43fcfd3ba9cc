// Package tpm2tools reads and writes the files of tpm2-tools (tpm2_quote -m
// -s -o, tpm2_createak -u -f pem|tss) and verifies a quote given as those
// files the way tpm2_checkquote does: signature by the AK over the message,
// nonce in extraData, and the digest of the PCR values in the quote.
//
// Formats (all bounded; see the Max* constants):
//
//   - message (tpm2_quote -m): a marshalled TPMS_ATTEST (big-endian).
//   - signature (tpm2_quote -s, default -f tss): a marshalled TPMT_SIGNATURE.
//   - PCRs (tpm2_quote -o, default -F serialized): the C structures of the
//     TSS in host (little-endian) order: TPML_PCR_SELECTION (132 bytes),
//     UINT32 n, then n TPML_DIGEST (532 bytes each, at most 8 digests each),
//     the digests in selection order. -F values (the digests only, in the
//     order of the quote's selection) is accepted too.
//   - AK public key (tpm2_createak -u): "-f pem" a PEM PUBLIC KEY, "-f tss"
//     (the default) a marshalled TPM2B_PUBLIC.
package tpm2tools

import (
	"crypto"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// Size bounds of the files.
const (
	MaxMessageSize   = 4 << 10
	MaxSignatureSize = 2 << 10
	MaxPublicSize    = 8 << 10
	MaxPCRFileSize   = pcrSelectionStructSize + 4 + maxDigestLists*digestListStructSize
)

// Layout of the TSS C structures in the PCR file.
const (
	pcrSelectionsMax       = 16 // TPM2_NUM_PCR_BANKS
	pcrSelectionStructSize = 4 + pcrSelectionsMax*8
	digestsPerList         = 8 // TPML_DIGEST holds at most 8
	digestStructSize       = 2 + 64
	digestListStructSize   = 4 + digestsPerList*digestStructSize
	maxDigestLists         = 16 // 16 banks × 24 PCRs fits in 48; be generous but bounded
	pcrSelectMax           = 4  // TPM2_PCR_SELECT_MAX
	maxPCR                 = 23
)

// Bank is the PCR values of one bank, in ascending PCR order.
type Bank struct {
	Hash   tpm2.TPMIAlgHash
	PCRs   []int
	Values [][]byte
}

// PCRFile is the content of a PCR file: banks in selection order.
type PCRFile struct {
	Banks []Bank
	// Serialized is false for an -F values file, which carries no
	// selection (the quote's is assumed).
	Serialized bool
}

// hashSize returns the digest size of a TPM hash algorithm, or 0.
func hashSize(alg tpm2.TPMIAlgHash) int {
	h, err := alg.Hash()
	if err != nil {
		return 0
	}
	return h.Size()
}

// ParsePCRs parses a PCR file of tpm2_quote -o in the default "serialized"
// form. A file whose size is not that of the serialized form is parsed as
// -F values against sel, the quote's selection.
func ParsePCRs(b []byte, sel tpm2.TPMLPCRSelection) (*PCRFile, error) {
	if len(b) > MaxPCRFileSize {
		return nil, fmt.Errorf("the PCR file is %d bytes; at most %d are accepted", len(b), MaxPCRFileSize)
	}
	if len(b) >= pcrSelectionStructSize+4+digestListStructSize && (len(b)-pcrSelectionStructSize-4)%digestListStructSize == 0 {
		return parseSerialized(b)
	}
	return parseValues(b, sel)
}

func parseSerialized(b []byte) (*PCRFile, error) {
	le := binary.LittleEndian
	count := le.Uint32(b)
	if count == 0 || count > pcrSelectionsMax {
		return nil, fmt.Errorf("the PCR file selects %d banks; want 1 to %d (is it a tpm2_quote -o file?)", count, pcrSelectionsMax)
	}
	f := &PCRFile{Serialized: true}
	for i := range int(count) {
		s := b[4+8*i : 4+8*i+8]
		alg := tpm2.TPMIAlgHash(le.Uint16(s))
		size := int(s[2])
		if hashSize(alg) == 0 {
			return nil, fmt.Errorf("the PCR file's selection %d names hash algorithm %#x, which is not a known hash", i, uint16(alg))
		}
		if size > pcrSelectMax {
			return nil, fmt.Errorf("the PCR file's selection %d is %d bytes; at most %d", i, size, pcrSelectMax)
		}
		bank := Bank{Hash: alg, PCRs: selectedPCRs(s[3 : 3+size])}
		for _, p := range bank.PCRs {
			if p > maxPCR {
				return nil, fmt.Errorf("the PCR file selects PCR %d; PCRs go up to %d", p, maxPCR)
			}
		}
		f.Banks = append(f.Banks, bank)
	}
	if f.pcrCount() == 0 {
		return nil, errors.New("the PCR file selects no PCR; a quote over no PCR proves nothing")
	}
	lists := le.Uint32(b[pcrSelectionStructSize:])
	if int(lists) != (len(b)-pcrSelectionStructSize-4)/digestListStructSize {
		return nil, fmt.Errorf("the PCR file announces %d digest lists but holds %d", lists, (len(b)-pcrSelectionStructSize-4)/digestListStructSize)
	}
	var digests [][]byte
	for l := range int(lists) {
		dl := b[pcrSelectionStructSize+4+l*digestListStructSize:]
		n := le.Uint32(dl)
		if n > digestsPerList {
			return nil, fmt.Errorf("digest list %d of the PCR file holds %d digests; at most %d", l, n, digestsPerList)
		}
		for d := range int(n) {
			ds := dl[4+d*digestStructSize:]
			size := int(le.Uint16(ds))
			if size > 64 {
				return nil, fmt.Errorf("digest %d of list %d of the PCR file is %d bytes; at most 64", d, l, size)
			}
			digests = append(digests, slices.Clone(ds[2:2+size]))
		}
	}
	if err := f.fill(digests); err != nil {
		return nil, err
	}
	return f, nil
}

func parseValues(b []byte, sel tpm2.TPMLPCRSelection) (*PCRFile, error) {
	f := &PCRFile{}
	want := 0
	for _, s := range sel.PCRSelections {
		size := hashSize(s.Hash)
		if size == 0 {
			return nil, fmt.Errorf("the quote selects hash algorithm %#x, which is not a known hash", uint16(s.Hash))
		}
		bank := Bank{Hash: s.Hash, PCRs: selectedPCRs(s.PCRSelect)}
		want += size * len(bank.PCRs)
		f.Banks = append(f.Banks, bank)
	}
	if len(b) != want {
		return nil, fmt.Errorf("the PCR file is %d bytes: neither tpm2_quote's serialized form nor the %d bytes of the quoted PCRs' values (-F values); truncated, or for other PCRs than quoted", len(b), want)
	}
	var digests [][]byte
	for _, bank := range f.Banks {
		size := hashSize(bank.Hash)
		for range bank.PCRs {
			digests = append(digests, slices.Clone(b[:size]))
			b = b[size:]
		}
	}
	if err := f.fill(digests); err != nil {
		return nil, err
	}
	return f, nil
}

// pcrCount is the number of PCRs the banks select.
func (f *PCRFile) pcrCount() int {
	total := 0
	for _, b := range f.Banks {
		total += len(b.PCRs)
	}
	return total
}

// fill distributes digests over the banks' PCRs, checking their sizes.
func (f *PCRFile) fill(digests [][]byte) error {
	if total := f.pcrCount(); len(digests) != total {
		return fmt.Errorf("the PCR file selects %d PCRs but holds %d values", total, len(digests))
	}
	for i := range f.Banks {
		b := &f.Banks[i]
		size := hashSize(b.Hash)
		for _, p := range b.PCRs {
			d := digests[0]
			digests = digests[1:]
			if len(d) != size {
				return fmt.Errorf("PCR %d of the %s bank is %d bytes; a %s digest is %d", p, algName(b.Hash), len(d), algName(b.Hash), size)
			}
			b.Values = append(b.Values, d)
		}
	}
	return nil
}

// MarshalPCRs writes banks in tpm2_quote's serialized PCR file form.
func MarshalPCRs(banks []Bank) ([]byte, error) {
	if len(banks) == 0 || len(banks) > pcrSelectionsMax {
		return nil, fmt.Errorf("%d banks; want 1 to %d", len(banks), pcrSelectionsMax)
	}
	le := binary.LittleEndian
	out := make([]byte, pcrSelectionStructSize+4)
	le.PutUint32(out, uint32(len(banks)))
	var digests [][]byte
	for i, b := range banks {
		s := out[4+8*i:]
		le.PutUint16(s, uint16(b.Hash))
		s[2] = 3
		for _, p := range b.PCRs {
			if p < 0 || p > maxPCR {
				return nil, fmt.Errorf("PCR %d is outside 0-%d", p, maxPCR)
			}
			s[3+p/8] |= 1 << (p % 8)
		}
		if len(b.Values) != len(b.PCRs) || !slices.IsSorted(b.PCRs) {
			return nil, errors.New("a bank needs one value per PCR, PCRs in ascending order")
		}
		digests = append(digests, b.Values...)
	}
	if len(digests) == 0 {
		return nil, errors.New("the banks select no PCR")
	}
	lists := (len(digests) + digestsPerList - 1) / digestsPerList
	le.PutUint32(out[pcrSelectionStructSize:], uint32(lists))
	for l := range lists {
		dl := make([]byte, digestListStructSize)
		chunk := digests[l*digestsPerList : min(len(digests), (l+1)*digestsPerList)]
		le.PutUint32(dl, uint32(len(chunk)))
		for d, v := range chunk {
			if len(v) > 64 {
				return nil, errors.New("a digest is longer than 64 bytes")
			}
			le.PutUint16(dl[4+d*digestStructSize:], uint16(len(v)))
			copy(dl[4+d*digestStructSize+2:], v)
		}
		out = append(out, dl...)
	}
	return out, nil
}

func selectedPCRs(sel []byte) []int {
	var out []int
	for i, b := range sel {
		for bit := range 8 {
			if b&(1<<bit) != 0 {
				out = append(out, 8*i+bit)
			}
		}
	}
	return out
}

// AKPublic is an attestation key read from a file.
type AKPublic struct {
	Key crypto.PublicKey
	// Public is the TPMT_PUBLIC for a -f tss file; nil for PEM, which has
	// no TPM attributes.
	Public *tpm2.TPMTPublic
}

// ParseAKPublic parses tpm2_createak -u output: a PEM "PUBLIC KEY"
// (-f pem) or a marshalled TPM2B_PUBLIC (-f tss, the default).
func ParseAKPublic(b []byte) (*AKPublic, error) {
	if len(b) > MaxPublicSize {
		return nil, fmt.Errorf("the AK public key file is %d bytes; at most %d are accepted", len(b), MaxPublicSize)
	}
	if block, _ := pem.Decode(b); block != nil {
		if block.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("the AK file is a PEM %q, not a PUBLIC KEY", block.Type)
		}
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("the AK PEM public key: %w", err)
		}
		return &AKPublic{Key: k}, nil
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b)
	if err != nil {
		return nil, fmt.Errorf("the AK file is neither PEM nor a TPM2B_PUBLIC (tpm2_createak -f tss): %w", err)
	}
	if len(tpm2.Marshal(pub)) != len(b) {
		return nil, errors.New("the AK file has bytes after its TPM2B_PUBLIC")
	}
	t, err := pub.Contents()
	if err != nil {
		return nil, fmt.Errorf("the AK TPM2B_PUBLIC: %w", err)
	}
	k, err := tpm2.Pub(*t)
	if err != nil {
		return nil, fmt.Errorf("the AK TPMT_PUBLIC holds no usable key: %w", err)
	}
	return &AKPublic{Key: k, Public: t}, nil
}

// MarshalAKPublicTSS returns a TPMT_PUBLIC as tpm2_createak -f tss writes
// it: a TPM2B_PUBLIC.
func MarshalAKPublicTSS(tpmtPublic []byte) ([]byte, error) {
	t, err := tpm2.Unmarshal[tpm2.TPMTPublic](tpmtPublic)
	if err != nil {
		return nil, fmt.Errorf("AK public area: %w", err)
	}
	return tpm2.Marshal(tpm2.New2B(*t)), nil
}

func algName(a tpm2.TPMIAlgHash) string {
	switch a {
	case tpm2.TPMAlgSHA1:
		return "sha1"
	case tpm2.TPMAlgSHA256:
		return "sha256"
	case tpm2.TPMAlgSHA384:
		return "sha384"
	case tpm2.TPMAlgSHA512:
		return "sha512"
	}
	return fmt.Sprintf("alg-%#x", uint16(a))
}

// AlgName returns the tpm2-tools name of a hash algorithm ("sha256").
func AlgName(a tpm2.TPMIAlgHash) string { return algName(a) }

// equalSelection reports whether a PCR file selects exactly what a quote
// selected, bank by bank in the same order.
func equalSelection(f *PCRFile, sel tpm2.TPMLPCRSelection) bool {
	if len(f.Banks) != len(sel.PCRSelections) {
		return false
	}
	for i, s := range sel.PCRSelections {
		if f.Banks[i].Hash != s.Hash || !slices.Equal(f.Banks[i].PCRs, selectedPCRs(s.PCRSelect)) {
			return false
		}
	}
	return true
}
