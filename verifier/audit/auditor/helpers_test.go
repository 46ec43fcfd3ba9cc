package auditor_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/audit"
)

// genRecord is the i-th record of a generated log: attestations issued and
// refused, decisions and config changes, as a verifier writes them.
func genRecord(i int, evidence []byte) *audit.Record {
	t := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(i) * time.Millisecond)
	r := &audit.Record{Version: audit.SchemaVersion, TimeMillis: t.UnixMilli(), Build: "test", RefSetID: "sha256:" + fmt.Sprintf("%064x", 7)}
	agent := &audit.Agent{ID: fmt.Sprintf("urn:ietf:params:oauth:ckt:agent-%d", i%97), AKDigest: []byte(fmt.Sprintf("ak-digest-%022d", i%13)), ImageDigest: "sha256:" + fmt.Sprintf("%064x", i%5)}
	switch i % 10 {
	case 0:
		r.Kind, r.Outcome = audit.KindConfig, "started"
		r.Detail = map[string]string{audit.DetailEvent: "start"}
	case 1, 2, 3:
		r.Kind, r.Outcome, r.Step = audit.KindAttestation, audit.OutcomeRefused, "reference-values"
		r.Reasons = []attest.Reason{attest.ReasonRefsImageDigest}
		r.Agent, r.EvidenceDigest = agent, evidence
	case 4:
		r.Kind, r.Outcome, r.Agent = audit.KindDecision, "permit", agent
		r.User, r.Action, r.Resources = fmt.Sprintf("user-%d", i%7), "read", []string{"docs/customer-A/report-7"}
	default:
		r.Kind, r.Outcome, r.Agent, r.EvidenceDigest = audit.KindAttestation, audit.OutcomeIssued, agent, evidence
		r.Action, r.Resources, r.Delegation = "summarise", []string{"docs/customer-A"}, fmt.Sprintf("dlg-%d", i%11)
		r.Detail = map[string]string{audit.DetailStatus: "affirming", audit.DetailProfile: "rhel8-uefi"}
		r.Credential = &audit.Credential{ID: []byte(fmt.Sprintf("cti-%012d", i)), Subject: agent.ID, Audience: "https://docs.example", Scope: []string{"read:docs/customer-A"}, Expiry: t.Unix() + 60}
	}
	return r
}

// genLog writes a log of n records into dataDir (with evidence archived
// for every tenth attestation when withEvidence) and closes it, so that a
// checkpoint covers them all.
func genLog(tb testing.TB, dataDir string, n int, withEvidence bool) {
	tb.Helper()
	ctx := context.Background()
	l, err := audit.Open(ctx, audit.Options{DataDir: dataDir, BatchMaxSize: 4096, BatchMaxAge: 20 * time.Millisecond, CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		tb.Fatal(err)
	}
	appendRecords(tb, l, 0, n, withEvidence)
	if err := l.Close(ctx); err != nil {
		tb.Fatal(err)
	}
}

func appendRecords(tb testing.TB, l *audit.TLog, from, n int, withEvidence bool) {
	tb.Helper()
	ctx := context.Background()
	arch := audit.NewArchive(l.DataDir())
	const window = 8192
	futures := make([]func() (uint64, error), 0, window)
	wait := func() {
		for _, f := range futures {
			if _, err := f(); err != nil {
				tb.Fatal(err)
			}
		}
		futures = futures[:0]
	}
	for i := from; i < from+n; i++ {
		var ev []byte
		if withEvidence && i%10 == 5 {
			raw := make([]byte, 512)
			rand.Read(raw)
			d, err := arch.PutEvidence(raw)
			if err != nil {
				tb.Fatal(err)
			}
			ev = d
		}
		b, err := audit.Encode(genRecord(i, ev))
		if err != nil {
			tb.Fatal(err)
		}
		futures = append(futures, l.Future(ctx, b))
		if len(futures) == window {
			wait()
		}
	}
	wait()
}

// copyDir copies a data directory, for tampering with a copy.
func copyDir(tb testing.TB, src string) string {
	tb.Helper()
	dst := tb.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		fi, _ := d.Info()
		out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fi.Mode().Perm())
		if err != nil {
			return err
		}
		defer out.Close()
		_, err = io.Copy(out, in)
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return dst
}
