package policy_test

import (
	"bytes"
	"testing"

	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/policy"
)

func TestCanonicalRoundTrip(t *testing.T) {
	refs, err := firmwarerefs.Load()
	if err != nil {
		t.Fatal(err)
	}
	b, err := refs.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	got, err := policy.ParseCanonical(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID() != refs.ID() {
		t.Fatalf("round trip changed the id: %s → %s", refs.ID(), got.ID())
	}
	b2, _ := got.Canonical()
	if !bytes.Equal(b, b2) {
		t.Fatal("round trip changed the encoding")
	}
	bad := bytes.Clone(b)
	bad[len(bad)-3] ^= 1
	if set, err := policy.ParseCanonical(bad); err == nil && set.ID() == refs.ID() {
		t.Fatal("a changed byte kept the id")
	}
	if _, err := policy.ParseCanonical([]byte{0xa1}); err == nil {
		t.Fatal("truncated input was accepted")
	}
}

func FuzzParseCanonical(f *testing.F) {
	refs, err := firmwarerefs.Load()
	if err != nil {
		f.Fatal(err)
	}
	b, _ := refs.Canonical()
	f.Add(b)
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := policy.ParseCanonical(data)
		if err != nil {
			return
		}
		again, err := set.Canonical()
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("accepted input does not round-trip")
		}
	})
}
