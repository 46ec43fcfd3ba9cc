package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/internal/demo"
	"github.com/vouch-dev/vouch/verifier"
)

// TestShellFlow is the README walkthrough in process: a verifier with a data
// directory, operator enrollment of the simulator's AK from a PEM file, an
// attestation, and `vouch cred verify` against the verifier's /v1/keys.
func TestShellFlow(t *testing.T) {
	ctx := context.Background()
	data := t.TempDir()
	refs, err := firmwarerefs.Load()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := verifier.New(ctx, verifier.Config{DataDir: data, Refs: verifier.NewRefHolder(refs), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()

	tpm, err := agentside.Open(ctx, agentside.SpecSimulator, agentside.OpenOptions{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	if err := tpm.Boot(demo.BootLog); err != nil {
		t.Fatal(err)
	}
	if err := tpm.MeasureWorkload(demo.Image); err != nil {
		t.Fatal(err)
	}
	agent, err := agentside.NewAgent(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()

	spki, _ := x509.MarshalPKIXPublicKey(agent.AKPublic())
	akFile := filepath.Join(t.TempDir(), "ak.pem")
	os.WriteFile(akFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}), 0o644)
	// The verifier's database is open in this process too: SQLite in WAL mode
	// lets the CLI write while vouchd runs.
	out, err := run(t, "agents", "enroll", "--data", data, "--ak-pub", akFile, "--name", "test host")
	if err != nil || !strings.Contains(out, "enrolled AK") {
		t.Fatalf("enroll: %v\n%s", err, out)
	}
	if out, err := run(t, "agents", "enroll", "--data", data, "--ak-pub", akFile); err == nil {
		t.Fatalf("second enroll of an active AK succeeded:\n%s", out)
	}

	client, _ := agentside.NewClient(hs.URL, hs.Client())
	cred, err := agent.Attest(ctx, client, &attest.Request{Audience: "https://docs.example"})
	if err != nil {
		t.Fatal(err)
	}
	credFile := filepath.Join(t.TempDir(), "cred.cwt")
	os.WriteFile(credFile, cred, 0o600)

	out, err = run(t, "cred", "verify", "--keys", hs.URL+"/v1/keys", "--aud", "https://docs.example", credFile)
	if err != nil || !strings.Contains(out, "credential verified") || !strings.Contains(out, "platform rhel8-uefi") {
		t.Fatalf("cred verify: %v\n%s", err, out)
	}
	out, err = run(t, "cred", "verify", "--json", "--keys", hs.URL+"/v1/keys", "--aud", "https://docs.example", credFile)
	if err != nil {
		t.Fatal(err)
	}
	var v credentialView
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.Submods["workload"].ImageDigest != demo.Image.ImageDigest {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	_, err = run(t, "cred", "verify", "--keys", hs.URL+"/v1/keys", "--aud", "https://other.example", credFile)
	if attest.ReasonOf(err) != attest.ReasonCredentialAudience {
		t.Fatalf("wrong audience: %v", err)
	}

	out, err = run(t, "agents", "list", "--data", data, "--json")
	if err != nil || !strings.Contains(out, `"name": "test host"`) {
		t.Fatalf("list: %v\n%s", err, out)
	}
	digest := out[strings.Index(out, `"ak_digest": "`)+len(`"ak_digest": "`):][:12]
	if out, err := run(t, "agents", "revoke", digest, "--reason", "test", "--data", data); err != nil {
		t.Fatalf("revoke: %v\n%s", err, out)
	}
	_, err = agent.Attest(ctx, client, &attest.Request{Audience: "https://docs.example"})
	if attest.ReasonOf(err) != attest.ReasonAKRevoked {
		t.Fatalf("attest after revoke: %v", err)
	}
	// The CLI's offline changes reach the verifier's transparency log
	// through the audit outbox: the enrollment and the AK's revocation.
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := run(t, "audit", "show", "--log", data, "--json")
		if err == nil && strings.Contains(out, `"enrolled"`) && strings.Contains(out, `"kind": "ak"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the CLI's enrollment and revocation are not in the audit log: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestRefsDerive(t *testing.T) {
	out := t.TempDir()
	got, err := run(t, "refs", "derive", "--eventlog", "../../testdata/eventlogs/debian-10.bin", "--name", "debian-10", "--out", out, "--pcrs", "0-7")
	if err != nil {
		t.Fatalf("%v\n%s", err, got)
	}
	if !strings.Contains(got, "bank sha1") {
		t.Errorf("a SHA-1-only log should derive a sha1 profile: %s", got)
	}
	b, err := os.ReadFile(filepath.Join(out, "debian-10.yaml"))
	if err != nil || !strings.Contains(string(b), "allow-sha1") {
		t.Fatalf("profile: %v\n%s", err, b)
	}
	// A log that needs parsing quirks gets them named in its own profile.
	if got, err := run(t, "refs", "derive", "--eventlog", "../../testdata/eventlogs/arch-linux-workstation.bin", "--name", "arch", "--out", out); err != nil {
		t.Fatalf("%v\n%s", err, got)
	}
	b, err = os.ReadFile(filepath.Join(out, "arch.yaml"))
	if err != nil || !strings.Contains(string(b), "efi-app-before-calling-event") || !strings.Contains(string(b), "empty-secure-boot-variable") {
		t.Fatalf("arch profile lacks its quirks: %v\n%s", err, b)
	}
}
