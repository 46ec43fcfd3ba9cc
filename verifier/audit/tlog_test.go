package audit_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/vouch-dev/vouch/verifier/audit"
)

func TestLogAppendReopenAndServe(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l, err := audit.Open(ctx, audit.Options{DataDir: dir, Origin: "example.com/audit", CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		idx, err := l.Append(ctx, benchRecord(i))
		if err != nil || idx != uint64(i) {
			t.Fatalf("append %d: index %d, %v", i, idx, err)
		}
	}
	if _, err := l.Append(ctx, &audit.Record{}); err == nil {
		t.Fatal("an invalid record was appended")
	}
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, benchRecord(9)); err == nil {
		t.Fatal("append after close succeeded")
	}
	fi, err := os.Stat(filepath.Join(dir, audit.SignerKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("signing key mode %v, %v", fi.Mode().Perm(), err)
	}

	// Reopened: same key and origin, indices continue.
	l2, err := audit.Open(ctx, audit.Options{DataDir: dir, CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if l2.Origin() != "example.com/audit" || l2.PublicKey() != l.PublicKey() {
		t.Fatalf("reopened with origin %q key %q", l2.Origin(), l2.PublicKey())
	}
	if idx, err := l2.Append(ctx, benchRecord(3)); err != nil || idx != 3 {
		t.Fatalf("append after reopen: %d %v", idx, err)
	}
	if err := l2.Close(ctx); err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(http.StripPrefix("/v1/log", audit.Handler(dir, l2.PublicKey())))
	defer srv.Close()
	get := func(p string) (int, string) {
		resp, err := http.Get(srv.URL + "/v1/log/" + p)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, cp := get("checkpoint")
	v, _ := note.NewVerifier(l2.PublicKey())
	if n, err := note.Open([]byte(cp), note.VerifierList(v)); code != 200 || err != nil || !strings.HasPrefix(n.Text, "example.com/audit\n4\n") {
		t.Fatalf("checkpoint %d %q: %v", code, cp, err)
	}
	if code, _ := get("tile/entries/000.p/4"); code != 200 {
		t.Fatalf("entry bundle: %d", code)
	}
	if code, k := get("key"); code != 200 || strings.TrimSpace(k) != l2.PublicKey() {
		t.Fatalf("key: %d %q", code, k)
	}
	for _, p := range []string{"../keys/log-signer.key", "tile/../../keys/log-signer.key", "tile/0/..%2f..%2fkeys", "evidence/zz", ".state/treeState", "refs/abc"} {
		if code, body := get(p); code != 404 {
			t.Errorf("%s: %d %q, want 404", p, code, body)
		}
	}
}
