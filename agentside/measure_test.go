package agentside

import (
	"bytes"
	"crypto"
	"strings"
	"testing"

	gecel "github.com/google/go-eventlog/cel"
	"github.com/google/go-tpm-tools/cel"
)

func TestWorkloadValidate(t *testing.T) {
	ok := Workload{ImageRef: "ghcr.io/acme/agent:1", ImageDigest: testDigest}
	with := func(f func(*Workload)) Workload {
		w := ok
		f(&w)
		return w
	}
	many := func(n int) []string { return make([]string, n) }
	manyEnv := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m["V"+strings.Repeat("_", i)] = ""
		}
		return m
	}
	tests := []struct {
		name string
		w    Workload
		want string // "" = valid
	}{
		{"minimal", ok, ""},
		{"args and env", with(func(w *Workload) { w.Args = []string{"a", ""}; w.Env = map[string]string{"A_1": "x=y", "_b": ""} }), ""},
		{"empty ref", with(func(w *Workload) { w.ImageRef = "" }), "image reference is empty"},
		{"long ref", with(func(w *Workload) { w.ImageRef = strings.Repeat("a", MaxImageRefLen+1) }), "at most"},
		{"ref with space", with(func(w *Workload) { w.ImageRef = "a b" }), "spaces"},
		{"ref with newline", with(func(w *Workload) { w.ImageRef = "a\nb" }), "control"},
		{"ref not utf-8", with(func(w *Workload) { w.ImageRef = "a\xffb" }), "UTF-8"},
		{"empty digest", with(func(w *Workload) { w.ImageDigest = "" }), `start with "sha256:"`},
		{"sha512 digest", with(func(w *Workload) { w.ImageDigest = "sha512:" + strings.Repeat("a", 128) }), `start with "sha256:"`},
		{"upper-case hex", with(func(w *Workload) { w.ImageDigest = strings.ToUpper(testDigest[:9]) + testDigest[9:] }), "start with"},
		{"upper-case digits", with(func(w *Workload) { w.ImageDigest = "sha256:" + strings.Repeat("A", 64) }), "lower-case hex"},
		{"short digest", with(func(w *Workload) { w.ImageDigest = testDigest[:70] }), "64 hex digits"},
		{"long digest", with(func(w *Workload) { w.ImageDigest = testDigest + "0" }), "64 hex digits"},
		{"non-hex digest", with(func(w *Workload) { w.ImageDigest = "sha256:" + strings.Repeat("g", 64) }), "lower-case hex"},
		{"too many args", with(func(w *Workload) { w.Args = many(MaxArgs + 1) }), "arguments"},
		{"long arg", with(func(w *Workload) { w.Args = []string{strings.Repeat("a", MaxArgLen+1)} }), "argument 0"},
		{"arg not utf-8", with(func(w *Workload) { w.Args = []string{"\xff"} }), "UTF-8"},
		{"env name digit", with(func(w *Workload) { w.Env = map[string]string{"1A": "x"} }), "malformed env name"},
		{"env name dash", with(func(w *Workload) { w.Env = map[string]string{"A-B": "x"} }), "malformed env name"},
		{"env name empty", with(func(w *Workload) { w.Env = map[string]string{"": "x"} }), "malformed env name"},
		{"env value not utf-8", with(func(w *Workload) { w.Env = map[string]string{"A": "\xff"} }), "non-utf8"},
		{"env too long", with(func(w *Workload) { w.Env = map[string]string{"A": strings.Repeat("x", MaxEnvLen)} }), "at most"},
		{"too many env", with(func(w *Workload) { w.Env = manyEnv(MaxEnv + 1) }), "environment variables"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.w.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestMeasureWorkload(t *testing.T) {
	tpm := openSim(t, "")
	if err := tpm.MeasureWorkload(Workload{ImageRef: "", ImageDigest: testDigest}); err == nil {
		t.Fatal("an invalid workload was measured")
	}
	if got := tpm.CanonicalEventLog(); got != nil {
		t.Fatalf("a refused workload left a CEL of %d bytes", len(got))
	}
	w := Workload{ImageRef: "r", ImageDigest: testDigest, Args: []string{"x"}, Env: map[string]string{"B": "2", "A": "1"}}
	if err := tpm.MeasureWorkload(w); err != nil {
		t.Fatal(err)
	}
	if err := tpm.MeasureWorkload(w); err == nil || !strings.Contains(err.Error(), "already measured") {
		t.Errorf("second MeasureWorkload = %v, want an already-measured error", err)
	}
	// The records, in order, and PCR 13 of every bank is their replay.
	log, err := gecel.DecodeToCEL(bytes.NewBuffer(tpm.CanonicalEventLog()))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		typ     cel.CosType
		content string
	}{
		{cel.ImageRefType, "r"}, {cel.ImageDigestType, testDigest}, {cel.ArgType, "x"},
		{cel.EnvVarType, "A=1"}, {cel.EnvVarType, "B=2"}, {cel.LaunchSeparatorType, ""},
	}
	recs := log.Records()
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d", len(recs), len(want))
	}
	for i, r := range recs {
		tlv, err := cel.ParseToCosTlv(r.Content)
		if err != nil {
			t.Fatal(err)
		}
		if r.Index != cel.CosEventPCR || tlv.EventType != want[i].typ || string(tlv.EventContent) != want[i].content {
			t.Errorf("record %d = PCR %d %v %q, want PCR 13 %v %q", i, r.Index, tlv.EventType, tlv.EventContent, want[i].typ, want[i].content)
		}
	}
	for _, h := range tpm.Banks() {
		pcr, err := tpm.ReadPCR(cel.CosEventPCR, h)
		if err != nil {
			t.Fatal(err)
		}
		replay := make([]byte, h.Size())
		for _, r := range recs {
			hh := h.New()
			hh.Write(replay)
			hh.Write(r.Digests[h])
			replay = hh.Sum(nil)
		}
		if !bytes.Equal(pcr, replay) {
			t.Errorf("PCR 13 (%v) = %x, replay of the CEL = %x", h, pcr, replay)
		}
	}
	if len(tpm.Banks()) < 2 || !containsHash(tpm.Banks(), crypto.SHA256) {
		t.Errorf("simulator banks = %v, want SHA-256 among several", tpm.Banks())
	}
}

func containsHash(hs []crypto.Hash, h crypto.Hash) bool {
	for _, x := range hs {
		if x == h {
			return true
		}
	}
	return false
}
