package agentside

import (
	"bytes"
	"crypto"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/server"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/vouch-dev/vouch/attest"
)

// TestBootReplayVerifies replays real firmware logs into the simulator and
// checks, with go-tpm-tools' own verifier, that the quoted PCRs and the log
// agree and that the log parses into a machine state.
func TestBootReplayVerifies(t *testing.T) {
	sbLoose := server.VerifyOpts{AllowEFIAppBeforeCallingEvent: true, AllowEmptySBVar: true}
	tests := []struct {
		log  string
		opts server.VerifyOpts
		// untouched is a bank the log has no digests for: it must stay zero.
		untouched crypto.Hash
	}{
		{log: "ubuntu-2404-amd-sevsnp.bin"},
		{log: "ubuntu-2404-intel-tdx.bin"},
		{log: "rhel8-uefi.bin"},
		{log: "cos-85-amd-sev.bin"},
		{log: "cos-93-amd-sev.bin"},
		{log: "cos-101-amd-sev.bin"},
		{log: "cos-121-amd-sev.bin"},
		{log: "cos-125-intel-tdx-secure-boot.bin"},
		{log: "cs251200tpm.bin"},
		{log: "ubuntu-2104-no-dbx.bin"},
		{log: "ubuntu-2104-no-secure-boot.bin"},
		{log: "coreos-36-shielded-vm-no-secure-boot.bin"},
		{log: "debian-10.bin", opts: server.VerifyOpts{AllowSHA1: true}, untouched: crypto.SHA256},
		{log: "arch-linux-workstation.bin", opts: sbLoose, untouched: crypto.SHA384},
		{log: "sb-cert.bin", opts: sbLoose},
		{log: "crypto-agile-sha256.bin", opts: sbLoose, untouched: crypto.SHA1},
	}
	nonce := bytes.Repeat([]byte{7}, attest.NonceSize)
	req := &attest.Request{Audience: "vouch-demo"}
	for _, tc := range tests {
		t.Run(tc.log, func(t *testing.T) {
			tpm, agent := bootedAgent(t, tc.log, Workload{ImageRef: "ghcr.io/acme/agent:1", ImageDigest: testDigest})
			if tc.untouched != 0 {
				v, err := tpm.ReadPCR(0, tc.untouched)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(v, make([]byte, len(v))) {
					t.Errorf("PCR 0 of the %v bank = %x, want zero: the log has no %v digests", tc.untouched, v, tc.untouched)
				}
			}
			ev, err := agent.Evidence(nonce, req)
			if err != nil {
				t.Fatalf("Evidence: %v", err)
			}
			att := decodeAttestation(t, ev)
			opts := tc.opts
			opts.Nonce = attest.Binding(ev.Nonce, ev.AgentKey, ev.Request)
			opts.TrustedAKs = []crypto.PublicKey{agent.AKPublic()}
			ms, err := server.VerifyAttestation(att, opts)
			if err != nil {
				t.Fatalf("VerifyAttestation: %v", err)
			}
			if len(ms.GetPlatform().GetScrtmVersionId()) == 0 && ms.GetPlatform().GetFirmware() == nil && len(ms.GetRawEvents()) == 0 {
				t.Errorf("machine state has no platform and no events: %v", ms)
			}
		})
	}
}

// TestBootRefusesUnreplayable checks that logs a locality-0 simulator cannot
// reproduce are refused with the real reason, and leave the PCRs alone.
func TestBootRefusesUnreplayable(t *testing.T) {
	tests := []struct {
		log  string
		want string
	}{
		{"glinux-alex.bin", "locality 3"},
		{"gdc-host.bin", "locality 3"},
		{"host-gmes.bin", "H-CRTM"},
		{"option-rom-sha1.bin", "PCR 13"},
	}
	for _, tc := range tests {
		t.Run(tc.log, func(t *testing.T) {
			tpm := openSim(t, "")
			err := tpm.Boot(readEventLog(t, tc.log))
			if !errors.Is(err, ErrUnreplayable) {
				t.Fatalf("Boot = %v, want ErrUnreplayable", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Boot error %q does not name the cause %q", err, tc.want)
			}
			for pcr := 0; pcr < 8; pcr++ {
				v, err := tpm.ReadPCR(pcr, crypto.SHA256)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(v, make([]byte, len(v))) {
					t.Errorf("PCR %d = %x after a refused boot, want zero", pcr, v)
				}
			}
			if len(tpm.FirmwareLog()) != 0 {
				t.Error("a refused log became the firmware log")
			}
		})
	}
}

// TestCheckReplayablePCRAbove16 covers the dynamic-root-of-trust refusal,
// which host-gmes.bin reaches only after its H-CRTM event.
func TestCheckReplayablePCRAbove16(t *testing.T) {
	evs := tcgEvents(t, "host-gmes.bin")
	var drtm []int
	for i, ev := range evs {
		if ev.Index > maxBootPCR {
			drtm = append(drtm, i)
		}
	}
	if len(drtm) == 0 {
		t.Fatal("host-gmes.bin has no event above PCR 16")
	}
	err := checkReplayable(evs[drtm[0]:])
	if !errors.Is(err, ErrUnreplayable) || !strings.Contains(err.Error(), "dynamic root of trust") {
		t.Errorf("checkReplayable(PCR %d event) = %v, want a dynamic-root-of-trust refusal", evs[drtm[0]].Index, err)
	}
}

func TestBootErrors(t *testing.T) {
	good := readEventLog(t, "rhel8-uefi.bin")
	tests := []struct {
		name    string
		prepare func(*TPM) error
		log     []byte
		want    string
	}{
		{name: "empty", log: nil, want: "empty"},
		{name: "garbage", log: []byte("not an event log at all, really not"), want: "cannot be parsed"},
		{name: "truncated", log: good[:len(good)/2], want: "cannot be parsed"},
		{name: "too large", log: make([]byte, MaxFirmwareLogSize+1), want: "at most"},
		{name: "twice", prepare: func(tp *TPM) error { return tp.Boot(good) }, log: good, want: "already booted"},
		{name: "after measure", prepare: func(tp *TPM) error {
			return tp.MeasureWorkload(Workload{ImageRef: "r", ImageDigest: testDigest})
		}, log: good, want: "already measured"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tpm := openSim(t, "")
			if tc.prepare != nil {
				if err := tc.prepare(tpm); err != nil {
					t.Fatal(err)
				}
			}
			err := tpm.Boot(tc.log)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Boot = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestBootExtendsAllBanks checks that a log with SHA-1, SHA-256 and SHA-384
// digests lands in every bank, by replaying it against each bank's PCRs with
// go-tpm-tools pinned to that bank.
func TestBootExtendsAllBanks(t *testing.T) {
	_, agent := bootedAgent(t, "ubuntu-2404-amd-sevsnp.bin", Workload{ImageRef: "r", ImageDigest: testDigest})
	nonce := bytes.Repeat([]byte{1}, attest.NonceSize)
	ev, err := agent.Evidence(nonce, &attest.Request{Audience: "a"})
	if err != nil {
		t.Fatal(err)
	}
	att := decodeAttestation(t, ev)
	for _, alg := range []tpm2.Algorithm{tpm2.AlgSHA1, tpm2.AlgSHA256, tpm2.AlgSHA384} {
		_, err := server.VerifyAttestation(att, server.VerifyOpts{
			Nonce:      attest.Binding(ev.Nonce, ev.AgentKey, ev.Request),
			TrustedAKs: []crypto.PublicKey{agent.AKPublic()},
			HashAlgo:   alg,
			AllowSHA1:  true,
		})
		if err != nil {
			t.Errorf("VerifyAttestation pinned to %v: %v", alg, err)
		}
	}
}
