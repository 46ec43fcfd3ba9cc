package auditor_test

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/audit/auditor"
)

const logSize = 700 // two full bundles and a partial one

func verify(t *testing.T, dir string, opts auditor.Options) *auditor.Report {
	t.Helper()
	src, err := auditor.OpenSource(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts.Source = src
	rep, err := auditor.Verify(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func pubkey(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, audit.PublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestVerifyCleanLogAndGrowth(t *testing.T) {
	dir := t.TempDir()
	genLog(t, dir, logSize, true)
	state := filepath.Join(t.TempDir(), "state.json")
	rep := verify(t, dir, auditor.Options{PublicKey: pubkey(t, dir), StatePath: state, Evidence: true})
	if !rep.OK() || rep.Size != logSize || rep.Records != logSize || !rep.StateSaved {
		t.Fatalf("clean log: ok=%v size=%d records=%d saved=%v findings=%v", rep.OK(), rep.Size, rep.Records, rep.StateSaved, rep.Findings)
	}
	if rep.Evidence != logSize/10 {
		t.Errorf("evidence checked %d, want %d", rep.Evidence, logSize/10)
	}
	if rep.ByKind["attestation"] == 0 || rep.ByOutcome["refused"] == 0 {
		t.Errorf("counts: %v %v", rep.ByKind, rep.ByOutcome)
	}
	// The log grows; the next run checks consistency with the state.
	l, err := audit.Open(context.Background(), audit.Options{DataDir: dir, CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	appendRecords(t, l, logSize, 300, false)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	rep = verify(t, dir, auditor.Options{StatePath: state})
	if !rep.OK() || rep.Size != logSize+300 || rep.PreviousSize == nil || *rep.PreviousSize != logSize {
		t.Fatalf("grown log: ok=%v size=%d findings=%v", rep.OK(), rep.Size, rep.Findings)
	}
	if !strings.Contains(rep.KeySource, "state") {
		t.Errorf("key source %q: the state should pin the key", rep.KeySource)
	}
}

// entryOffset returns the offset of entry i's data in a bundle file.
func entryOffset(t *testing.T, bundle []byte, i int) int {
	t.Helper()
	off := 0
	for range i {
		off += 2 + int(binary.BigEndian.Uint16(bundle[off:]))
	}
	return off
}

func flip(t *testing.T, path string, at func([]byte) int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[at(b)] ^= 0x01
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// rebuild replaces dir's log with one holding the first keep entries of
// the original followed by extra different ones, signed with the log's own
// key: what an operator holding the key could do.
func rebuild(t *testing.T, dir string, keep, extra int) {
	t.Helper()
	var entries [][]byte
	verify(t, dir, auditor.Options{PublicKey: pubkey(t, dir), OnRecord: func(i uint64, r *audit.Record) {
		if int(i) < keep {
			b, err := audit.Encode(r)
			if err != nil {
				t.Fatal(err)
			}
			entries = append(entries, b)
		}
	}})
	other := t.TempDir()
	if err := os.MkdirAll(filepath.Join(other, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(filepath.Join(dir, audit.SignerKeyFile))
	if err := os.WriteFile(filepath.Join(other, audit.SignerKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	l, err := audit.Open(ctx, audit.Options{DataDir: other, CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var futures []func() (uint64, error)
	for _, e := range entries {
		futures = append(futures, l.Future(ctx, e))
	}
	for _, f := range futures {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	appendRecords(t, l, 5000, extra, false)
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, audit.LogDirName)); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(other, audit.LogDirName), filepath.Join(dir, audit.LogDirName)); err != nil {
		t.Fatal(err)
	}
}

func TestTamperingIsCaught(t *testing.T) {
	base := t.TempDir()
	genLog(t, base, logSize, true)
	key := pubkey(t, base)
	baseState := filepath.Join(t.TempDir(), "state.json")
	if rep := verify(t, base, auditor.Options{PublicKey: key, StatePath: baseState, Evidence: true}); !rep.OK() {
		t.Fatalf("base log: %v", rep.Findings)
	}
	stateBytes, _ := os.ReadFile(baseState)

	logf := func(dir, p string) string { return filepath.Join(dir, audit.LogDirName, p) }
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, dir string)
		kind   string
		index  int64 // -1: no index
	}{
		{"entry bundle byte", func(t *testing.T, dir string) {
			flip(t, logf(dir, "tile/entries/000"), func(b []byte) int { return entryOffset(t, b, 77) + 2 + 20 })
		}, auditor.FindEntryAltered, 77},
		{"entry length prefix", func(t *testing.T, dir string) {
			flip(t, logf(dir, "tile/entries/001"), func(b []byte) int { return entryOffset(t, b, 9) })
		}, auditor.FindBundleMalformed, 256 + 9},
		{"partial entry bundle", func(t *testing.T, dir string) {
			flip(t, logf(dir, "tile/entries/002.p/188"), func(b []byte) int { return entryOffset(t, b, 100) + 2 + 5 })
		}, auditor.FindEntryAltered, 512 + 100},
		{"leaf tile byte", func(t *testing.T, dir string) {
			flip(t, logf(dir, "tile/0/001"), func([]byte) int { return 40*32 + 3 })
		}, auditor.FindTileAltered, 256 + 40},
		{"upper tile byte", func(t *testing.T, dir string) {
			flip(t, logf(dir, "tile/1/000.p/2"), func([]byte) int { return 32 + 1 })
		}, auditor.FindTileAltered, 256},
		{"checkpoint byte", func(t *testing.T, dir string) {
			flip(t, logf(dir, "checkpoint"), func(b []byte) int { return strings.IndexByte(string(b), '\n') + 2 })
		}, auditor.FindCheckpointSignature, -1},
		{"checkpoint signature byte", func(t *testing.T, dir string) {
			flip(t, logf(dir, "checkpoint"), func(b []byte) int { return len(b) - 5 })
		}, auditor.FindCheckpointSignature, -1},
		{"archived evidence byte", func(t *testing.T, dir string) {
			var path string
			filepath.WalkDir(filepath.Join(dir, audit.EvidenceDirName), func(p string, d os.DirEntry, _ error) error {
				if !d.IsDir() && path == "" {
					path = p
				}
				return nil
			})
			flip(t, path, func(b []byte) int { return len(b) / 2 })
		}, auditor.FindEvidenceAltered, -2},
		{"truncated: last bundle removed", func(t *testing.T, dir string) {
			os.Remove(logf(dir, "tile/entries/002.p/188"))
			os.RemoveAll(logf(dir, "tile/entries/002.p"))
		}, auditor.FindBundleMissing, 512},
		{"truncated and re-signed", func(t *testing.T, dir string) { rebuild(t, dir, 512, 0) }, auditor.FindTruncated, 512},
		{"rewritten from k, re-signed", func(t *testing.T, dir string) { rebuild(t, dir, 345, logSize-345) }, auditor.FindRewritten, 345},
		{"rewritten and grown, re-signed", func(t *testing.T, dir string) { rebuild(t, dir, 600, 400) }, auditor.FindRewritten, 600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyDir(t, base)
			state := filepath.Join(t.TempDir(), "state.json")
			os.WriteFile(state, stateBytes, 0o600)
			tc.tamper(t, dir)
			rep := verify(t, dir, auditor.Options{PublicKey: key, StatePath: state, Evidence: true})
			if rep.OK() {
				t.Fatal("tampering not detected")
			}
			found := false
			for _, f := range rep.Findings {
				if f.Kind == tc.kind && (tc.index == -2 || (tc.index == -1 && f.Index == nil) || (f.Index != nil && int64(*f.Index) == tc.index)) {
					found = true
				}
			}
			if !found {
				t.Fatalf("want a %s finding at %d; got %v", tc.kind, tc.index, rep.Findings)
			}
			if rep.StateSaved {
				t.Error("the state was overwritten by a run that found tampering")
			}
			t.Logf("%v", rep.Findings)
		})
	}
}
