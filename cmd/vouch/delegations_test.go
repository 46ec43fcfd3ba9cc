package main

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/verifier"
)

// TestDelegationsFlow is the documented bootstrap and delegation flow in
// process: keygen, the first admin registered through the data directory,
// a second user over the API, a delegation created, listed, suspended,
// resumed and revoked, and the refusals a user meets.
func TestDelegationsFlow(t *testing.T) {
	data := t.TempDir()
	refs, err := firmwarerefs.Load()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := verifier.New(context.Background(), verifier.Config{DataDir: data, Refs: verifier.NewRefHolder(refs)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	dir := t.TempDir()
	admin, bob := filepath.Join(dir, "admin.key"), filepath.Join(dir, "bob.key")
	as := func(user, key string, args ...string) (string, error) {
		return run(t, append(args, "--server", hs.URL, "--user", user, "--key", key)...)
	}
	check := func(name, out string, err error, want string) {
		t.Helper()
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
	}
	out, err := run(t, "users", "keygen", "--out", admin)
	check("keygen", out, err, "admin.key.pub")
	out, err = run(t, "users", "keygen", "--out", bob, "--type", "p256")
	check("keygen p256", out, err, "bob.key.pub")
	out, err = run(t, "users", "add", "--data", data, "--id", "admin", "--public-key", admin+".pub", "--admin")
	check("bootstrap admin", out, err, "registered user admin (admin true")
	out, err = as("admin", admin, "users", "add", "--id", "bob", "--public-key", bob+".pub")
	check("add bob", out, err, "registered user bob (admin false")
	out, err = as("admin", admin, "users", "list", "--json")
	check("users list", out, err, `"id": "bob"`)

	out, err = as("bob", bob, "delegations", "create", "--intent", "summarize-documents",
		"--image-digest", "sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d",
		"--resource", `Document::"customer-A/*"`, "--network", "10.0.0.0/8", "--window", "08:00-18:00", "--json")
	check("create", out, err, `"status": "active"`)
	var d struct{ ID string }
	if err := json.Unmarshal([]byte(out), &d); err != nil || !strings.HasPrefix(d.ID, "dlg_") {
		t.Fatalf("create output %q: %v", out, err)
	}
	out, err = as("bob", bob, "delegations", "list")
	check("list", out, err, d.ID)
	for _, op := range []string{"suspend", "resume", "revoke"} {
		out, err = as("admin", admin, "delegations", op, d.ID, "--reason", "test")
		check(op, out, err, "delegation "+d.ID+" is ")
	}
	out, err = as("bob", bob, "delegations", "show", d.ID)
	check("show", out, err, `"status": "revoked"`)

	refusals := []struct {
		name string
		args []string
		want string
	}{
		{"resume a revoked delegation", []string{"delegations", "resume", d.ID}, "request-malformed"},
		{"action outside the intent", []string{"delegations", "create", "--intent", "summarize-documents", "--agent-id", "x", "--resource", `Document::"a/*"`, "--action", "documents:delete"}, "intent-action"},
		{"bob registers a user", []string{"users", "add", "--id", "eve", "--public-key", bob + ".pub"}, "user-forbidden"},
	}
	for _, r := range refusals {
		_, err := as("bob", bob, r.args...)
		if err == nil || !strings.Contains(err.Error(), r.want) {
			t.Errorf("%s: %v, want %s", r.name, err, r.want)
		}
	}
	if _, err := as("bob", admin, "delegations", "list"); err == nil || !strings.Contains(err.Error(), "user-unauthenticated") {
		t.Errorf("bob with admin's key: %v", err)
	}
	out, err = run(t, "authz", "check")
	check("authz check", out, err, "summarize-documents")
}
