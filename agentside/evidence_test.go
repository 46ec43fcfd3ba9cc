package agentside

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/GoogleCloudPlatform/confidential-space/server/extract"
	gattest "github.com/google/go-attestation/attest"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm-tools/server"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/vouch-dev/vouch/attest"
)

// TestEvidenceIndependentChecks verifies evidence with code that is not ours:
// go-tpm-tools' attestation verifier, go-attestation's key certification
// verifier, and Confidential Space's CEL extractor.
func TestEvidenceIndependentChecks(t *testing.T) {
	w := Workload{
		ImageRef:    "ghcr.io/acme/agent:1.4",
		ImageDigest: testDigest,
		Args:        []string{"/agent", "--serve", ""},
		Env:         map[string]string{"MODE": "prod", "_X1": "a=b", "EMPTY": ""},
	}
	_, agent := bootedAgent(t, "ubuntu-2404-amd-sevsnp.bin", w)
	nonce := bytes.Repeat([]byte{0xa5}, attest.NonceSize)
	req := &attest.Request{Audience: "https://docs.example", Intent: "summarize", Resources: []string{`Document::"customer-A/*"`}, Delegation: "d-1"}
	ev, err := agent.Evidence(nonce, req)
	if err != nil {
		t.Fatal(err)
	}

	// The evidence encodes and decodes under attest's strict rules.
	enc, err := attest.EncodeEvidence(ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.DecodeEvidence(enc); err != nil {
		t.Fatalf("DecodeEvidence: %v", err)
	}
	gotReq, err := attest.DecodeRequest(ev.Request)
	if err != nil || gotReq.Audience != req.Audience || gotReq.Delegation != req.Delegation {
		t.Fatalf("request round trip = %+v, %v", gotReq, err)
	}
	binding := attest.Binding(nonce, ev.AgentKey, ev.Request)

	// 1. go-tpm-tools: quotes over the binding by the AK, firmware log replay.
	att := decodeAttestation(t, ev)
	if _, err := server.VerifyAttestation(att, server.VerifyOpts{Nonce: binding, TrustedAKs: []crypto.PublicKey{agent.AKPublic()}}); err != nil {
		t.Fatalf("VerifyAttestation: %v", err)
	}
	wrong := bytes.Clone(binding)
	wrong[0] ^= 1
	if _, err := server.VerifyAttestation(att, server.VerifyOpts{Nonce: wrong, TrustedAKs: []crypto.PublicKey{agent.AKPublic()}}); err == nil {
		t.Fatal("VerifyAttestation accepted another nonce")
	}

	// 2. go-attestation: the agent key certification by the AK.
	cp := gattest.CertificationParameters{Public: ev.AgentKey, CreateAttestation: ev.CertifyInfo, CreateSignature: ev.CertifySig}
	if err := cp.Verify(gattest.VerifyOpts{Public: agent.AKPublic(), Hash: crypto.SHA256}); err != nil {
		t.Fatalf("CertificationParameters.Verify: %v", err)
	}
	ad, err := tpm2.DecodeAttestationData(ev.CertifyInfo)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ad.ExtraData, binding) {
		t.Errorf("certify extraData = %x, want the binding %x", ad.ExtraData, binding)
	}
	pub, err := tpm2.DecodePublic(ev.AgentKey)
	if err != nil {
		t.Fatal(err)
	}
	wantAttrs := tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin | tpm2.FlagUserWithAuth | tpm2.FlagSign
	if pub.Attributes != wantAttrs || pub.NameAlg != tpm2.AlgSHA256 || pub.ECCParameters.CurveID != tpm2.CurveNISTP256 {
		t.Errorf("agent key: attributes %v, name alg %v, curve %v", pub.Attributes, pub.NameAlg, pub.ECCParameters.CurveID)
	}
	pk, err := pub.Key()
	if err != nil {
		t.Fatal(err)
	}
	if !pk.(*ecdsa.PublicKey).Equal(agent.PublicKey()) {
		t.Error("the certified public area is not the agent's key")
	}

	// 3. Confidential Space: the CEL replays against the quoted SHA-256 PCR 13.
	bank := quotedBank(t, att, crypto.SHA256, tpmpb.HashAlgo_SHA256)
	cos, err := extract.ParseCOSCEL(att.GetCanonicalEventLog(), bank, extract.Options{})
	if err != nil {
		t.Fatalf("ParseCOSCEL: %v", err)
	}
	c := cos.GetContainer()
	if c.GetImageDigest() != w.ImageDigest || c.GetImageReference() != w.ImageRef {
		t.Errorf("CEL container = %q %q, want %q %q", c.GetImageReference(), c.GetImageDigest(), w.ImageRef, w.ImageDigest)
	}
	if strings.Join(c.GetArgs(), "\x00") != strings.Join(w.Args, "\x00") {
		t.Errorf("CEL args = %q, want %q", c.GetArgs(), w.Args)
	}
	if len(c.GetEnvVars()) != len(w.Env) {
		t.Errorf("CEL env = %v, want %v", c.GetEnvVars(), w.Env)
	}
	for k, v := range w.Env {
		if c.GetEnvVars()[k] != v {
			t.Errorf("CEL env %s = %q, want %q", k, c.GetEnvVars()[k], v)
		}
	}
	// The SHA-1 and SHA-384 banks carry the same workload.
	for _, b := range []struct {
		h   crypto.Hash
		alg tpmpb.HashAlgo
	}{{crypto.SHA1, tpmpb.HashAlgo_SHA1}, {crypto.SHA384, tpmpb.HashAlgo_SHA384}} {
		if _, err := extract.ParseCOSCEL(att.GetCanonicalEventLog(), quotedBank(t, att, b.h, b.alg), extract.Options{}); err != nil {
			t.Errorf("ParseCOSCEL against the %v bank: %v", b.h, err)
		}
	}
}

func TestEvidenceErrors(t *testing.T) {
	nonce := make([]byte, attest.NonceSize)
	req := &attest.Request{Audience: "a"}
	t.Run("not booted", func(t *testing.T) {
		tpm := openSim(t, "")
		if err := tpm.MeasureWorkload(Workload{ImageRef: "r", ImageDigest: testDigest}); err != nil {
			t.Fatal(err)
		}
		agent, err := NewAgent(tpm)
		if err != nil {
			t.Fatal(err)
		}
		defer agent.Close()
		if _, err := agent.Evidence(nonce, req); err == nil || !strings.Contains(err.Error(), "firmware event log") {
			t.Errorf("Evidence without a firmware log = %v", err)
		}
	})
	t.Run("not measured", func(t *testing.T) {
		tpm := openSim(t, "")
		if err := tpm.Boot(readEventLog(t, "rhel8-uefi.bin")); err != nil {
			t.Fatal(err)
		}
		agent, err := NewAgent(tpm)
		if err != nil {
			t.Fatal(err)
		}
		defer agent.Close()
		if _, err := agent.Evidence(nonce, req); err == nil || !strings.Contains(err.Error(), "not measured") {
			t.Errorf("Evidence without a workload = %v", err)
		}
	})
	t.Run("tpm closed first", func(t *testing.T) {
		tpm := openSim(t, "")
		a, err := NewAgent(tpm)
		if err != nil {
			t.Fatal(err)
		}
		if err := tpm.Close(); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Errorf("Agent.Close after TPM.Close = %v", err)
		}
		if _, err := a.Evidence(nonce, req); err == nil || !strings.Contains(err.Error(), "closed") {
			t.Errorf("Evidence after TPM.Close = %v", err)
		}
	})
	_, agent := bootedAgent(t, "rhel8-uefi.bin", Workload{ImageRef: "r", ImageDigest: testDigest})
	tests := []struct {
		name  string
		nonce []byte
		req   *attest.Request
		want  string
	}{
		{"short nonce", nonce[:16], req, "nonce"},
		{"no request", nonce, nil, "no attestation request"},
		{"no audience", nonce, &attest.Request{}, string(attest.ReasonAudienceInvalid)},
		{"control character", nonce, &attest.Request{Audience: "a", Intent: "x\ny"}, "control character"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := agent.Evidence(tc.nonce, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Evidence = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	t.Run("closed", func(t *testing.T) {
		if err := agent.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := agent.Evidence(nonce, req); err == nil || !strings.Contains(err.Error(), "closed") {
			t.Errorf("Evidence after Close = %v", err)
		}
		if _, err := agent.Signer().Sign(nil, make([]byte, 32), crypto.SHA256); err == nil {
			t.Error("Sign after Close succeeded")
		}
	})
}

// TestKeys checks that the AK is stable for a state directory (so it can be
// enrolled once) and differs between directories, and that every agent has
// its own key.
func TestKeys(t *testing.T) {
	dir := t.TempDir()
	keysOf := func(dir string) (ak crypto.PublicKey, agentKeys []crypto.PublicKey) {
		tpm := openSim(t, dir)
		defer tpm.Close()
		ak, err := tpm.AKPublic()
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			a, err := NewAgent(tpm)
			if err != nil {
				t.Fatal(err)
			}
			if !a.AKPublic().(*ecdsa.PublicKey).Equal(ak) {
				t.Error("the agent's AK is not the TPM's AK")
			}
			agentKeys = append(agentKeys, a.PublicKey())
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
		}
		return ak, agentKeys
	}
	ak1, keys1 := keysOf(dir)
	ak2, keys2 := keysOf(dir)
	ak3, _ := keysOf(t.TempDir())
	if !ak1.(*ecdsa.PublicKey).Equal(ak2) {
		t.Error("the AK changed between two runs with the same state directory")
	}
	if ak1.(*ecdsa.PublicKey).Equal(ak3) {
		t.Error("two state directories gave the same AK")
	}
	all := append(keys1, keys2...)
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			if all[i].(*ecdsa.PublicKey).Equal(all[j]) {
				t.Errorf("agents %d and %d share a key", i, j)
			}
		}
	}
}

func TestSignerSignsWithAgentKey(t *testing.T) {
	tpm := openSim(t, "")
	agent, err := NewAgent(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	digest := sha256.Sum256([]byte("hello"))
	sig, err := agent.Signer().Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(agent.PublicKey().(*ecdsa.PublicKey), digest[:], sig) {
		t.Error("the signature does not verify with the agent key")
	}
}

func BenchmarkEvidence(b *testing.B) {
	_, agent := bootedAgent(b, "ubuntu-2404-amd-sevsnp.bin", Workload{ImageRef: "r", ImageDigest: testDigest})
	nonce := make([]byte, attest.NonceSize)
	req := &attest.Request{Audience: "vouch-demo"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := agent.Evidence(nonce, req); err != nil {
			b.Fatal(err)
		}
	}
}
