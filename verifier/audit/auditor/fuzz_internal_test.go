package auditor

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"testing"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

func FuzzParseBundle(f *testing.F) {
	f.Add([]byte{0, 3, 'a', 'b', 'c', 0, 0})
	f.Add([]byte{0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, raw []byte) {
		entries, err := parseBundle(raw)
		if len(entries) > 256 {
			t.Fatalf("%d entries in a bundle", len(entries))
		}
		if err != nil {
			return
		}
		// A bundle that parses re-serialises to itself.
		var out []byte
		for _, e := range entries {
			out = binary.BigEndian.AppendUint16(out, uint16(len(e)))
			out = append(out, e...)
		}
		if string(out) != string(raw) {
			t.Fatal("parse is not the inverse of serialisation")
		}
	})
}

// FuzzOpenWitnessed feeds arbitrary bytes as a witnessed checkpoint: it must
// never panic, and whatever it accepts is a checkpoint of this log signed by
// both the log and the witness.
func FuzzOpenWitnessed(f *testing.F) {
	logS, logV := fuzzKeys(f, "log.example", 1)
	witS, witV := fuzzCosigKeys(f, "witness.example", 2)
	body := "log.example\n7\n" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\n"
	signed, err := note.Sign(&note.Note{Text: body}, logS, witS)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(signed)
	logOnly, _ := note.Sign(&note.Note{Text: body}, logS)
	f.Add(logOnly)
	f.Add([]byte("log.example\n7\n\n— log.example AAAA\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		cp, witness, err := openWitnessed(raw, logV, []note.Verifier{witV})
		if err != nil {
			return
		}
		if cp.Origin != "log.example" || witness != "witness.example" {
			t.Fatalf("accepted origin %q witness %q", cp.Origin, witness)
		}
		if _, err := note.Open(raw, note.VerifierList(logV)); err != nil {
			t.Fatalf("accepted a note the log did not sign: %v", err)
		}
	})
}

// fuzzKeys derives a fixed key pair from seed, so that a crasher found
// with them replays.
func fuzzKeys(f *testing.F, name string, seed byte) (note.Signer, note.Verifier) {
	skey, vkey, err := note.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{seed}, 64)), name)
	if err != nil {
		f.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		f.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		f.Fatal(err)
	}
	return s, v
}

// fuzzCosigKeys is fuzzKeys for a witness: cosignature/v1.
func fuzzCosigKeys(f *testing.F, name string, seed byte) (note.Signer, note.Verifier) {
	skey, vkey, err := note.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{seed}, 64)), name)
	if err != nil {
		f.Fatal(err)
	}
	s, err := fnote.NewSignerForCosignatureV1(skey)
	if err != nil {
		f.Fatal(err)
	}
	v, err := fnote.NewVerifierForCosignatureV1(vkey)
	if err != nil {
		f.Fatal(err)
	}
	return s, v
}
