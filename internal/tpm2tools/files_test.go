package tpm2tools

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

var (
	akOnce sync.Once
	akKey  *ecdsa.PrivateKey
)

func testKey(t testing.TB) *ecdsa.PrivateKey {
	akOnce.Do(func() {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		akKey = k
	})
	return akKey
}

func testAK(t testing.TB) *AKPublic { return &AKPublic{Key: &testKey(t).PublicKey} }

// signedQuote builds a quote signed by the test key (a software signer:
// the parsing and checking logic is what is tested here; real TPM quotes
// are checked in cmd/vouch against tpm2-tools on swtpm).
func signedQuote(t *testing.T, nonce []byte, banks []Bank) (msg, sig, pcrs []byte) {
	t.Helper()
	var sel tpm2.TPMLPCRSelection
	pd := sha256.New()
	for _, b := range banks {
		s := make([]byte, 3)
		for _, p := range b.PCRs {
			s[p/8] |= 1 << (p % 8)
		}
		sel.PCRSelections = append(sel.PCRSelections, tpm2.TPMSPCRSelection{Hash: b.Hash, PCRSelect: s})
		for _, v := range b.Values {
			pd.Write(v)
		}
	}
	att := tpm2.TPMSAttest{
		Magic:     tpm2.TPMGeneratedValue,
		Type:      tpm2.TPMSTAttestQuote,
		ExtraData: tpm2.TPM2BData{Buffer: nonce},
		Attested:  tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{PCRSelect: sel, PCRDigest: tpm2.TPM2BDigest{Buffer: pd.Sum(nil)}}),
	}
	msg = tpm2.Marshal(att)
	d := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, testKey(t), d[:])
	if err != nil {
		t.Fatal(err)
	}
	ts := tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
		Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: r.FillBytes(make([]byte, 32))}, SignatureS: tpm2.TPM2BECCParameter{Buffer: s.FillBytes(make([]byte, 32))},
	})}
	sig = tpm2.Marshal(ts)
	pcrs, err = MarshalPCRs(banks)
	if err != nil {
		t.Fatal(err)
	}
	return msg, sig, pcrs
}

func TestVerifyManyPCRs(t *testing.T) {
	// 24 SHA-256 and 24 SHA-1 PCRs span 6 TPML_DIGEST lists of 8.
	var b256, b1 Bank
	b256.Hash, b1.Hash = tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA1
	for i := range 24 {
		b256.PCRs, b1.PCRs = append(b256.PCRs, i), append(b1.PCRs, i)
		b256.Values = append(b256.Values, bytes.Repeat([]byte{byte(i)}, 32))
		b1.Values = append(b1.Values, bytes.Repeat([]byte{byte(i + 100)}, 20))
	}
	nonce := []byte("nonce")
	msg, sig, pcrs := signedQuote(t, nonce, []Bank{b256, b1})
	if len(pcrs) != pcrSelectionStructSize+4+6*digestListStructSize {
		t.Fatalf("PCR file is %d bytes", len(pcrs))
	}
	q, err := Verify(VerifyOpts{AK: testAK(t), Message: msg, Signature: sig, PCRs: pcrs, Nonce: nonce})
	if err != nil {
		t.Fatal(err)
	}
	if len(q.Banks) != 2 || q.Banks[1].Values[23][0] != 123 {
		t.Errorf("banks = %+v", q.Banks)
	}
	// A digest moved from one bank to the other breaks the digest.
	b256.Values[0], b256.Values[1] = b256.Values[1], b256.Values[0]
	swapped, _ := MarshalPCRs([]Bank{b256, b1})
	if _, err := Verify(VerifyOpts{AK: testAK(t), Message: msg, Signature: sig, PCRs: swapped, Nonce: nonce}); err == nil || !strings.Contains(err.Error(), "PCR digest") {
		t.Errorf("reordered PCR values = %v", err)
	}
	// A high-S signature is still a valid ECDSA signature; a zero one not.
	bad := bytes.Clone(sig)
	copy(bad[len(bad)-32:], make([]byte, 32))
	if _, err := Verify(VerifyOpts{AK: testAK(t), Message: msg, Signature: bad, PCRs: pcrs, Nonce: nonce}); err == nil {
		t.Error("zeroed signature verified")
	}
}

func TestParsePCRsRefusals(t *testing.T) {
	good, err := MarshalPCRs([]Bank{{Hash: tpm2.TPMAlgSHA256, PCRs: []int{0, 7}, Values: [][]byte{make([]byte, 32), make([]byte, 32)}}})
	if err != nil {
		t.Fatal(err)
	}
	mut := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	cases := map[string][]byte{
		"no banks":          mut(func(b []byte) { b[0] = 0 }),
		"17 banks":          mut(func(b []byte) { b[0] = 17 }),
		"unknown hash":      mut(func(b []byte) { b[4] = 0x99 }),
		"select too long":   mut(func(b []byte) { b[6] = 5 }),
		"more lists":        mut(func(b []byte) { b[pcrSelectionStructSize] = 2 }),
		"9 digests in list": mut(func(b []byte) { b[pcrSelectionStructSize+4] = 9 }),
		"short digest":      mut(func(b []byte) { b[pcrSelectionStructSize+8] = 20 }),
		"digest too long":   mut(func(b []byte) { b[pcrSelectionStructSize+8] = 65 }),
		"PCR count differs": mut(func(b []byte) { b[7] = 0x83 }),
		"no PCR selected":   mut(func(b []byte) { b[7], b[pcrSelectionStructSize+4] = 0, 0 }), // found by FuzzParsePCRs
		"too large":         make([]byte, MaxPCRFileSize+1),
	}
	for name, b := range cases {
		if _, err := ParsePCRs(b, sha256Sel); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}
