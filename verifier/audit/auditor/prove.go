package auditor

import (
	"context"
	"fmt"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/client"

	"github.com/vouch-dev/vouch/verifier/audit"
)

// Inclusion is a verified inclusion proof of one entry in a checkpoint.
type Inclusion struct {
	Index      uint64        `json:"index"`
	Size       uint64        `json:"tree_size"`
	Root       []byte        `json:"root"`
	Checkpoint string        `json:"checkpoint"`
	LeafHash   []byte        `json:"leaf_hash"`
	Proof      [][]byte      `json:"proof"`
	Entry      []byte        `json:"entry"`
	Record     *audit.Record `json:"record,omitempty"`
	KeySource  string        `json:"key_source"`
}

// Prove fetches the checkpoint (verified with the key as Verify resolves
// it, without a state file unless opts.StatePath is set), the entry at
// index and its inclusion proof from the log's tiles, and verifies the
// proof against the checkpoint's root.
func Prove(ctx context.Context, opts Options, index uint64) (*Inclusion, error) {
	var st *State
	if opts.StatePath != "" {
		var err error
		if st, err = LoadState(opts.StatePath); err != nil {
			return nil, err
		}
	}
	rep := &Report{}
	v, err := resolveKey(ctx, opts, st, rep)
	if err != nil {
		return nil, err
	}
	cp, err := readCheckpoint(ctx, opts.Source, v, rep)
	if err != nil {
		return nil, err
	}
	if cp == nil {
		return nil, fmt.Errorf("%s", rep.Findings[0])
	}
	if index >= cp.Size {
		return nil, fmt.Errorf("index %d is beyond the log's %d entries (checkpoint of size %d); a record just appended appears within a second", index, cp.Size, cp.Size)
	}
	pb, err := client.NewProofBuilder(ctx, cp.Size, opts.Source.ReadTile)
	if err != nil {
		return nil, fmt.Errorf("building the proof: %w", err)
	}
	p, err := pb.InclusionProof(ctx, index)
	if err != nil {
		return nil, fmt.Errorf("building the proof: %w", err)
	}
	raw, err := opts.Source.ReadEntryBundle(ctx, index/layout.EntryBundleWidth, layout.PartialTileSize(0, index/layout.EntryBundleWidth, cp.Size))
	if err != nil {
		return nil, fmt.Errorf("reading the entry: %w", err)
	}
	entries, err := parseBundle(raw)
	if err != nil || int(index%layout.EntryBundleWidth) >= len(entries) {
		return nil, fmt.Errorf("%s: the entry bundle holding index %d is malformed: %v", FindBundleMalformed, index, err)
	}
	entry := entries[index%layout.EntryBundleWidth]
	leaf := rfc6962.DefaultHasher.HashLeaf(entry)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, index, cp.Size, leaf, p, cp.Hash); err != nil {
		return nil, fmt.Errorf("%s: entry %d is not included in the signed checkpoint: %w", FindEntryAltered, index, err)
	}
	inc := &Inclusion{Index: index, Size: cp.Size, Root: cp.Hash, Checkpoint: string(cp.raw), LeafHash: leaf, Proof: p, Entry: entry, KeySource: rep.KeySource}
	if rec, err := audit.Decode(entry); err == nil {
		inc.Record = rec
	} else {
		return inc, fmt.Errorf("%s: entry %d is included but is not a valid record: %w", FindRecordMalformed, index, err)
	}
	return inc, nil
}
