package tpm2tools

import (
	"bytes"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

var sha256Sel = tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0x83, 0, 0}}}}

// FuzzParsePCRs: any bytes as a PCR file either fail or give banks whose
// values have their hash's size and re-marshal to an equivalent file.
func FuzzParsePCRs(f *testing.F) {
	good, err := MarshalPCRs([]Bank{{Hash: tpm2.TPMAlgSHA256, PCRs: []int{0, 1, 7}, Values: [][]byte{make([]byte, 32), bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{7}, 32)}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(make([]byte, 96))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		pf, err := ParsePCRs(b, sha256Sel)
		if err != nil {
			return
		}
		for _, bank := range pf.Banks {
			if len(bank.Values) != len(bank.PCRs) {
				t.Fatalf("%d values for %d PCRs", len(bank.Values), len(bank.PCRs))
			}
			for _, v := range bank.Values {
				if len(v) != hashSize(bank.Hash) {
					t.Fatalf("value of %d bytes in bank %#x", len(v), bank.Hash)
				}
			}
		}
		again, err := MarshalPCRs(pf.Banks)
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		pf2, err := ParsePCRs(again, sha256Sel)
		if err != nil || len(pf2.Banks) != len(pf.Banks) {
			t.Fatalf("re-parse: %v", err)
		}
	})
}

// FuzzParseAKPublic: any bytes as an AK file either fail or give a key.
func FuzzParseAKPublic(f *testing.F) {
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"))
	f.Add([]byte{0x00, 0x10, 0x00, 0x23, 0x00, 0x0b})
	f.Fuzz(func(t *testing.T, b []byte) {
		ak, err := ParseAKPublic(b)
		if err == nil && ak.Key == nil {
			t.Fatal("no key and no error")
		}
	})
}

// FuzzVerify: arbitrary message, signature and PCR files never verify
// against a key nobody signed with, and never panic.
func FuzzVerify(f *testing.F) {
	f.Add([]byte{0xff, 0x54, 0x43, 0x47, 0x80, 0x18}, []byte{0x00, 0x18, 0x00, 0x0b, 0, 1, 1, 0, 1, 1}, []byte{})
	f.Fuzz(func(t *testing.T, msg, sig, pcrs []byte) {
		_, err := Verify(VerifyOpts{AK: testAK(t), Message: msg, Signature: sig, PCRs: pcrs, Nonce: []byte{1}})
		if err == nil {
			t.Fatal("random files verified")
		}
	})
}
