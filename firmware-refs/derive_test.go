package firmwarerefs

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vouch-dev/vouch/policy"
)

var update = flag.Bool("update", false, "re-derive the platform profiles from testdata/eventlogs")

// platforms are the real recorded logs the shipped profiles are derived
// from (sources and licence: testdata/README.md).
var platforms = []struct{ log, description string }{
	{"arch-linux-workstation", "Arch Linux workstation, systemd-boot, SecureBoot variable empty"},
	{"coreos-36-shielded-vm-no-secure-boot", "Fedora CoreOS 36 on a GCE Shielded VM, secure boot off"},
	{"cos-85-amd-sev", "Container-Optimized OS 85 on GCE AMD SEV"},
	{"cos-93-amd-sev", "Container-Optimized OS 93 on GCE AMD SEV"},
	{"cos-101-amd-sev", "Container-Optimized OS 101 on GCE AMD SEV"},
	{"cos-121-amd-sev", "Container-Optimized OS 121 on GCE AMD SEV"},
	{"cos-125-intel-tdx-secure-boot", "Container-Optimized OS 125 on GCE Intel TDX, secure boot on"},
	{"crypto-agile-sha256", "UEFI workstation, crypto-agile log with SHA-256 only"},
	{"cs251200tpm", "Confidential Space image 251200 (COS) on GCE AMD SEV"},
	{"debian-10", "Debian 10 on a GCE Shielded VM, SHA-1-only log, secure boot on"},
	{"gdc-host", "Google Distributed Cloud host (Intel TXT, StartupLocality 3); offline only"},
	{"glinux-alex", "gLinux workstation (StartupLocality 3); offline only"},
	{"host-gmes", "host with H-CRTM and DRTM (PCR 17+) events; offline only"},
	{"option-rom-sha1", "UEFI machine with option ROMs, SHA-1-only log, secure boot on"},
	{"rhel8-uefi", "RHEL 8 on UEFI (GCE Shielded VM) with secure boot; the platform of vouch demo"},
	{"sb-cert", "UEFI machine with secure boot and vendor db certificates"},
	{"ubuntu-1804-amd-sev", "Ubuntu 18.04 on GCE AMD SEV"},
	{"ubuntu-2104-no-dbx", "Ubuntu 21.04 on a GCE Shielded VM, empty dbx, secure boot off"},
	{"ubuntu-2104-no-secure-boot", "Ubuntu 21.04 on a GCE Shielded VM, secure boot off"},
	{"ubuntu-2404-amd-sevsnp", "Ubuntu 24.04 on GCE AMD SEV-SNP"},
	{"ubuntu-2404-intel-tdx", "Ubuntu 24.04 on GCE Intel TDX"},
}

// demoImage is the workload vouch demo runs on the rhel8-uefi platform.
var demoImage = policy.Image{Digest: "sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d", Repository: "ghcr.io/vouch-dev/demo-agent"}

// TestPlatformProfilesDerived re-derives every shipped platform profile from
// its real log and checks the file is what derivation writes: the shipped
// values are reproducible from the recorded logs. Run with -update to
// rewrite them.
func TestPlatformProfilesDerived(t *testing.T) {
	for _, pl := range platforms {
		t.Run(pl.log, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("..", "testdata", "eventlogs", pl.log+".bin"))
			if err != nil {
				t.Fatal(err)
			}
			d, err := policy.Derive(raw, policy.DeriveOptions{
				Name: pl.log, Description: pl.description, Source: "testdata/eventlogs/" + pl.log + ".bin", AutoQuirks: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			var imgs []policy.Image
			if pl.log == "rhel8-uefi" {
				imgs = append(imgs, demoImage)
			}
			var buf bytes.Buffer
			buf.WriteString("# Derived by `vouch refs derive` from a real recorded log (testdata/README.md).\n")
			for _, w := range d.Warnings {
				buf.WriteString("# warning: " + strings.ReplaceAll(w, "\n", "; ") + "\n")
			}
			if err := policy.MarshalProfileYAML(&buf, *d.Profile, imgs); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join("platforms", pl.log+".yaml")
			if pl.log == "rhel8-uefi" {
				file = pl.log + ".yaml" // the demo's platform, in the default set
			}
			if *update {
				if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			have, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run go test ./firmware-refs -run TestPlatformProfilesDerived -update)", err)
			}
			if !bytes.Equal(have, buf.Bytes()) {
				t.Fatalf("%s differs from what derivation writes; run with -update and review the diff", file)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	set, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	// The default set trusts one platform, the demo's, with secure boot on.
	if len(set.Profiles) != 1 || set.Profile("rhel8-uefi") == nil || len(set.Images) == 0 {
		t.Fatalf("default set: %d profiles, %d images; want only the demo platform and image", len(set.Profiles), len(set.Images))
	}
	all, err := LoadWithPlatforms()
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Profiles) != len(platforms) {
		t.Fatalf("%d profiles with platforms/, want %d", len(all.Profiles), len(platforms))
	}
}
