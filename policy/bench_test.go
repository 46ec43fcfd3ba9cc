package policy_test

import (
	"os"
	"testing"

	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/policy"
)

// benchBoot classifies a real log the way the verifier does after a
// verified quote, and returns the verification options it needs.
func benchBoot(b *testing.B, name string) ([]byte, policy.VerifyOptions) {
	log, err := os.ReadFile("../testdata/eventlogs/" + name + ".bin")
	if err != nil {
		b.Fatal(err)
	}
	v := policy.VerifyOptions{}
	if _, _, err := policy.OfflineBoot(log, &v, true); err != nil {
		b.Fatal(err)
	}
	return log, v
}

// BenchmarkAppraise measures policy.Appraise with the full shipped reference
// set loaded (21 profiles): "first" is an attestation of a boot the verifier
// has not appraised under this set (classification of every event, profile
// ranking and event-by-event appraisal); "repeat" is a further attestation
// of the same boot (the verifier caches classified boots per machine and
// boot, and the boot appraisal per set); "no-match" appraises a boot
// against every profile and finds none (the worst case).
func BenchmarkAppraise(b *testing.B) {
	set, err := firmwarerefs.LoadWithPlatforms()
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"rhel8-uefi", "ubuntu-2404-intel-tdx", "cos-125-intel-tdx-secure-boot"} {
		log, v := benchBoot(b, name)
		vv := v
		boot, _, _ := policy.OfflineBoot(log, &vv, false)
		state, err := policy.ExtractState(log, boot.Bank, boot.PCRs, v)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name+"/first", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				bf := policy.NewBootFacts(boot.Bank, boot.PCRs, state.GetRawEvents(), state)
				if r := policy.Appraise(set, facts(bf, v)); r.Profile != name {
					b.Fatalf("profile %q", r.Profile)
				}
			}
		})
		b.Run(name+"/repeat", func(b *testing.B) {
			b.ReportAllocs()
			f := facts(boot, v)
			for b.Loop() {
				if r := policy.Appraise(set, f); r.Profile != name {
					b.Fatalf("profile %q", r.Profile)
				}
			}
		})
	}
	b.Run("no-match", func(b *testing.B) {
		log, v := benchBoot(b, "rhel8-uefi")
		boot, _, _ := policy.OfflineBoot(log, &v, false)
		state, err := policy.ExtractState(log, boot.Bank, boot.PCRs, v)
		if err != nil {
			b.Fatal(err)
		}
		pcrs := map[int][]byte{1: make([]byte, 32), 5: make([]byte, 32)}
		b.ReportAllocs()
		for b.Loop() {
			bf := policy.NewBootFacts(boot.Bank, pcrs, state.GetRawEvents(), state)
			if r := policy.Appraise(set, facts(bf, v)); r.Profile != "" {
				b.Fatalf("profile %q", r.Profile)
			}
		}
	})
}
