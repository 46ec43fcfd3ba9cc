package witness

import (
	"crypto/rand"
	"strings"
	"testing"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"

	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/audit/auditor"
)

// GenerateKey gives an Ed25519 note signer key and the cosignature/v1
// verifier key of the same key pair, and what the signer (as the witness
// uses it) signs verifies with that key.
func TestGenerateKey(t *testing.T) {
	skey, vkey, err := GenerateKey("witness.example")
	if err != nil {
		t.Fatal(err)
	}
	plain, err := audit.VerifierKeyOf(skey)
	if err != nil {
		t.Fatal(err)
	}
	if want, err := fnote.VKeyToCosignatureV1(plain); err != nil || vkey != want {
		t.Fatalf("verifier key %q, want the cosignature/v1 form %q of %q (%v)", vkey, want, plain, err)
	}
	signer, err := fnote.NewSignerForCosignatureV1(skey)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := note.Sign(&note.Note{Text: "log.example\n1\n" + strings.Repeat("A", 43) + "=\n"}, signer)
	if err != nil {
		t.Fatal(err)
	}
	v, err := fnote.NewVerifierForCosignatureV1(vkey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := note.Open(msg, note.VerifierList(v)); err != nil {
		t.Fatalf("a cosignature does not verify with the generated key: %v", err)
	}
}

func TestNewOptions(t *testing.T) {
	skey, _, _ := GenerateKey("witness.example")
	_, logVkey, _ := note.GenerateKey(rand.Reader, "log.example")
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
