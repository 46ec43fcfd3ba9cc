package verifier_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/audit"
)

// memAudit keeps audit records in memory (the audit log proper is another
// package's work; this only observes what the verifier appends).
type memAudit struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (m *memAudit) Append(_ context.Context, r *audit.Record) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs = append(m.recs, *r)
	return uint64(len(m.recs) - 1), nil
}

func (m *memAudit) records() []audit.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]audit.Record(nil), m.recs...)
}

// writeAtomic writes a file the way an operator should: to a temporary
// name, then renamed in.
func writeAtomic(t testing.TB, path string, b []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

const extraImage = "schema: vouch.dev/firmware-refs/v2\nimages:\n  - digest: sha256:" + "1111111111111111111111111111111111111111111111111111111111111111" + "\n    note: %s\n"

// TestReloadUnderLoad swaps reference sets (and breaks the directory)
// repeatedly while agents attest over HTTP on loopback, and expects no
// failed attestation, credentials under every set that was in force, the
// broken set never applied, and the reloads counted and audited.
func TestReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"rhel8-uefi.yaml", "deny.yaml"} {
		b, err := firmwarerefs.FS.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		writeAtomic(t, filepath.Join(dir, f), b)
	}
	initial, err := policy.LoadRefs(os.DirFS(dir), ".")
	if err != nil {
		t.Fatal(err)
	}
	aud := &memAudit{}
	holder := verifier.NewRefHolder(initial)
	srv, err := verifier.New(context.Background(), verifier.Config{DataDir: t.TempDir(), Refs: holder, Audit: aud, Logger: slog.New(slog.DiscardHandler),
		RateLimits: verifier.NoRateLimits()}) // attestations as fast as they go, from one address
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	client, err := agentside.NewClient(hs.URL, hs.Client())
	if err != nil {
		t.Fatal(err)
	}
	log, err := os.ReadFile(bootLog)
	if err != nil {
		t.Fatal(err)
	}
	agent, done := bootedAgent(t, srv, log)
	defer done()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hup := make(chan os.Signal, 1)
	watched := make(chan struct{})
	go func() {
		srv.WatchRefs(ctx, verifier.WatchOptions{Dir: dir, Interval: 5 * time.Millisecond, Trigger: hup})
		close(watched)
	}()

	var (
		mu       sync.Mutex
		ids      = map[string]int{}
		failures []error
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				cred, err := agent.Attest(context.Background(), client, request)
				var id string
				if err == nil {
					var claims *attest.Claims
					claims, err = attest.VerifyCredential(cred, srv.Keys().KeySet(), attest.CredentialOptions{Audience: []string{request.Audience}})
					if err == nil {
						id = claims.Submods[attest.SubmodTPM].PolicyID
					}
				}
				mu.Lock()
				if err != nil {
					failures = append(failures, err)
				} else {
					ids[id]++
				}
				mu.Unlock()
			}
		}()
	}
	extra := filepath.Join(dir, "extra.yaml")
	broken := filepath.Join(dir, "broken.yaml")
	deadline := time.Now().Add(1500 * time.Millisecond)
	for i := 0; time.Now().Before(deadline); i++ {
		switch i % 4 {
		case 0: // set B: one more allowed image
			writeAtomic(t, extra, []byte(strings.Replace(extraImage, "%s", "round "+string(rune('a'+i%26)), 1)))
		case 1: // a broken file: the set in force must stay
			writeAtomic(t, broken, []byte("schema: vouch.dev/firmware-refs/v2\nprofiles: [{name: BAD NAME}]\n"))
			hup <- os.Interrupt // and a SIGHUP-style reload while broken
		case 2:
			os.Remove(broken)
		case 3: // back to set A
			os.Remove(extra)
		}
		time.Sleep(40 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	cancel()
	<-watched

	if len(failures) > 0 {
		t.Fatalf("%d attestations failed during reloads, first: %v", len(failures), failures[0])
	}
	total := 0
	for _, n := range ids {
		total += n
	}
	if total < 10 || len(ids) < 2 {
		t.Fatalf("%d credentials under %d reference sets; want attestations across several sets", total, len(ids))
	}
	var applied, rejected int
	for _, r := range aud.records() {
		if r.Kind != audit.KindConfig {
			continue // the attestations themselves
		}
		if r.RefSetID == "" {
			t.Fatalf("configuration record names no reference set: %+v", r)
		}
		switch r.Outcome {
		case "loaded":
			if strings.HasPrefix(r.Detail["source"], "reload: ") {
				applied++
			}
		case "refs-rejected":
			rejected++
			if !strings.Contains(r.Detail["error"], "BAD NAME") {
				t.Errorf("rejection does not say why: %q", r.Detail["error"])
			}
		}
	}
	if applied < 2 || rejected < 1 {
		t.Fatalf("audit has %d applied and %d rejected reloads", applied, rejected)
	}
	resp, err := hs.Client().Get(hs.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(m, []byte(`vouch_refs_reloads_total{result="failed"}`)) || !bytes.Contains(m, []byte(`vouch_refs_info{id="`+holder.Refs().ID()+`"} 1`)) {
		t.Fatalf("metrics lack the reload counters or the set in force")
	}
	t.Logf("%d credentials under %d sets; %d reloads applied, %d rejected", total, len(ids), applied, rejected)
}
