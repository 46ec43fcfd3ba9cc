package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	gecel "github.com/google/go-eventlog/cel"
	"github.com/google/go-tpm-tools/cel"
	attestpb "github.com/google/go-tpm-tools/proto/attest"
	"google.golang.org/protobuf/proto"

	"github.com/vouch-dev/vouch/attest"
)

const testDigest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

var bootLog = filepath.Join("..", "..", "testdata", "eventlogs", "rhel8-uefi.bin")

// verifier is a fake verifier that records what it was asked and answers
// with a fixed credential, or with a problem when refuse is set.
type verifier struct {
	mu      sync.Mutex
	refuse  *attest.Error
	request *attest.Request
	cel     []string // COS TLV contents measured, in order
}

func (v *verifier) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/challenge":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		nonce := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, attest.NonceSize))
		_, _ = io.WriteString(w, `{"nonce":"`+nonce+`","expires_at":"2030-01-01T00:00:00Z"}`)
	case "/v1/attest":
		body, _ := io.ReadAll(io.LimitReader(r.Body, attest.MaxEvidenceSize))
		ev, err := attest.DecodeEvidence(body)
		if err != nil {
			attest.WriteProblem(w, attest.ProblemFor(400, err))
			return
		}
		v.mu.Lock()
		defer v.mu.Unlock()
		if v.request, err = attest.DecodeRequest(ev.Request); err != nil {
			attest.WriteProblem(w, attest.ProblemFor(400, err))
			return
		}
		var att attestpb.Attestation
		if err := proto.Unmarshal(ev.TPM, &att); err != nil {
			attest.WriteProblem(w, attest.ProblemFor(400, attest.Errorf(attest.ReasonRequestMalformed, "%v", err)))
			return
		}
		log, err := gecel.DecodeToCEL(bytes.NewBuffer(att.GetCanonicalEventLog()))
		if err != nil {
			attest.WriteProblem(w, attest.ProblemFor(400, attest.Errorf(attest.ReasonCELMalformed, "%v", err)))
			return
		}
		v.cel = nil
		for _, rec := range log.Records() {
			tlv, _ := cel.ParseToCosTlv(rec.Content)
			v.cel = append(v.cel, string(tlv.EventContent))
		}
		if v.refuse != nil {
			attest.WriteProblem(w, attest.ProblemFor(http.StatusConflict, v.refuse))
			return
		}
		w.Header().Set("Content-Type", "application/cwt")
		w.Header().Set("Vouch-Log-Index", "7")
		_, _ = w.Write([]byte("cwt"))
	default:
		http.NotFound(w, r)
	}
}

// runCmd runs vouch-agent with args and returns exit code, stdout, stderr.
func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestAttestCommand(t *testing.T) {
	v := &verifier{}
	srv := httptest.NewServer(v)
	defer srv.Close()
	dir := t.TempDir()
	out := filepath.Join(dir, "cred.cwt")
	config := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(config, []byte("delegation: from-file\nintent: overridden-by-env\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VOUCH_INTENT", "summarize")
	t.Setenv("VOUCH_AUDIENCE", "overridden-by-flag")
	t.Setenv("VOUCH_STATE", filepath.Join(dir, "state"))
	code, stdout, stderr := runCmd(t, "attest", "--config", config,
		"--verifier", srv.URL, "--boot-log", bootLog,
		"--image-ref", "ghcr.io/acme/agent:1.4", "--image-digest", testDigest,
		"--arg", "/agent", "--arg", "a,b", "--env", "MODE=x=y",
		"--audience", "https://docs.example",
		"--resource", `Document::"customer-A/*"`, "--resource", `Tool::"search,web"`,
		"--out", out, "--log-level", "error")
	if code != exitOK {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "credential written to "+out) || !strings.Contains(stdout, "audit log index 7") {
		t.Errorf("stdout = %q", stdout)
	}
	b, err := os.ReadFile(out)
	if err != nil || string(b) != "cwt" {
		t.Fatalf("credential file = %q, %v", b, err)
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Errorf("credential file mode = %v, want 0600", fi.Mode().Perm())
	}
	want := attest.Request{
		Audience:   "https://docs.example",
		Intent:     "summarize",
		Resources:  []string{`Document::"customer-A/*"`, `Tool::"search,web"`},
		Delegation: "from-file",
	}
	got := v.request
	if got.Audience != want.Audience || got.Intent != want.Intent || got.Delegation != want.Delegation || !slices.Equal(got.Resources, want.Resources) {
		t.Errorf("request = %+v, want %+v", got, want)
	}
	wantCEL := []string{"ghcr.io/acme/agent:1.4", testDigest, "/agent", "a,b", "MODE=x=y", ""}
	if !slices.Equal(v.cel, wantCEL) {
		t.Errorf("measured %q, want %q", v.cel, wantCEL)
	}

	// --json and "-": the credential on stdout is not mixed with JSON, so
	// check them apart. Without VOUCH_AUDIENCE the default audience applies.
	os.Unsetenv("VOUCH_AUDIENCE") // t.Setenv restores it
	code, stdout, stderr = runCmd(t, "attest", "--verifier", srv.URL, "--boot-log", bootLog,
		"--image-ref", "r", "--image-digest", testDigest, "--out", out, "--json", "--log-level", "error")
	if code != exitOK {
		t.Fatalf("--json: exit %d: %s", code, stderr)
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || res["log_index"] != "7" || res["credential_bytes"] != float64(3) {
		t.Errorf("--json output %q: %v", stdout, err)
	}
	if v.request.Audience != defaultAudience {
		t.Errorf("default audience = %q, want %q", v.request.Audience, defaultAudience)
	}
	code, stdout, _ = runCmd(t, "attest", "--verifier", srv.URL, "--boot-log", bootLog,
		"--image-ref", "r", "--image-digest", testDigest, "--out", "-", "--log-level", "error")
	if code != exitOK || stdout != "cwt" {
		t.Errorf("--out -: exit %d, stdout %q", code, stdout)
	}
}

func TestAttestRefused(t *testing.T) {
	v := &verifier{refuse: attest.Errorf(attest.ReasonNonceReplayed, "the nonce was used at 12:00:01")}
	srv := httptest.NewServer(v)
	defer srv.Close()
	out := filepath.Join(t.TempDir(), "cred.cwt")
	code, _, stderr := runCmd(t, "attest", "--state", t.TempDir(), "--verifier", srv.URL, "--boot-log", bootLog,
		"--image-ref", "r", "--image-digest", testDigest, "--out", out, "--log-level", "error")
	if code != exitRefused {
		t.Errorf("exit %d, want %d", code, exitRefused)
	}
	if want := "refused: nonce-replayed: the nonce was used at 12:00:01"; !strings.Contains(stderr, want) {
		t.Errorf("stderr = %q, want %q", stderr, want)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a credential file was written for a refusal")
	}
}

func TestAttestErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer srv.Close()
	state := t.TempDir()
	base := []string{"attest", "--state", state, "--verifier", srv.URL, "--boot-log", bootLog, "--image-ref", "r", "--image-digest", testDigest, "--out", filepath.Join(state, "c")}
	with := func(extra ...string) []string { return append(slices.Clone(base), extra...) }
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no verifier", []string{"attest", "--image-ref", "r", "--image-digest", testDigest}, exitUsage, "--verifier is required"},
		{"no image ref", []string{"attest", "--verifier", srv.URL, "--image-digest", testDigest}, exitUsage, "--image-ref is required"},
		{"bad digest", with("--image-digest", "sha256:abc"), exitUsage, "64 hex digits"},
		{"bad env", with("--env", "NOVALUE"), exitUsage, "NAME=VALUE"},
		{"bad env name", with("--env", "1X=2"), exitUsage, "malformed env name"},
		{"duplicate env", with("--env", "A=1", "--env", "A=2"), exitUsage, "given twice"},
		{"bad audience", with("--audience", "a\tb"), exitUsage, "audience-invalid"},
		{"empty audience", with("--audience", ""), exitUsage, "audience"},
		{"no boot log", []string{"attest", "--state", state, "--verifier", srv.URL, "--image-ref", "r", "--image-digest", testDigest}, exitUsage, "--boot-log"},
		{"bad verifier url", with("--verifier", "vouch.example"), exitUsage, "http(s)://"},
		{"unknown flag", with("--nope"), exitUsage, "unknown flag"},
		{"bad log level", with("--log-level", "loud"), exitUsage, "--log-level"},
		{"swtpm down", with("--tpm", "swtpm:"+closedPort(t)), exitError, "connecting to swtpm"},
		{"device tpm", []string{"attest", "--tpm", "/dev/tpmrm9", "--verifier", srv.URL, "--image-ref", "r", "--image-digest", testDigest}, exitError, "opening /dev/tpmrm9"},
		{"missing boot log file", with("--boot-log", filepath.Join(state, "nope.bin")), exitError, "no such file"},
		{"unreplayable boot log", with("--boot-log", filepath.Join("..", "..", "testdata", "eventlogs", "glinux-alex.bin")), exitError, "locality 3"},
		{"verifier down", with("--log-level", "error"), exitError, "unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCmd(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
}

func TestAKCommand(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_STATE_HOME", dir) // the default state directory
	out := filepath.Join(dir, "ak.pem")
	code, stdout, stderr := runCmd(t, "ak", "--out", out, "--log-level", "error")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		t.Fatalf("ak.pem is not a PEM PUBLIC KEY: %q", b)
	}
	if _, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(blk.Bytes)
	digest := hex.EncodeToString(sum[:])
	if !strings.Contains(stdout, "AK digest (SHA-256 of SPKI): "+digest) || !strings.Contains(stdout, "vouch agents enroll --ak-pub "+out) {
		t.Errorf("stdout = %q", stdout)
	}
	if _, err := os.Stat(filepath.Join(dir, "vouch-agent", "sim-seed")); err != nil {
		t.Errorf("no seed in the default state directory: %v", err)
	}
	// Same state, same AK; --json.
	code, stdout, stderr = runCmd(t, "ak", "--out", filepath.Join(dir, "ak2.pem"), "--json", "--log-level", "error")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var res struct {
		Digest    string `json:"ak_digest"`
		Simulated bool   `json:"simulated"`
	}
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || res.Digest != digest || !res.Simulated {
		t.Errorf("--json = %q (%v), want digest %s", stdout, err, digest)
	}
	// Another state directory, another AK.
	code, stdout, _ = runCmd(t, "ak", "--state", t.TempDir(), "--out", "-", "--log-level", "error")
	if code != exitOK || !strings.Contains(stdout, "BEGIN PUBLIC KEY") || strings.Contains(stdout, digest) {
		t.Errorf("another state directory: exit %d, stdout %q", code, stdout)
	}
}

func TestHelp(t *testing.T) {
	code, stdout, _ := runCmd(t, "attest", "--help")
	for _, want := range []string{"--verifier", "--boot-log", "--image-digest", "--audience", `(default "vouch-demo")`, "--resource", "--delegation", "--out", "--config", "INSECURE"} {
		if code != exitOK || !strings.Contains(stdout, want) {
			t.Errorf("attest --help lacks %q", want)
		}
	}
	code, stdout, _ = runCmd(t, "--help")
	for _, want := range []string{"VOUCH_IMAGE_DIGEST", "ak", "attest", "Exit codes"} {
		if code != exitOK || !strings.Contains(stdout, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	if code, _, stderr := runCmd(t, "frobnicate"); code != exitUsage {
		t.Errorf("unknown command: exit %d, stderr %q", code, stderr)
	}
}

// closedPort returns a loopback address nobody listens on.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
