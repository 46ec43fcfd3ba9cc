package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vouch-dev/vouch/internal/testenv"
)

// TestQuoteExportTPM2Tools: the quote vouch-agent exports is accepted by
// tpm2_checkquote (tpm2-tools), on the simulator and on swtpm, with the AK
// as PEM and as TSS file; changed files are refused by tpm2_checkquote too,
// so the check is not vacuous.
func TestQuoteExportTPM2Tools(t *testing.T) {
	checkquote := testenv.LookTool(t, "tpm2_checkquote", "tpm2-tools")
	specs := map[string]string{"sim": "sim", "swtpm": testenv.StartSWTPM(t, "").Spec}
	for name, spec := range specs {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "export")
			code, out, errOut := runCmd(t, "quote", "--tpm", spec, "--state", t.TempDir(), "--boot-log", bootLog,
				"--nonce", "00112233445566778899aabbccddeeff", "--export-tpm2-tools", dir)
			if code != exitOK {
				t.Fatalf("quote exit %d: %s %s", code, out, errOut)
			}
			if !strings.Contains(out, "tpm2_checkquote -u") {
				t.Errorf("output does not say how to check: %q", out)
			}
			p := func(n string) string { return filepath.Join(dir, n) }
			check := func(ak, msg, sig, pcrs, nonce string) (string, error) {
				b, err := exec.Command(checkquote, "-u", ak, "-m", msg, "-s", sig, "-f", pcrs, "-g", "sha256", "-q", nonce).CombinedOutput()
				return string(b), err
			}
			for _, ak := range []string{exportAKPEM, exportAKTSS} {
				if out, err := check(p(ak), p(exportMsg), p(exportSig), p(exportPCRs), "00112233445566778899aabbccddeeff"); err != nil {
					t.Errorf("tpm2_checkquote with %s refuses our quote: %v\n%s", ak, err, out)
				} else if !strings.Contains(out, "sha256") {
					t.Errorf("tpm2_checkquote printed no sha256 PCRs: %s", out)
				}
			}
			// PCR 0 is not zero: the boot log was replayed before quoting.
			out2, _ := check(p(exportAKPEM), p(exportMsg), p(exportSig), p(exportPCRs), "00112233445566778899aabbccddeeff")
			if strings.Contains(out2, "\n    0 : 0x0000000000000000000000000000000000000000000000000000000000000000\n") {
				t.Errorf("PCR 0 is zero after the boot replay:\n%s", out2)
			}
			// The oracle refuses what it should.
			if _, err := check(p(exportAKPEM), p(exportMsg), p(exportSig), p(exportPCRs), "00112233445566778899aabbccddee00"); err == nil {
				t.Error("tpm2_checkquote accepted a wrong nonce")
			}
			pcrs, err := os.ReadFile(p(exportPCRs))
			if err != nil {
				t.Fatal(err)
			}
			pcrs[140] ^= 1 // first byte of the first PCR value
			if err := os.WriteFile(p("edited.pcrs"), pcrs, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := check(p(exportAKPEM), p(exportMsg), p(exportSig), p("edited.pcrs"), "00112233445566778899aabbccddeeff"); err == nil {
				t.Error("tpm2_checkquote accepted an edited PCR file")
			}
		})
	}
}
