package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/verifier/audit"
)

// writeAuditLog appends 20 records (decisions of alice, by three agents,
// an hour apart around now; every fifth a config change) to the log in dir.
func writeAuditLog(t *testing.T, dir, user string) {
	t.Helper()
	ctx := context.Background()
	l, err := audit.Open(ctx, audit.Options{DataDir: dir, CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range 20 {
		r := &audit.Record{Version: audit.SchemaVersion, Kind: audit.KindDecision, TimeMillis: now.Add(time.Duration(i-10) * time.Hour).UnixMilli(), Outcome: "permit", Build: "test",
			Agent: &audit.Agent{ID: "agent-" + string(rune('a'+i%3))}, User: user, Action: "read", Resources: []string{"doc/1"}}
		if i%5 == 0 {
			r.Kind, r.User = audit.KindConfig, ""
		}
		if _, err := l.Append(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestAuditCommands(t *testing.T) {
	dir := t.TempDir()
	writeAuditLog(t, dir, "alice")
	pub := filepath.Join(dir, audit.PublicKeyFile)
	state := filepath.Join(t.TempDir(), "state.json")

	out, err := run(t, "audit", "verify", "--log", dir, "--pubkey", pub, "--state", state, "--json")
	if err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	var rep struct {
		Size       uint64 `json:"size"`
		StateSaved bool   `json:"state_saved"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Size != 20 || !rep.StateSaved {
		t.Fatalf("verify --json: %v %s", err, out)
	}
	out, err = run(t, "audit", "show", "--log", dir, "--agent", "agent-b", "--since", "5h")
	if err != nil || strings.Count(out, "agent-b") != 5 || strings.Contains(out, "\n4 ") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	out, err = run(t, "audit", "show", "--log", dir, "--kind", "config", "--json")
	if err != nil || strings.Count(out, `"index"`) != 4 {
		t.Fatalf("show --kind: %v\n%s", err, out)
	}
	out, err = run(t, "audit", "prove", "--log", dir, "--pubkey", pub, "--index", "7")
	if err != nil || !strings.Contains(out, "entry 7 is included in the checkpoint of size 20") {
		t.Fatalf("prove: %v\n%s", err, out)
	}
	if _, err := run(t, "audit", "prove", "--log", dir, "--index", "20"); err == nil {
		t.Fatal("proved an index beyond the log")
	}

	// One byte of entry 12 changed: verify names it and fails.
	bundle := filepath.Join(dir, audit.LogDirName, "tile/entries/000.p/20")
	b, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	off := 0
	for range 12 {
		off += 2 + int(binary.BigEndian.Uint16(b[off:]))
	}
	b[off+10] ^= 0x20
	os.WriteFile(bundle, b, 0o644)
	out, err = run(t, "audit", "verify", "--log", dir, "--state", state)
	if err == nil || !strings.Contains(out, "entry-altered at index 12") {
		t.Fatalf("tampered log: %v\n%s", err, out)
	}
	if _, err := run(t, "audit", "show", "--log", dir, "--pubkey", pub); err == nil {
		t.Fatal("show succeeded on a tampered log")
	}
}

// A witness cosigns the log; an auditor checks the log against it, from a
// file and from the witness's URL; a log rewritten with the log's own key
// (the same size, other records) is refused as a split view.
func TestAuditWitnessCommands(t *testing.T) {
	dir := t.TempDir()
	writeAuditLog(t, dir, "alice")
	pub := filepath.Join(dir, audit.PublicKeyFile)
	keys := t.TempDir()
	key := filepath.Join(keys, "witness.key")
	if out, err := run(t, "audit", "witness", "keygen", "--name", "witness.test", "--out", key); err != nil || !strings.Contains(out, "witness.test+") {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	if _, err := run(t, "audit", "witness", "keygen", "--name", "witness.test", "--out", key); err == nil {
		t.Fatal("keygen overwrote an existing key")
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi.Mode(), err)
	}
	state := filepath.Join(keys, "witness.json")
	if _, err := run(t, "audit", "witness", "run", "--once", "--log", dir, "--key", key, "--state", state); err == nil {
		t.Fatal("a witness ran without --pubkey (trusting the key the log publishes)")
	}
	cmd := newRoot()
	var cosigned, stderr bytes.Buffer
	cmd.SetOut(&cosigned)
	cmd.SetErr(&stderr)
	cmd.SetArgs([]string{"audit", "witness", "run", "--once", "--log", dir, "--pubkey", pub, "--key", key, "--state", state})
	if err := cmd.Execute(); err != nil || !strings.Contains(stderr.String(), "cosigned 20 entries") {
		t.Fatalf("witness run --once: %v\n%s", err, stderr.String())
	}
	cpFile := filepath.Join(keys, "checkpoint")
	if err := os.WriteFile(cpFile, cosigned.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/checkpoint" {
			w.Write(cosigned.Bytes())
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	for _, from := range []string{cpFile, srv.URL} {
		out, err := run(t, "audit", "verify", "--log", dir, "--pubkey", pub, "--witness", from, "--witness-key", key+".pub")
		if err != nil || !strings.Contains(out, "witness    witness.test saw 20 entries") || !strings.Contains(out, "OK: the log verifies") {
			t.Fatalf("verify --witness %s: %v\n%s", from, err, out)
		}
	}
	if _, err := run(t, "audit", "verify", "--log", dir, "--pubkey", pub, "--witness", cpFile); err == nil {
		t.Fatal("--witness without --witness-key was accepted")
	}

	// The operator, who holds the log's key, shows this auditor another
	// history of the same size.
	other := t.TempDir()
	if err := os.MkdirAll(filepath.Join(other, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	sk, err := os.ReadFile(filepath.Join(dir, audit.SignerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, audit.SignerKeyFile), sk, 0o600); err != nil {
		t.Fatal(err)
	}
	writeAuditLog(t, other, "mallory")
	if out, err := run(t, "audit", "verify", "--log", other, "--pubkey", pub); err != nil {
		t.Fatalf("the rewritten log should verify on its own: %v\n%s", err, out)
	}
	out, err := run(t, "audit", "verify", "--log", other, "--pubkey", pub, "--witness", cpFile, "--witness-key", key+".pub")
	if err == nil || !strings.Contains(out, "split-view") {
		t.Fatalf("a split view passed: %v\n%s", err, out)
	}
}
