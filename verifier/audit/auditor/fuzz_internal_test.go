package auditor

import (
	"encoding/binary"
	"testing"
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
