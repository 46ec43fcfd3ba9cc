package agentside

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/GoogleCloudPlatform/confidential-space/server/extract"
	gattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm-tools/client"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm-tools/server"
	legacytpm2 "github.com/google/go-tpm/legacy/tpm2"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/internal/testenv"
)

// startSWTPM runs swtpm (libtpms, a TPM nobody here wrote) on a free
// loopback port and returns its spec. It skips the test without swtpm.
func startSWTPM(t *testing.T) string {
	t.Helper()
	return testenv.StartSWTPM(t, "").Spec
}

// TestSWTPMEvidence runs the whole agent side on swtpm and checks the
// evidence with the same independent verifiers as on the simulator.
func TestSWTPMEvidence(t *testing.T) {
	spec := startSWTPM(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tpm, err := Open(ctx, spec, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	if tpm.Simulated() {
		t.Error("swtpm reported as the simulator")
	}
	log := readEventLog(t, "ubuntu-2404-amd-sevsnp.bin")
	if err := tpm.Boot(log); err != nil {
		t.Fatalf("Boot: %v", err)
	}
	w := Workload{ImageRef: "ghcr.io/acme/agent:1", ImageDigest: testDigest}
	if err := tpm.MeasureWorkload(w); err != nil {
		t.Fatal(err)
	}
	agent, err := NewAgent(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	nonce := bytes.Repeat([]byte{4}, attest.NonceSize)
	ev, err := agent.Evidence(nonce, &attest.Request{Audience: "vouch-demo"})
	if err != nil {
		t.Fatal(err)
	}
	binding := attest.Binding(nonce, ev.AgentKey, ev.Request)
	att := decodeAttestation(t, ev)
	if _, err := server.VerifyAttestation(att, server.VerifyOpts{Nonce: binding, TrustedAKs: []crypto.PublicKey{agent.AKPublic()}}); err != nil {
		t.Fatalf("VerifyAttestation: %v", err)
	}
	cp := gattest.CertificationParameters{Public: ev.AgentKey, CreateAttestation: ev.CertifyInfo, CreateSignature: ev.CertifySig}
	if err := cp.Verify(gattest.VerifyOpts{Public: agent.AKPublic(), Hash: crypto.SHA256}); err != nil {
		t.Fatalf("CertificationParameters.Verify: %v", err)
	}
	cos, err := extract.ParseCOSCEL(att.GetCanonicalEventLog(), quotedBank(t, att, crypto.SHA256, tpmpb.HashAlgo_SHA256), extract.Options{})
	if err != nil || cos.GetContainer().GetImageDigest() != testDigest {
		t.Fatalf("ParseCOSCEL = %v, %v", cos, err)
	}

	// A second agent on the same, still running swtpm: the AK is persistent
	// and the same; the PCRs are no longer fresh, so a second boot is refused.
	if err := agent.Close(); err != nil {
		t.Fatal(err)
	}
	ak := agent.AKPublic()
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}
	tpm2, err := Open(ctx, spec, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.Close()
	ak2, err := tpm2.AKPublic()
	if err != nil {
		t.Fatal(err)
	}
	if !ak2.(interface{ Equal(crypto.PublicKey) bool }).Equal(ak) {
		t.Error("the swtpm AK changed between connections")
	}
	if err := tpm2.Boot(log); !errors.Is(err, ErrUnreplayable) || !strings.Contains(err.Error(), "already extended") {
		t.Errorf("second Boot on the same swtpm = %v, want a not-fresh refusal", err)
	}

	// Closing the TPM with an agent still open flushes the agent's key:
	// swtpm keeps transient objects after the connection ends.
	if _, err := NewAgent(tpm2); err != nil {
		t.Fatal(err)
	}
	if err := tpm2.Close(); err != nil {
		t.Fatal(err)
	}
	tpm3, err := Open(ctx, spec, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm3.Close()
	err = tpm3.do(func(rw io.ReadWriter) error {
		hs, err := client.Handles(rw, legacytpm2.HandleTypeTransient)
		if err == nil && len(hs) != 0 {
			err = fmt.Errorf("%d transient objects left in swtpm: %x", len(hs), hs)
		}
		return err
	})
	if err != nil {
		t.Error(err)
	}
}

func TestSWTPMUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	if _, err := Open(context.Background(), "swtpm:"+addr, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "connecting to swtpm") {
		t.Errorf("Open of a closed port = %v", err)
	}
}
