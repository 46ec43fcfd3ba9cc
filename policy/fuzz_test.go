package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

// FuzzReplayEventLog feeds arbitrary bytes to the firmware event-log replay
// that derivation and `vouch eventlog replay` use. It must never panic and
// must stay within its bounds; real logs seed it.
func FuzzReplayEventLog(f *testing.F) {
	logs, _ := filepath.Glob("../testdata/eventlogs/*.bin")
	for _, l := range logs[:min(4, len(logs))] {
		b, err := os.ReadFile(l)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := ReplayEventLog(raw)
		if err != nil {
			return
		}
		for bank, pcrs := range r {
			size := bank.CryptoHash().Size()
			for idx, v := range pcrs {
				if len(v) != size {
					t.Fatalf("bank %s PCR %d: %d bytes, want %d", bank, idx, len(v), size)
				}
			}
		}
	})
}

// FuzzLoadRefs feeds arbitrary YAML to the reference-value loader, the
// policy input operators write. Whatever it accepts must be valid.
func FuzzLoadRefs(f *testing.F) {
	seed, err := os.ReadFile("../firmware-refs/rhel8-uefi.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte("schema: vouch.dev/firmware-refs/v1\nimages: [{digest: 'sha256:" + "00000000000000000000000000000000000000000000000000000000000000000" + "'}]\n"))
	f.Add([]byte("schema: x\n"))
	if b, err := os.ReadFile("../firmware-refs/platforms/ubuntu-2404-amd-sevsnp.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("schema: vouch.dev/firmware-refs/v2\nprofiles: [{name: a, secure_boot: {mode: required}, efi_apps: [" + strings.Repeat("ab", 32) + "], kernel_cmdline: {forbidden: [init]}, pcrs: {1: [" + strings.Repeat("00", 32) + "]}}]\ndeny: {ak_keys: [{digest: " + strings.Repeat("11", 32) + ", note: x}]}\n"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		set, err := LoadRefs(fstest.MapFS{"refs.yaml": {Data: doc}}, ".")
		if err != nil {
			return
		}
		if set.ID() == "" {
			t.Fatal("accepted set has no id")
		}
		for _, p := range set.Profiles {
			if (len(p.PCRs) == 0 && !p.hasEventRules()) || bankSizes[p.Verify.Bank] == 0 || p.compiled() == nil {
				t.Fatalf("accepted invalid profile %+v", p)
			}
		}
	})
}

// FuzzCheck feeds arbitrary bytes as a firmware log to the offline check
// (replay, state extraction, event classification, appraisal against the
// shipped profiles). Event data is attacker-chosen even in a log whose
// digests replay, so classification must never panic.
func FuzzCheck(f *testing.F) {
	set, err := LoadRefs(os.DirFS("../firmware-refs"), ".", "platforms")
	if err != nil {
		f.Fatal(err)
	}
	logs, _ := filepath.Glob("../testdata/eventlogs/*.bin")
	for _, l := range logs[:min(6, len(logs))] {
		b, err := os.ReadFile(l)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		rep, err := Check(set, raw, nil, CheckOptions{})
		if err != nil {
			return
		}
		if rep.StatusName == "" {
			t.Fatal("report without status")
		}
	})
}
