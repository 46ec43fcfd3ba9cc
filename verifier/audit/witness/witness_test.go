package witness

import (
	"strings"
	"testing"

	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/audit/auditor"
)

func TestVerifierKeyOf(t *testing.T) {
	skey, vkey, err := GenerateKey("witness.example")
	if err != nil {
		t.Fatal(err)
	}
	got, err := audit.VerifierKeyOf(skey)
	if err != nil || got != vkey {
		t.Fatalf("audit.VerifierKeyOf = %q, %v; want %q", got, err, vkey)
	}
	for _, bad := range []string{"", vkey, "PRIVATE+KEY+x+00000000+AAAA", strings.TrimSuffix(skey, skey[len(skey)-4:]) + "!!!!"} {
		if _, err := audit.VerifierKeyOf(bad); err == nil {
			t.Errorf("audit.VerifierKeyOf(%q) accepted", bad)
		}
	}
}

func TestNewOptions(t *testing.T) {
	skey, _, _ := GenerateKey("witness.example")
	_, logVkey, _ := GenerateKey("log.example")
	sameName, _, _ := GenerateKey("log.example")
	src, err := auditor.OpenSource("http://127.0.0.1:1", nil) // never read: New fails first
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"nothing", Options{}, "required"},
		{"no source", Options{LogKey: logVkey, SignerKey: skey, StatePath: "s"}, "required"},
		{"signer key is a verifier key", Options{LogKey: logVkey, SignerKey: logVkey, StatePath: "s"}, "required"},
		{"log key not a key", Options{Source: src, LogKey: "nonsense", SignerKey: skey, StatePath: t.TempDir() + "/s"}, "log key"},
		{"witness named like the log", Options{Source: src, LogKey: logVkey, SignerKey: sameName, StatePath: t.TempDir() + "/s"}, "its own name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
