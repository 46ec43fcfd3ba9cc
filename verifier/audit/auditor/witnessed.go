package auditor

import (
	"bytes"
	"context"
	"fmt"

	flog "github.com/transparency-dev/formats/log"
	fnote "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

// MaxCheckpoint bounds a checkpoint note (a witnessed one carries a few
// more signature lines than the log's own).
const MaxCheckpoint = 16 << 10

// checkWitnessed compares the log this auditor sees with the checkpoints
// witnesses cosigned. A witness saw the log at some size; the log shown
// here must be that same tree or an extension of it (a consistency proof
// from the tiles). A log that shows one history to its witnesses and
// another to this auditor — a split view — cannot pass, even when every
// checkpoint it serves is validly signed by its own key.
func (w *walker) checkWitnessed(ctx context.Context, logKey note.Verifier) {
	if len(w.opts.Witnessed) == 0 {
		return
	}
	var wvs []note.Verifier
	for _, k := range w.opts.WitnessKeys {
		v, err := fnote.NewVerifierForCosignatureV1(k)
		if err != nil {
			w.rep.add(FindWitnessSignature, nil, "witness key %q is not a note verifier key for cosignature/v1 (or Ed25519): %v", k, err)
			return
		}
		wvs = append(wvs, v)
	}
	for i, raw := range w.opts.Witnessed {
		if len(raw) > MaxCheckpoint {
			w.rep.add(FindWitnessSignature, nil, "witnessed checkpoint %d is %d bytes, over the %d-byte bound", i+1, len(raw), MaxCheckpoint)
			continue
		}
		cp, witness, err := openWitnessed(raw, logKey, wvs)
		if err != nil {
			w.rep.add(FindWitnessSignature, nil, "witnessed checkpoint %d: %v", i+1, err)
			continue
		}
		w.rep.Witnessed = append(w.rep.Witnessed, WitnessedView{Witness: witness, Size: cp.Size, Root: cp.Hash})
		switch {
		case cp.Size > w.cp.Size:
			w.rep.add(FindSplitView, ptr(w.cp.Size), "witness %s saw %d entries (root %x), but the log shows this auditor only %d: it is hiding entries from index %d on, or showing a different history", witness, cp.Size, cp.Hash, w.cp.Size, w.cp.Size)
		case cp.Size == w.cp.Size && !bytes.Equal(cp.Hash, w.cp.Hash):
			w.rep.add(FindSplitView, nil, "witness %s saw %d entries with root %x; the log shows this auditor the same size with root %x: two different histories", witness, cp.Size, cp.Hash, w.cp.Hash)
		case cp.Size < w.cp.Size && cp.Size > 0:
			pb, err := client.NewProofBuilder(ctx, w.cp.Size, w.opts.Source.ReadTile)
			var p [][]byte
			if err == nil {
				p, err = pb.ConsistencyProof(ctx, cp.Size, w.cp.Size)
			}
			if err != nil {
				w.rep.add(FindSplitView, nil, "witness %s saw %d entries (root %x); no consistency proof to the log this auditor sees (%d entries) can be built from its tiles: %v", witness, cp.Size, cp.Hash, w.cp.Size, err)
			} else if proof.VerifyConsistency(rfc6962.DefaultHasher, cp.Size, w.cp.Size, p, cp.Hash, w.cp.Hash) != nil {
				w.rep.add(FindSplitView, nil, "witness %s saw %d entries (root %x); the log this auditor sees (%d entries, root %x) does not extend that tree: a different history", witness, cp.Size, cp.Hash, w.cp.Size, w.cp.Hash)
			}
		}
	}
}

// openWitnessed verifies a cosigned checkpoint: signed by the log's key and
// by one of the witness keys. It returns the checkpoint and the witness's
// name.
func openWitnessed(raw []byte, logKey note.Verifier, witnesses []note.Verifier) (*flog.Checkpoint, string, error) {
	n, err := note.Open(raw, note.VerifierList(append([]note.Verifier{logKey}, witnesses...)...))
	if err != nil {
		return nil, "", fmt.Errorf("does not verify with the log's key and a witness key: %w", err)
	}
	var byLog bool
	var witness string
	for _, s := range n.Sigs {
		if s.Name == logKey.Name() && s.Hash == logKey.KeyHash() {
			byLog = true
			continue
		}
		witness = s.Name
	}
	switch {
	case !byLog:
		return nil, "", fmt.Errorf("not signed by the log's key %s", logKey.Name())
	case witness == "":
		return nil, "", fmt.Errorf("signed by the log only, by none of the %d witness keys given", len(witnesses))
	}
	var cp flog.Checkpoint
	if _, err := cp.Unmarshal([]byte(n.Text)); err != nil {
		return nil, "", fmt.Errorf("not a checkpoint: %w", err)
	}
	if cp.Origin != logKey.Name() {
		return nil, "", fmt.Errorf("a checkpoint of %q, not of this log (%q)", cp.Origin, logKey.Name())
	}
	return &cp, witness, nil
}
