package audit_test

import (
	"bytes"
	"testing"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/audit"
)

func TestRecordRoundTripAndValidation(t *testing.T) {
	r := benchRecord(3)
	b, err := audit.Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := audit.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := audit.Encode(got)
	if !bytes.Equal(b, again) {
		t.Fatal("encoding is not stable across a round trip")
	}
	for _, tc := range []struct {
		name string
		mod  func(*audit.Record)
	}{
		{"no version", func(r *audit.Record) { r.Version = 0 }},
		{"no kind", func(r *audit.Record) { r.Kind = "" }},
		{"no time", func(r *audit.Record) { r.TimeMillis = 0 }},
		{"no outcome", func(r *audit.Record) { r.Outcome = "" }},
		{"no build", func(r *audit.Record) { r.Build = "" }},
		{"short evidence digest", func(r *audit.Record) { r.EvidenceDigest = []byte{1} }},
		{"credential without cti", func(r *audit.Record) { r.Credential.ID = nil }},
		{"too large", func(r *audit.Record) { r.Detail["x"] = string(bytes.Repeat([]byte("a"), audit.MaxRecordSize)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := benchRecord(1)
			tc.mod(r)
			if _, err := audit.Encode(r); err == nil {
				t.Fatal("encoded an invalid record")
			}
		})
	}
	// Unknown fields are refused: an entry decodes only as written.
	extra, _ := attest.Marshal(map[int]any{0: 1, 1: "attestation", 2: 5, 3: "issued", 12: "b", 99: "x"})
	if _, err := audit.Decode(extra); err == nil {
		t.Fatal("decoded a record with an unknown field")
	}
}

func FuzzDecodeRecord(f *testing.F) {
	b, _ := audit.Encode(benchRecord(1))
	f.Add(b)
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := audit.Decode(data)
		if err != nil {
			return
		}
		if _, err := audit.Encode(r); err != nil {
			t.Fatalf("a decoded record does not encode: %v", err)
		}
	})
}
