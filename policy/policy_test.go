package policy_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/policy"
)

func realLogs(t testing.TB) map[string][]byte {
	t.Helper()
	paths, _ := filepath.Glob("../testdata/eventlogs/*.bin")
	if len(paths) < 10 {
		t.Fatalf("only %d real logs in testdata", len(paths))
	}
	out := map[string][]byte{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(filepath.Base(p), ".bin")] = b
	}
	return out
}

// offlineOnly are the logs go-eventlog cannot parse the state of: the
// verifier refuses them, but they derive and check offline.
var offlineOnly = []string{"gdc-host", "glinux-alex"}

// TestDeriveCheckRoundTrip derives a profile from every real log and checks
// the same log against it: every event in a boot PCR matches, nothing is
// found, and the result is affirming.
func TestDeriveCheckRoundTrip(t *testing.T) {
	for name, log := range realLogs(t) {
		t.Run(name, func(t *testing.T) {
			d, err := policy.Derive(log, policy.DeriveOptions{Name: name, AutoQuirks: true})
			if err != nil {
				t.Fatal(err)
			}
			set, err := policy.NewRefSet([]policy.Profile{*d.Profile}, nil, policy.DenyList{})
			if err != nil {
				t.Fatal(err)
			}
			rep, err := policy.Check(set, log, nil, policy.CheckOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Status != attest.StatusAffirming || rep.Profile != name || len(rep.Findings) > 0 {
				t.Fatalf("check = %s against %q, findings %+v", rep.StatusName, rep.Profile, rep.Findings)
			}
			if (rep.StateError != "") != slices.Contains(offlineOnly, name) {
				t.Errorf("state error %q", rep.StateError)
			}
			for _, e := range rep.Events {
				if e.PCR <= 9 && e.Result != policy.ResultMatch {
					t.Errorf("event %d (PCR %d, %s) is %s", e.Num, e.PCR, e.Class, e.Result)
				}
			}
		})
	}
}

// TestShippedSetPicksEachPlatform checks every real log against the whole
// shipped set: the platform's own profile is the one that matches.
func TestShippedSetPicksEachPlatform(t *testing.T) {
	set, err := firmwarerefs.LoadWithPlatforms()
	if err != nil {
		t.Fatal(err)
	}
	for name, log := range realLogs(t) {
		rep, err := policy.Check(set, log, nil, policy.CheckOptions{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if rep.Status != attest.StatusAffirming || rep.Profile != name {
			t.Errorf("%s: %s against %q (%d considered)", name, rep.StatusName, rep.Profile, rep.Considered)
		}
	}
}

func mustProfile(t *testing.T, name string) (policy.Profile, *policy.BootFacts, []byte) {
	t.Helper()
	log, err := os.ReadFile("../testdata/eventlogs/" + name + ".bin")
	if err != nil {
		t.Fatal(err)
	}
	d, err := policy.Derive(log, policy.DeriveOptions{Name: name, AutoQuirks: true})
	if err != nil {
		t.Fatal(err)
	}
	return *d.Profile, d.Boot, log
}

func facts(b *policy.BootFacts, v policy.VerifyOptions) *policy.Facts {
	return &policy.Facts{Verify: v, PCRs: b.PCRs, Boot: b, AKDigest: make([]byte, 32),
		Workload: policy.Workload{ImageRef: "ghcr.io/acme/agent:1", ImageDigest: "sha256:" + strings.Repeat("ab", 32)}}
}

var acmeImage = policy.Image{Digest: "sha256:" + strings.Repeat("ab", 32), Repository: "ghcr.io/acme/agent"}

func TestAppraiseRules(t *testing.T) {
	base, _, log := mustProfile(t, "rhel8-uefi")
	app := base.EFIApps[1].Digest
	tests := []struct {
		name       string
		edit       func(p *policy.Profile, deny *policy.DenyList)
		want       attest.Status
		wantReason attest.Reason
		claim      func(tv attest.TrustVector) int8
		wantValue  int8
	}{
		{"as derived", func(*policy.Profile, *policy.DenyList) {}, attest.StatusAffirming, "", nil, 0},
		{"boot loader not allowed", func(p *policy.Profile, _ *policy.DenyList) {
			p.EFIApps = slices.DeleteFunc(slices.Clone(p.EFIApps), func(d policy.DigestItem) bool { return string(d.Digest) == string(app) })
		}, attest.StatusContraindicated, attest.ReasonRefsEFIApp, func(tv attest.TrustVector) int8 { return tv.Executables }, attest.ExecContraindicated},
		{"boot loader not allowed, rollout mode", func(p *policy.Profile, _ *policy.DenyList) {
			p.EFIApps = slices.DeleteFunc(slices.Clone(p.EFIApps), func(d policy.DigestItem) bool { return string(d.Digest) == string(app) })
			p.Unrecognized = policy.UnrecognizedWarning
		}, attest.StatusWarning, attest.ReasonRefsEFIApp, func(tv attest.TrustVector) int8 { return tv.Executables }, attest.ExecUnrecognized},
		{"boot loader revoked by threat intel", func(_ *policy.Profile, d *policy.DenyList) {
			d.BootDigests = policy.DigestList{{Digest: app, Note: "CVE-2020-10713 BootHole"}}
		}, attest.StatusContraindicated, attest.ReasonRefsDenied, func(tv attest.TrustVector) int8 { return tv.Executables }, attest.ExecContraindicated},
		{"db certificate revoked by threat intel", func(_ *policy.Profile, d *policy.DenyList) {
			d.Authorities = policy.EntryList{{ID: "MS_THIRD_PARTY_UEFI_CA_2011"}}
		}, attest.StatusContraindicated, attest.ReasonRefsDenied, func(tv attest.TrustVector) int8 { return tv.Configuration }, attest.ConfigUnsupportable},
		{"dbx update missing", func(_ *policy.Profile, d *policy.DenyList) {
			d.DBXRequired = policy.EntryList{{ID: "hash:" + strings.Repeat("0f", 32), Note: "2026-06 dbx"}}
		}, attest.StatusContraindicated, attest.ReasonRefsDBX, func(tv attest.TrustVector) int8 { return tv.Configuration }, attest.ConfigUnsupportable},
		{"unexpected db entry", func(p *policy.Profile, _ *policy.DenyList) {
			p.SecureBoot.DB = p.SecureBoot.DB[:1]
		}, attest.StatusContraindicated, attest.ReasonRefsSBAuthority, func(tv attest.TrustVector) int8 { return tv.Configuration }, attest.ConfigUnsupportable},
		{"kernel parameter not in the allowed list", func(p *policy.Profile, _ *policy.DenyList) {
			k := *p.KernelCmdline
			k.Allowed = slices.DeleteFunc(slices.Clone(k.Allowed), func(s string) bool { return s == "crashkernel=auto" })
			p.KernelCmdline = &k
		}, attest.StatusContraindicated, attest.ReasonRefsKernelCmdline, func(tv attest.TrustVector) int8 { return tv.Configuration }, attest.ConfigUnsupportable},
		{"kernel parameter forbidden", func(p *policy.Profile, _ *policy.DenyList) {
			p.KernelCmdline = &policy.CmdlineRules{Forbidden: []string{"crashkernel"}}
		}, attest.StatusContraindicated, attest.ReasonRefsKernelCmdline, func(tv attest.TrustVector) int8 { return tv.Configuration }, attest.ConfigUnsupportable},
		{"exact command line", func(p *policy.Profile, _ *policy.DenyList) {
			p.KernelCmdline = &policy.CmdlineRules{Exact: []string{"root=/dev/sda1 ro"}}
		}, attest.StatusContraindicated, attest.ReasonRefsKernelCmdline, func(tv attest.TrustVector) int8 { return tv.Configuration }, attest.ConfigUnsupportable},
		{"golden value differs", func(p *policy.Profile, _ *policy.DenyList) {
			p.PCRs = map[int]policy.PCRValues{5: {make([]byte, 32)}, 1: p.PCRs[1]}
		}, attest.StatusContraindicated, attest.ReasonRefsPCR, func(tv attest.TrustVector) int8 { return tv.Configuration }, attest.ConfigUnsupportable},
		{"one of several golden values", func(p *policy.Profile, _ *policy.DenyList) {
			p.PCRs = map[int]policy.PCRValues{5: {make([]byte, 32), p.PCRs[5][0]}, 1: p.PCRs[1]}
		}, attest.StatusAffirming, "", nil, 0},
		{"secure boot must be off", func(p *policy.Profile, _ *policy.DenyList) {
			p.SecureBoot.Mode = policy.SecureBootDisabled
		}, attest.StatusContraindicated, attest.ReasonRefsSecureBoot, func(tv attest.TrustVector) int8 { return tv.Configuration }, attest.ConfigUnsupportable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := base
			p.Name = "edited"
			var deny policy.DenyList
			tc.edit(&p, &deny)
			set, err := policy.NewRefSet([]policy.Profile{p}, []policy.Image{acmeImage}, deny)
			if err != nil {
				t.Fatal(err)
			}
			v := p.Verify
			b, _, err := policy.OfflineBoot(log, &v, false)
			if err != nil {
				t.Fatal(err)
			}
			res := policy.Appraise(set, facts(b, v))
			tpm := res.Submods[attest.SubmodTPM]
			if tpm.Status != tc.want {
				t.Fatalf("status %v, want %v: %+v", tpm.Status, tc.want, tpm.Reasons)
			}
			if tc.wantReason == "" {
				if len(tpm.Reasons) > 0 || tpm.Claims.Platform != "edited" {
					t.Fatalf("reasons %+v, platform %q", tpm.Reasons, tpm.Claims.Platform)
				}
				return
			}
			if tpm.Reasons[0].Reason != tc.wantReason || tc.claim(tpm.TrustVector) != tc.wantValue {
				t.Fatalf("reason %s, claim %d; want %s, %d (%+v)", tpm.Reasons[0].Reason, tc.claim(tpm.TrustVector), tc.wantReason, tc.wantValue, tpm.Reasons)
			}
			if err := res.Error(); attest.ReasonOf(err) != tc.wantReason {
				t.Fatalf("refusal %v", err)
			}
			t.Log(tpm.Reasons[0].Detail)
		})
	}
}

func TestWorkloadRules(t *testing.T) {
	p, b, _ := mustProfile(t, "rhel8-uefi")
	img := acmeImage
	img.Args = []string{"--serve"}
	img.Env = &policy.EnvRules{Allowed: []string{"LOG_LEVEL", "MODE=prod"}, Forbidden: []string{"LD_PRELOAD"}}
	set, err := policy.NewRefSet([]policy.Profile{p}, []policy.Image{img}, policy.DenyList{ImageDigests: []string{"sha256:" + strings.Repeat("cd", 32)}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		w    func(w *policy.Workload)
		want attest.Reason
	}{
		{"allowed", func(*policy.Workload) {}, ""},
		{"other args", func(w *policy.Workload) { w.Args = []string{"--debug"} }, attest.ReasonRefsWorkloadConfig},
		{"forbidden env", func(w *policy.Workload) { w.Env["LD_PRELOAD"] = "/tmp/x.so" }, attest.ReasonRefsWorkloadConfig},
		{"env value not allowed", func(w *policy.Workload) { w.Env["MODE"] = "debug" }, attest.ReasonRefsWorkloadConfig},
		{"other repository", func(w *policy.Workload) { w.ImageRef = "evil.example/agent:1" }, attest.ReasonRefsImageRef},
		{"denied image", func(w *policy.Workload) { w.ImageDigest = "sha256:" + strings.Repeat("cd", 32) }, attest.ReasonRefsDenied},
		{"unknown image", func(w *policy.Workload) { w.ImageDigest = "sha256:" + strings.Repeat("ef", 32) }, attest.ReasonRefsImageDigest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := facts(b, p.Verify)
			f.Workload.Args = []string{"--serve"}
			f.Workload.Env = map[string]string{"LOG_LEVEL": "debug", "MODE": "prod"}
			tc.w(&f.Workload)
			a := policy.Appraise(set, f).Submods[attest.SubmodWorkload]
			if tc.want == "" {
				if a.Status != attest.StatusAffirming || a.TrustVector.Configuration != attest.ConfigApproved {
					t.Fatalf("%+v", a)
				}
				return
			}
			if a.Status != attest.StatusContraindicated || len(a.Reasons) == 0 || a.Reasons[0].Reason != tc.want {
				t.Fatalf("%+v, want %s", a, tc.want)
			}
		})
	}
}

func TestKeyDenyLists(t *testing.T) {
	ak, ek := make([]byte, 32), make([]byte, 32)
	ak[0], ek[0] = 1, 2
	set, err := policy.NewRefSet(nil, nil, policy.DenyList{AKs: policy.DigestList{{Digest: ak, Note: "stolen laptop"}}, EKs: policy.DigestList{{Digest: ek}}})
	if err != nil {
		t.Fatal(err)
	}
	if d, note := set.AKDenied(ak); !d || note != "stolen laptop" {
		t.Fatalf("AKDenied = %v %q", d, note)
	}
	if d, _ := set.AKDenied(ek); d {
		t.Fatal("an EK entry denied an AK")
	}
	if d, _ := set.EKDenied(ek); !d {
		t.Fatal("EK not denied")
	}
	if _, err := policy.NewRefSet(nil, nil, policy.DenyList{AKs: policy.DigestList{{Digest: ak[:20]}}}); err == nil {
		t.Fatal("a 20-byte AK digest was accepted")
	}
}

func TestSchemaVersions(t *testing.T) {
	v1 := `schema: vouch.dev/firmware-refs/v1
profiles:
  - name: old
    verify: {bank: sha256}
    secure_boot: required
    pcrs:
      0: "` + strings.Repeat("00", 32) + `"
images:
  - digest: sha256:` + strings.Repeat("ab", 32) + `
`
	set, err := policy.LoadRefs(fstest.MapFS{"a.yaml": {Data: []byte(v1)}}, ".")
	if err != nil {
		t.Fatalf("v1 file: %v", err)
	}
	if p := set.Profile("old"); p == nil || p.SecureBoot.Mode != policy.SecureBootRequired {
		t.Fatalf("v1 profile %+v", p)
	}
	bad := map[string]string{
		"v2 field in v1":   strings.Replace(v1, "secure_boot: required", "secure_boot: {mode: required, dbx_min: [hash:"+strings.Repeat("00", 32)+"]}", 1),
		"unknown schema":   strings.Replace(v1, "/v1", "/v9", 1),
		"unknown field":    strings.Replace(v1, "verify:", "verfy:", 1),
		"bad digest size":  strings.Replace(v1, "/v1", "/v2", 1) + "profiles_extra: 1\n",
		"bad entry":        strings.Replace(strings.Replace(v1, "/v1", "/v2", 1), "secure_boot: required", "secure_boot: {mode: required, db: [not-an-entry]}", 1),
		"bad unrecognized": strings.Replace(strings.Replace(v1, "/v1", "/v2", 1), "secure_boot: required", "secure_boot: required\n    unrecognized: ignore", 1),
		"workload pcr":     strings.Replace(v1, "0: ", "13: ", 1),
	}
	for name, doc := range bad {
		if _, err := policy.LoadRefs(fstest.MapFS{"a.yaml": {Data: []byte(doc)}}, "."); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestIDIgnoresFormattingAndOrder(t *testing.T) {
	a, err := policy.LoadRefs(firmwarerefs.FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	mfs := fstest.MapFS{}
	entries, _ := firmwarerefs.FS.ReadDir(".")
	for i := len(entries) - 1; i >= 0; i-- {
		b, _ := firmwarerefs.FS.ReadFile(entries[i].Name())
		mfs["z-"+entries[i].Name()] = &fstest.MapFile{Data: append([]byte("# reformatted\n"), b...)}
	}
	b, err := policy.LoadRefs(mfs, ".")
	if err != nil {
		t.Fatal(err)
	}
	if a.ID() != b.ID() {
		t.Fatalf("ids differ: %s %s", a.ID(), b.ID())
	}
	if d := policy.Diff(a, b); len(d) != 0 {
		t.Fatalf("diff of equal sets: %v", d)
	}
}

func TestDiff(t *testing.T) {
	p, _, _ := mustProfile(t, "rhel8-uefi")
	a, _ := policy.NewRefSet([]policy.Profile{p}, nil, policy.DenyList{})
	q := p
	q.EFIApps = append(slices.Clone(p.EFIApps[1:]), policy.DigestItem{Digest: make([]byte, 32), Note: "new shim"})
	q.SecureBoot.Mode = policy.SecureBootAny
	b, _ := policy.NewRefSet([]policy.Profile{q}, []policy.Image{acmeImage}, policy.DenyList{})
	var got []string
	for _, c := range policy.Diff(a, b) {
		got = append(got, c.String())
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{"- profile rhel8-uefi: efi_apps " + p.EFIApps[0].Digest.String(), "+ profile rhel8-uefi: efi_apps " + strings.Repeat("00", 32) + " (new shim)",
		"- profile rhel8-uefi: secure_boot.mode required", "+ profile rhel8-uefi: secure_boot.mode any", "+ images: image " + acmeImage.Digest} {
		if !strings.Contains(all, want) {
			t.Errorf("diff lacks %q:\n%s", want, all)
		}
	}
}

func TestKernelParams(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"(hd0,gpt2)/boot/vmlinuz-4.18 root=UUID=x ro console=ttyS0,38400n8\x00", []string{"root=UUID=x", "ro", "console=ttyS0,38400n8"}},
		{"/vmlinuz quiet  splash", []string{"quiet", "splash"}},
		{`root=/dev/dm-0 "dm=1 vroot none ro" x`, []string{"root=/dev/dm-0", `"dm=1 vroot none ro"`, "x"}},
		{"", nil},
	}
	for _, tc := range tests {
		if got := policy.KernelParams(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("KernelParams(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
