package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/verifier/audit"
)

func TestAuditCommands(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l, err := audit.Open(ctx, audit.Options{DataDir: dir, CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range 20 {
		r := &audit.Record{Version: audit.SchemaVersion, Kind: audit.KindDecision, TimeMillis: now.Add(time.Duration(i-10) * time.Hour).UnixMilli(), Outcome: "permit", Build: "test",
			Agent: &audit.Agent{ID: "agent-" + string(rune('a'+i%3))}, User: "alice", Action: "read", Resources: []string{"doc/1"}}
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
