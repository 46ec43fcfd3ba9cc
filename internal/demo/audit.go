package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/audit/auditor"
	"github.com/vouch-dev/vouch/verifier/audit/witness"
)

// WitnessName is the demo witness's key name.
const WitnessName = "witness.demo.vouch"

// audit checks the verifier's audit log as outsiders would. A witness
// verifies the log and cosigns its checkpoint; an auditor verifies the
// signature, the tree, every record and archived evidence, re-appraises
// every attestation, and checks that the log is the one the witness saw.
// Then the operator, who holds the log's key, rewrites history and shows it
// to a new auditor (splitView).
func (r *run) audit(ctx context.Context, dir string) error {
	start := time.Now()
	src, err := auditor.OpenSource(dir, nil)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(dir, audit.PublicKeyFile))
	if err != nil {
		return err
	}
	key := strings.TrimSpace(string(b))
	wdir, err := os.MkdirTemp("", "vouch-demo-witness-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(wdir)
	skey, _, err := witness.GenerateKey(WitnessName)
	if err != nil {
		return err
	}
	w, err := witness.New(witness.Options{Source: src, LogKey: key, SignerKey: skey,
		StatePath: filepath.Join(wdir, "witness.json"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	if _, err := w.Observe(ctx); err != nil {
		r.step("audit", false, "", start, "the witness did not cosign: %v", err)
		return nil
	}
	witnessed := auditor.Options{Witnessed: [][]byte{w.Checkpoint()}, WitnessKeys: []string{w.VerifierKey()}}
	opts := witnessed
	opts.Source, opts.PublicKey, opts.Reappraise = src, key, true
	rep, err := auditor.Verify(ctx, opts)
	if err != nil {
		return err
	}
	r.sum.AuditRecords = rep.Records
	outcome := fmt.Sprintf("%d records in the transparency log; a witness verified it and cosigned its checkpoint; an auditor verified the signatures, the Merkle tree and every record against it, and re-appraised %d attestations from archived evidence", rep.Records, rep.Reappraised)
	if !rep.OK() {
		outcome = fmt.Sprintf("the audit log does not verify: %v", rep.Findings)
	}
	r.step("audit", rep.OK(), "", start, "%s", outcome)
	if r.sum.Kept {
		r.say("               check it yourself: vouch audit verify --log %s", dir)
	} else {
		r.say("               (run `vouch demo --data DIR` to keep the log, then check it yourself: vouch audit verify --log DIR)")
	}
	r.splitView(ctx, dir, key, witnessed)
	return nil
}

// splitView has the operator, who holds the log's signing key, rewrite
// history — the refused attestation of the unapproved image becomes an
// issuance — and sign a fresh checkpoint. A first-time auditor finds
// nothing wrong with it on its own; checked against the witness it is a
// split view.
func (r *run) splitView(ctx context.Context, dir, key string, witnessed auditor.Options) {
	start := time.Now()
	forged, index, err := forgeHistory(ctx, dir, key)
	if forged != "" {
		defer os.RemoveAll(forged)
	}
	if err != nil {
		r.step("split view", false, "", start, "could not rewrite the log: %v", err)
		return
	}
	src, err := auditor.OpenSource(forged, nil)
	if err != nil {
		r.step("split view", false, "", start, "%v", err)
		return
	}
	alone, err := auditor.Verify(ctx, auditor.Options{Source: src, PublicKey: key})
	if err != nil {
		r.step("split view", false, "", start, "%v", err)
		return
	}
	witnessed.Source, witnessed.PublicKey = src, key
	checked, err := auditor.Verify(ctx, witnessed)
	if err != nil {
		r.step("split view", false, "", start, "%v", err)
		return
	}
	caught := alone.OK() && !checked.OK() && checked.Findings[0].Kind == auditor.FindSplitView
	verdict := "on its own it verifies"
	if !alone.OK() {
		verdict = "on its own it does not even verify: " + firstFinding(alone)
	}
	r.step("split view", caught, "", start,
		"the operator rewrites the log with its own key (record %d, the unapproved image, now says issued) and signs it: %s; against the witness's checkpoint → %s",
		index, verdict, firstFinding(checked))
}

func firstFinding(rep *auditor.Report) string {
	if rep.OK() {
		return "no finding"
	}
	return rep.Findings[0].Kind
}

// forgeHistory writes, into a new directory, the log of dir with one record
// changed — the refusal of the unapproved image turned into an issuance — signed
// with the log's own key, as an operator holding the key could. It returns
// the directory and the index of the changed record.
func forgeHistory(ctx context.Context, dir, key string) (string, uint64, error) {
	src, err := auditor.OpenSource(dir, nil)
	if err != nil {
		return "", 0, err
	}
	var entries [][]byte
	index, changed := uint64(0), false
	rep, err := auditor.Verify(ctx, auditor.Options{Source: src, PublicKey: key, OnRecord: func(i uint64, rec *audit.Record) {
		if !changed && rec.Kind == audit.KindAttestation && slices.Contains(rec.Reasons, attest.ReasonRefsImageDigest) {
			rec.Outcome, rec.Reasons, rec.Step = audit.OutcomeIssued, nil, ""
			index, changed = i, true
		}
		if b, err := audit.Encode(rec); err == nil {
			entries = append(entries, b)
		}
	}})
	if err != nil {
		return "", 0, err
	}
	if !changed || uint64(len(entries)) != rep.Records {
		return "", 0, errors.New("the log has no refusal of the unapproved image to rewrite")
	}
	forged, err := os.MkdirTemp("", "vouch-demo-forged-")
	if err != nil {
		return "", 0, err
	}
	skey, err := os.ReadFile(filepath.Join(dir, audit.SignerKeyFile))
	if err != nil {
		return forged, 0, err
	}
	keyPath := filepath.Join(forged, audit.SignerKeyFile)
	if err := os.MkdirAll(filepath.Dir(keyPath), 0o700); err != nil {
		return forged, 0, err
	}
	if err := audit.WriteFileSync(keyPath, skey, 0o600, false); err != nil {
		return forged, 0, err
	}
	l, err := audit.Open(ctx, audit.Options{DataDir: forged, CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		return forged, 0, err
	}
	waits := make([]func() (uint64, error), 0, len(entries))
	for _, e := range entries {
		waits = append(waits, l.Future(ctx, e))
	}
	for _, wait := range waits {
		if _, err := wait(); err != nil {
			l.Close(ctx)
			return forged, 0, err
		}
	}
	return forged, index, l.Close(ctx)
}
