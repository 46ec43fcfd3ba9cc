package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vouch-dev/vouch/policy"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRoot()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String() + errb.String(), err
}

// TestRefsDeriveCheckDiff runs the commands on every real log: derive into a
// directory, check each log against it (affirming, exit 0), and diff the
// derived directory with the built-in set (same values).
func TestRefsDeriveCheckDiff(t *testing.T) {
	logs, _ := filepath.Glob("../../testdata/eventlogs/*.bin")
	dir := t.TempDir()
	for _, l := range logs {
		if out, err := run(t, "refs", "derive", "--eventlog", l, "--out", dir); err != nil {
			t.Fatalf("derive %s: %v\n%s", l, err, out)
		}
	}
	for _, l := range logs {
		out, err := run(t, "refs", "check", "--refs", dir, "--eventlog", l)
		name := strings.TrimSuffix(filepath.Base(l), ".bin")
		if err != nil || !strings.Contains(out, "profile       "+name) || !strings.Contains(out, "result: affirming") {
			t.Fatalf("check %s: %v\n%s", name, err, out)
		}
	}
	out, err := run(t, "refs", "check", "--refs", dir, "--eventlog", logs[0], "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep policy.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.StatusName != "affirming" || len(rep.Events) == 0 {
		t.Fatalf("--json: %v %+v", err, rep)
	}
	// A different profile: the log matches it nowhere, exit status 1.
	out, err = run(t, "refs", "check", "--refs", dir, "--eventlog", filepath.Join("..", "..", "testdata", "eventlogs", "rhel8-uefi.bin"), "--profile", "debian-10")
	if !errors.Is(err, errNotAffirming) || !strings.Contains(out, "mismatch") {
		t.Fatalf("check against the wrong profile: %v\n%s", err, out)
	}
	out, err = run(t, "refs", "diff", "builtin+platforms", dir)
	if err != nil {
		t.Fatal(err)
	}
	// The built-in set has the demo image, descriptions and a deny file.
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[2:] {
		if !strings.Contains(line, "images: image") && !strings.Contains(line, ": description ") {
			t.Errorf("unexpected difference: %s", line)
		}
	}
	os.WriteFile(filepath.Join(dir, "broken.yaml"), []byte("schema: nope\n"), 0o644)
	if _, err := run(t, "refs", "check", "--refs", dir, "--eventlog", logs[0]); err == nil || !strings.Contains(err.Error(), "broken.yaml") {
		t.Fatalf("a broken set: %v", err)
	}
}
