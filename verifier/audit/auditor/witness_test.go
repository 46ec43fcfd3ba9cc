package auditor_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/audit/auditor"
	"github.com/vouch-dev/vouch/verifier/audit/witness"
)

func newWitness(t *testing.T, dir, name string) *witness.Witness {
	t.Helper()
	skey, _, err := witness.GenerateKey(name)
	if err != nil {
		t.Fatal(err)
	}
	src, err := auditor.OpenSource(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := witness.New(witness.Options{Source: src, LogKey: pubkey(t, dir), SignerKey: skey,
		StatePath: filepath.Join(t.TempDir(), "witness.json")})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func observe(t *testing.T, w *witness.Witness) []byte {
	t.Helper()
	if _, err := w.Observe(context.Background()); err != nil {
		t.Fatal(err)
	}
	return w.Checkpoint()
}

func grow(t *testing.T, dir string, from, n int) {
	t.Helper()
	l, err := audit.Open(context.Background(), audit.Options{DataDir: dir, CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	appendRecords(t, l, from, n, false)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A log operator holding the log's key shows auditors a history other than
// the one the witness saw. Each rewritten log is validly signed and passes
// an auditor without state; with the witness's cosigned checkpoint it is a
// split view. An honest log that grew since the witness looked passes.
func TestSplitViewIsCaught(t *testing.T) {
	base := t.TempDir()
	genLog(t, base, logSize, false)
	w := newWitness(t, base, "witness.example")
	seen := observe(t, w)
	if !strings.Contains(string(seen), "— witness.example ") || strings.Count(string(seen), "\n— ") != 2 {
		t.Fatalf("cosigned checkpoint does not carry the log's and the witness's signatures:\n%s", seen)
	}
	tests := []struct {
		name   string
		tamper func(t *testing.T, dir string)
		want   string // finding kind; "" for a clean run
	}{
		{"honest log, grown since", func(t *testing.T, dir string) { grow(t, dir, logSize, 300) }, ""},
		{"same log", func(t *testing.T, dir string) {}, ""},
		{"rewritten from 345, same size", func(t *testing.T, dir string) { rebuild(t, dir, 345, logSize-345) }, auditor.FindSplitView},
		{"rewritten from 600 and grown", func(t *testing.T, dir string) { rebuild(t, dir, 600, 400) }, auditor.FindSplitView},
		{"entries hidden (an older, shorter view)", func(t *testing.T, dir string) { rebuild(t, dir, 500, 0) }, auditor.FindSplitView},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyDir(t, base)
			tc.tamper(t, dir)
			alone := verify(t, dir, auditor.Options{PublicKey: pubkey(t, base)})
			if !alone.OK() {
				t.Fatalf("the shown log does not even verify alone: %v", alone.Findings)
			}
			rep := verify(t, dir, auditor.Options{PublicKey: pubkey(t, base), Witnessed: [][]byte{seen}, WitnessKeys: []string{w.VerifierKey()}})
			if len(rep.Witnessed) != 1 || rep.Witnessed[0].Witness != "witness.example" || rep.Witnessed[0].Size != logSize {
				t.Errorf("witnessed views %+v", rep.Witnessed)
			}
			if tc.want == "" {
				if !rep.OK() {
					t.Fatalf("findings %v", rep.Findings)
				}
				return
			}
			if rep.OK() || rep.Findings[0].Kind != tc.want {
				t.Fatalf("findings %v, want %s", rep.Findings, tc.want)
			}
			t.Logf("%s", rep.Findings[0])
		})
	}
}

// Witnessed checkpoints that are not what they claim are findings, never
// silently ignored.
func TestWitnessedCheckpointSignatures(t *testing.T) {
	dir := t.TempDir()
	genLog(t, dir, 100, false)
	w := newWitness(t, dir, "witness.example")
	seen := observe(t, w)
	other := newWitness(t, dir, "other.example")
	otherSeen := observe(t, other)
	logOnly, err := auditor.OpenSource(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := logOnly.ReadCheckpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	forged := []byte(strings.Replace(string(seen), "\n100\n", "\n101\n", 1))
	for _, tc := range []struct {
		name      string
		witnessed []byte
		keys      []string
		want      string
	}{
		{"cosigned by the trusted witness", seen, []string{w.VerifierKey()}, ""},
		{"cosigned by an untrusted witness", otherSeen, []string{w.VerifierKey()}, "signed by the log only"},
		{"the log's checkpoint alone", plain, []string{w.VerifierKey()}, "signed by the log only"},
		{"size edited after cosigning", forged, []string{w.VerifierKey()}, "does not verify"},
		{"garbage", []byte("not a note"), []string{w.VerifierKey()}, "does not verify"},
		{"bad witness key", seen, []string{"nonsense"}, "not a note verifier key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := verify(t, dir, auditor.Options{PublicKey: pubkey(t, dir), Witnessed: [][]byte{tc.witnessed}, WitnessKeys: tc.keys})
			if tc.want == "" {
				if !rep.OK() {
					t.Fatalf("findings %v", rep.Findings)
				}
				return
			}
			if rep.OK() || rep.Findings[0].Kind != auditor.FindWitnessSignature || !strings.Contains(rep.Findings[0].Detail, tc.want) {
				t.Fatalf("findings %v, want %s saying %q", rep.Findings, auditor.FindWitnessSignature, tc.want)
			}
		})
	}
}

// A witness cosigns only what verifies, never a history that does not
// extend what it cosigned before, and keeps serving its last good
// checkpoint; a restarted witness remembers.
func TestWitnessRefusesToCosign(t *testing.T) {
	dir := t.TempDir()
	genLog(t, dir, logSize, false)
	skey, _, err := witness.GenerateKey("witness.example")
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "witness.json")
	open := func() *witness.Witness {
		src, err := auditor.OpenSource(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		w, err := witness.New(witness.Options{Source: src, LogKey: pubkey(t, dir), SignerKey: skey, StatePath: state})
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	w := open()
	srv := httptest.NewServer(w)
	defer srv.Close()
	if resp, err := http.Get(srv.URL + witness.CheckpointPath); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("before the first observation: %v %v", resp.StatusCode, err)
	}
	good := observe(t, w)
	resp, err := http.Get(srv.URL + witness.CheckpointPath)
	if err != nil {
		t.Fatal(err)
	}
	served, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(served) != string(good) {
		t.Fatalf("served %q, cosigned %q", served, good)
	}

	rebuild(t, dir, 345, logSize) // rewritten and grown, re-signed with the log's key
	rep, err := open().Observe(context.Background())
	if err == nil || rep == nil || rep.OK() || rep.Findings[0].Kind != auditor.FindRewritten {
		t.Fatalf("a restarted witness was not caught by the rewrite: err %v, report %+v", err, rep)
	}
	if _, err := w.Observe(context.Background()); err == nil {
		t.Fatal("cosigned a rewritten history")
	}
	if string(w.Checkpoint()) != string(good) {
		t.Error("the last good cosigned checkpoint was replaced")
	}
}
