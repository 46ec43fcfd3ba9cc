package main

import (
	"bytes"
	"context"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/internal/testenv"
	"github.com/vouch-dev/vouch/internal/tpm2tools"
)

// tools runs tpm2-tools commands against one swtpm, flushing transient
// objects after each (swtpm has no resource manager).
type tools struct {
	t    *testing.T
	tcti string
	dir  string
}

func newTools(t *testing.T) *tools {
	t.Helper()
	for _, name := range []string{"tpm2_createek", "tpm2_createak", "tpm2_quote", "tpm2_flushcontext", "tpm2_pcrextend", "tpm2_createprimary", "tpm2_create", "tpm2_load", "tpm2_readpublic"} {
		testenv.LookTool(t, name, "tpm2-tools")
	}
	sw := testenv.StartSWTPM(t, "")
	return &tools{t: t, tcti: sw.TCTI(), dir: t.TempDir()}
}

func (tl *tools) run(args ...string) string {
	tl.t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = tl.dir
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+tl.tcti)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tl.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	flush := exec.Command("tpm2_flushcontext", "-t")
	flush.Env = cmd.Env
	if b, err := flush.CombinedOutput(); err != nil {
		tl.t.Fatalf("tpm2_flushcontext -t: %v\n%s", err, b)
	}
	return string(out)
}

func (tl *tools) path(name string) string { return filepath.Join(tl.dir, name) }

// TestQuoteVerifyTPM2Tools: quotes made by tpm2_quote on swtpm, with AKs
// made by tpm2_createak (ECC and RSA, PEM and TSS files), verify with
// `vouch quote verify`; tampered, swapped, truncated and mismatched files
// are refused with a reason.
func TestQuoteVerifyTPM2Tools(t *testing.T) {
	tl := newTools(t)
	tl.run("tpm2_createek", "-c", "ek.ctx", "-G", "ecc", "-u", "ek.pub")
	tl.run("tpm2_createak", "-C", "ek.ctx", "-c", "akecc.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u", "akecc.pem", "-f", "pem", "-n", "akecc.name")
	tl.run("tpm2_readpublic", "-c", "akecc.ctx", "-o", "akecc.tss")
	tl.run("tpm2_createak", "-C", "ek.ctx", "-c", "akrsa.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa", "-u", "akrsa.tss", "-f", "tss", "-n", "akrsa.name")
	tl.run("tpm2_pcrextend", "7:sha256=0101010101010101010101010101010101010101010101010101010101010101")
	const nonce = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
	tl.run("tpm2_quote", "-c", "akecc.ctx", "-l", "sha256:0,1,2,7+sha1:0,7", "-q", nonce, "-m", "ecc.msg", "-s", "ecc.sig", "-o", "ecc.pcrs", "-g", "sha256")
	tl.run("tpm2_quote", "-c", "akrsa.ctx", "-l", "sha256:0,7,16", "-q", nonce, "-m", "rsa.msg", "-s", "rsa.sig", "-o", "rsa.pcrs", "-g", "sha256")
	tl.run("tpm2_quote", "-c", "akecc.ctx", "-l", "sha256:0,1,2,7+sha1:0,7", "-q", nonce, "-m", "values.msg", "-s", "values.sig", "-o", "values.pcrs", "-F", "values", "-g", "sha256")
	tl.run("tpm2_quote", "-c", "akecc.ctx", "-l", "sha256:0,1,2", "-q", nonce, "-m", "other.msg", "-s", "other.sig", "-o", "other.pcrs", "-g", "sha256")
	tl.run("tpm2_pcrextend", "7:sha256=0202020202020202020202020202020202020202020202020202020202020202")
	tl.run("tpm2_quote", "-c", "akecc.ctx", "-l", "sha256:0,1,2,7+sha1:0,7", "-q", nonce, "-m", "later.msg", "-s", "later.sig", "-o", "later.pcrs", "-g", "sha256")
	// An unrestricted signing key can quote too; it is not an AK.
	tl.run("tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", "prim.ctx")
	tl.run("tpm2_create", "-C", "prim.ctx", "-G", "ecc:ecdsa-sha256", "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign", "-u", "plain.pubdata", "-r", "plain.priv")
	tl.run("tpm2_load", "-C", "prim.ctx", "-u", "plain.pubdata", "-r", "plain.priv", "-c", "plain.ctx")
	tl.run("tpm2_readpublic", "-c", "plain.ctx", "-o", "plain.tss")
	tl.run("tpm2_quote", "-c", "plain.ctx", "-l", "sha256:0", "-q", nonce, "-m", "plain.msg", "-s", "plain.sig", "-o", "plain.pcrs", "-g", "sha256")

	truncate := func(name string, n int) string {
		b, err := os.ReadFile(tl.path(name))
		if err != nil {
			t.Fatal(err)
		}
		p := tl.path("trunc-" + name)
		if err := os.WriteFile(p, b[:len(b)-n], 0o600); err != nil {
			t.Fatal(err)
		}
		return "trunc-" + name
	}
	ok := []struct {
		name, ak, msg, sig, pcrs string
		want                     []string
	}{
		{"ecc pem", "akecc.pem", "ecc.msg", "ecc.sig", "ecc.pcrs", []string{"sha256", "sha1"}},
		{"ecc tss", "akecc.tss", "ecc.msg", "ecc.sig", "ecc.pcrs", []string{"sha256", "sha1"}},
		{"rsa tss", "akrsa.tss", "rsa.msg", "rsa.sig", "rsa.pcrs", []string{"sha256"}},
		{"pcrs -F values", "akecc.pem", "values.msg", "values.sig", "values.pcrs", []string{"sha256", "sha1"}},
	}
	for _, c := range ok {
		t.Run(c.name, func(t *testing.T) {
			out, err := runVouch(t, "quote", "verify", "--json", "--ak-pub", tl.path(c.ak), "--msg", tl.path(c.msg), "--sig", tl.path(c.sig), "--pcrs", tl.path(c.pcrs), "--nonce", nonce)
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			var res struct {
				Verified bool                         `json:"verified"`
				PCRs     map[string]map[string]string `json:"pcrs"`
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil || !res.Verified {
				t.Fatalf("output %q: %v", out, err)
			}
			for _, bank := range c.want {
				if len(res.PCRs[bank]) == 0 {
					t.Errorf("no %s PCRs printed", bank)
				}
			}
			if c.name == "ecc pem" && res.PCRs["sha256"]["7"] != "5c85955f709283ecce2b74f1b1552918819f390911816e7bb466805a38ab87f3" {
				t.Errorf("sha256 PCR 7 = %s, want the value of one extension of 01…01", res.PCRs["sha256"]["7"])
			}
		})
	}
	bad := []struct {
		name, ak, msg, sig, pcrs, nonce, hash string
		want                                  string
	}{
		{"nonce mismatch", "akecc.pem", "ecc.msg", "ecc.sig", "ecc.pcrs", "a1b2c3d4e5f60718293a4b5c6d7e8f91", "", "nonce mismatch"},
		{"other AK", "akrsa.tss", "ecc.msg", "ecc.sig", "ecc.pcrs", nonce, "", "AK is RSA"},
		{"signature of another quote", "akecc.pem", "ecc.msg", "later.sig", "ecc.pcrs", nonce, "", "does not verify"},
		{"msg and sig swapped", "akecc.pem", "ecc.sig", "ecc.msg", "ecc.pcrs", nonce, "", "signature file"},
		{"truncated msg", "akecc.pem", truncate("ecc.msg", 3), "ecc.sig", "ecc.pcrs", nonce, "", "does not verify"},
		{"truncated sig", "akecc.pem", "ecc.msg", truncate("ecc.sig", 5), "ecc.pcrs", nonce, "", "signature file"},
		{"truncated pcrs", "akecc.pem", "ecc.msg", "ecc.sig", truncate("ecc.pcrs", 40), nonce, "", "PCR file"},
		{"pcrs for other PCRs", "akecc.pem", "ecc.msg", "ecc.sig", "other.pcrs", nonce, "", "other PCRs than the quote selects"},
		{"pcrs of a later quote", "akecc.pem", "ecc.msg", "ecc.sig", "later.pcrs", nonce, "", "PCR digest"},
		{"pcrs swapped with msg", "akecc.pem", "ecc.msg", "ecc.sig", "ecc.msg", nonce, "", "PCR file"},
		{"wrong hash", "akecc.pem", "ecc.msg", "ecc.sig", "ecc.pcrs", nonce, "sha1", "uses hash sha256"},
		{"ak file is a quote", "ecc.msg", "ecc.msg", "ecc.sig", "ecc.pcrs", nonce, "", "AK file"},
		{"unrestricted key", "plain.tss", "plain.msg", "plain.sig", "plain.pcrs", nonce, "", "not a restricted"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"quote", "verify", "--ak-pub", tl.path(c.ak), "--msg", tl.path(c.msg), "--sig", tl.path(c.sig), "--pcrs", tl.path(c.pcrs), "--nonce", c.nonce}
			if c.hash != "" {
				args = append(args, "--hash", c.hash)
			}
			out, err := runVouch(t, args...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("verify = %v (output %q), want an error containing %q", err, out, c.want)
			}
		})
	}
}

// TestQuoteMatchesEventlogReplay: a quote of swtpm after replaying a real
// firmware log verifies with `vouch quote verify`, and its PCRs 0-9 are
// what `vouch eventlog replay` computes from that log; another log's replay
// differs from the quote (the check a verifier makes).
func TestQuoteMatchesEventlogReplay(t *testing.T) {
	sw := testenv.StartSWTPM(t, "")
	ctx := context.Background()
	tpm, err := agentside.Open(ctx, sw.Spec, agentside.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	logFile := "../../testdata/eventlogs/rhel8-uefi.bin"
	raw, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := tpm.Boot(raw); err != nil {
		t.Fatal(err)
	}
	nonce := []byte("fresh nonce 0123")
	q, err := tpm.Quote(nonce, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tss, err := tpm2tools.MarshalAKPublicTSS(q.AKPublic)
	if err != nil {
		t.Fatal(err)
	}
	b := tpm2tools.Bank{Hash: tpm2.TPMAlgSHA256}
	for i := range 24 {
		b.PCRs, b.Values = append(b.PCRs, i), append(b.Values, q.PCRs[i])
	}
	pcrs, err := tpm2tools.MarshalPCRs([]tpm2tools.Bank{b})
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"ak.pub": tss, "q.msg": q.Message, "q.sig": q.Signature, "q.pcrs": pcrs} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := runVouch(t, "quote", "verify", "--json", "--ak-pub", filepath.Join(dir, "ak.pub"), "--msg", filepath.Join(dir, "q.msg"),
		"--sig", filepath.Join(dir, "q.sig"), "--pcrs", filepath.Join(dir, "q.pcrs"), "--nonce", hex.EncodeToString(nonce))
	if err != nil {
		t.Fatalf("quote verify: %v", err)
	}
	var res struct {
		PCRs map[string]map[string]string `json:"pcrs"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	replayed := replayOf(t, logFile)["sha256"]
	for idx, v := range replayed {
		if res.PCRs["sha256"][idx] != v {
			t.Errorf("PCR %s: quoted %s, replayed %s", idx, res.PCRs["sha256"][idx], v)
		}
	}
	other := replayOf(t, "../../testdata/eventlogs/ubuntu-2404-amd-sevsnp.bin")["sha256"]
	if other["0"] == res.PCRs["sha256"]["0"] && other["4"] == res.PCRs["sha256"]["4"] {
		t.Error("another machine's log replays to the quoted PCRs")
	}
}
