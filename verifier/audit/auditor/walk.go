package auditor

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/client"

	"github.com/vouch-dev/vouch/verifier/audit"
)

// walker recomputes the tree from the entries.
type walker struct {
	opts Options
	rep  *Report
	cp   *checkpoint
	st   *State
	re   *reappraiser

	key      string
	cpRaw    []byte
	tree     *compact.Range
	pending  map[compact.NodeID][][]byte // upper-level tiles being derived
	prefixes []byte

	// candidates, classified once the root is known
	firstLeafMismatch *uint64
	tileMismatches    []Finding
	upperMismatch     *Finding
	firstPrefixDiff   *uint64
	proofFailed       error
	stateDiffers      bool // the entries up to the state's size changed
	stopped           bool // the walk could not cover the whole log
	evidence          atomic.Uint64
}

// checkAgainstState compares the checkpoint with the last one seen.
func (w *walker) checkAgainstState(ctx context.Context) {
	st, cp, rep := w.st, w.cp, w.rep
	if st.Origin != cp.Origin {
		rep.add(FindKeyChanged, nil, "the log's origin is %q; the state file was for %q", cp.Origin, st.Origin)
	}
	switch {
	case cp.Size < st.Size:
		rep.add(FindTruncated, ptr(cp.Size), "the log has %d entries, but %d were verified at %s (checkpoint of size %d); entries from index %d on were removed", cp.Size, st.Size, st.VerifiedAt.Format(time.RFC3339), st.Size, cp.Size)
	case cp.Size == st.Size && !bytes.Equal(cp.Hash, st.Root):
		// The walk names the first rewritten entry.
	case cp.Size > st.Size && st.Size > 0:
		pb, err := client.NewProofBuilder(ctx, cp.Size, w.opts.Source.ReadTile)
		if err == nil {
			var p [][]byte
			if p, err = pb.ConsistencyProof(ctx, st.Size, cp.Size); err == nil {
				err = proof.VerifyConsistency(rfc6962.DefaultHasher, st.Size, cp.Size, p, st.Root, cp.Hash)
			}
		}
		w.proofFailed = err
	}
}

// bundle is one entry bundle, fetched, parsed and hashed by a worker.
type bundle struct {
	ri      layout.RangeInfo
	first   uint64 // log index of the first entry of the range
	hashes  [][]byte
	records []*audit.Record
	subtree *compact.Range // root of a full bundle, hashed in parallel
	fatal   bool
	finds   []Finding
	tile0   *uint64 // first index whose leaf hash differs from level-0 tile
	tileErr error
	err     error
}

func (w *walker) walk(ctx context.Context) error {
	w.key, w.cpRaw = w.cp.key, w.cp.raw
	rf := &compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	w.tree = rf.NewEmptyRange(0)
	w.pending = map[compact.NodeID][][]byte{}
	w.prefixes = make([]byte, 0, w.cp.Size*prefixLen)
	workers := w.opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	futures := make(chan chan *bundle, workers*2)
	go func() {
		defer close(futures)
		tokens := make(chan struct{}, workers*2)
		for ri := range layout.Range(0, w.cp.Size, w.cp.Size) {
			select {
			case tokens <- struct{}{}:
			case <-ctx.Done():
				return
			}
			c := make(chan *bundle, 1)
			go func() {
				c <- w.fetch(ctx, rf, ri)
				<-tokens
			}()
			select {
			case futures <- c:
			case <-ctx.Done():
				return
			}
		}
	}()
	for c := range futures {
		b := <-c
		if b.err != nil {
			return b.err
		}
		for _, f := range b.finds {
			w.rep.add(f.Kind, f.Index, "%s", f.Detail)
		}
		if b.fatal {
			w.stopped = true
			break
		}
		if err := w.absorb(ctx, b); err != nil {
			return err
		}
		if w.opts.Progress != nil {
			w.opts.Progress(w.tree.End(), w.cp.Size)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	w.rep.Evidence = w.evidence.Load()
	w.finish()
	return nil
}

// fetch reads, parses and hashes one bundle and compares it with its
// level-0 tile.
func (w *walker) fetch(ctx context.Context, rf *compact.RangeFactory, ri layout.RangeInfo) *bundle {
	b := &bundle{ri: ri, first: ri.Index*layout.EntryBundleWidth + uint64(ri.First)}
	path := layout.EntriesPath(ri.Index, ri.Partial)
	raw, err := w.opts.Source.ReadEntryBundle(ctx, ri.Index, ri.Partial)
	if errors.Is(err, fs.ErrNotExist) {
		b.fatal = true
		b.finds = append(b.finds, Finding{FindBundleMissing, ptr(b.first), fmt.Sprintf("%s, which holds entries %d–%d of the %d the checkpoint covers, is missing", path, b.first, b.first+uint64(ri.N)-1, w.cp.Size)})
		return b
	}
	if err != nil {
		b.err = fmt.Errorf("reading %s: %w", path, err)
		return b
	}
	entries, perr := parseBundle(raw)
	tile, terr := w.opts.Source.ReadTile(ctx, 0, ri.Index, ri.Partial)
	b.tileErr = terr
	want := int(ri.First) + int(ri.N)
	if perr != nil || len(entries) < want || (ri.Partial == 0 && len(entries) != layout.EntryBundleWidth) || (ri.Partial > 0 && len(entries) != int(ri.Partial)) {
		// Name the first entry that no longer matches the tile.
		at := b.first + uint64(min(len(entries), want-int(ri.First)))
		for i := int(ri.First); i < min(len(entries), want); i++ {
			if terr == nil && len(tile) >= (i+1)*32 && !bytes.Equal(rfc6962.DefaultHasher.HashLeaf(entries[i]), tile[i*32:(i+1)*32]) {
				at = ri.Index*layout.EntryBundleWidth + uint64(i)
				break
			}
		}
		why := fmt.Sprintf("it holds %d entries, %d expected", len(entries), max(want, int(ri.Partial)))
		if perr != nil {
			why = perr.Error()
		}
		b.fatal = true
		b.finds = append(b.finds, Finding{FindBundleMalformed, ptr(at), fmt.Sprintf("%s cannot be read as the log's entries (%s); the entries from index %d on were altered", path, why, at)})
		return b
	}
	b.hashes = make([][]byte, ri.N)
	b.records = make([]*audit.Record, ri.N)
	for i := range int(ri.N) {
		idx := b.first + uint64(i)
		data := entries[int(ri.First)+i]
		b.hashes[i] = rfc6962.DefaultHasher.HashLeaf(data)
		rec, err := audit.Decode(data)
		if err != nil {
			b.finds = append(b.finds, Finding{FindRecordMalformed, ptr(idx), err.Error()})
		} else {
			b.records[i] = rec
			if w.opts.Evidence && rec.EvidenceDigest != nil {
				b.finds = append(b.finds, w.checkEvidence(ctx, idx, rec)...)
			}
		}
		if terr == nil && b.tile0 == nil && (len(tile) < (int(ri.First)+i+1)*32 || !bytes.Equal(b.hashes[i], tile[(int(ri.First)+i)*32:(int(ri.First)+i+1)*32])) {
			b.tile0 = ptr(idx)
		}
	}
	if ri.First == 0 && int(ri.N) == layout.EntryBundleWidth {
		r := rf.NewEmptyRange(b.first)
		for _, h := range b.hashes {
			if err := r.Append(h, nil); err != nil {
				b.err = err
				return b
			}
		}
		b.subtree = r
	}
	return b
}

// parseBundle splits a C2SP tlog-tiles entry bundle: entries prefixed by
// their 16-bit big-endian length. On error it returns what parsed.
func parseBundle(raw []byte) ([][]byte, error) {
	out := make([][]byte, 0, layout.EntryBundleWidth)
	for i := 0; i < len(raw); {
		if len(out) == layout.EntryBundleWidth {
			return out, fmt.Errorf("%d bytes after entry %d", len(raw)-i, len(out)-1)
		}
		if i+2 > len(raw) {
			return out, fmt.Errorf("a dangling byte after entry %d", len(out)-1)
		}
		n := int(binary.BigEndian.Uint16(raw[i:]))
		if i+2+n > len(raw) {
			return out, fmt.Errorf("entry %d claims %d bytes, %d remain", len(out), n, len(raw)-i-2)
		}
		out = append(out, raw[i+2:i+2+n])
		i += 2 + n
	}
	return out, nil
}

// checkEvidence checks a record's archived evidence.
func (w *walker) checkEvidence(ctx context.Context, idx uint64, rec *audit.Record) []Finding {
	ev, err := w.opts.Source.ReadEvidence(ctx, rec.EvidenceDigest)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return []Finding{{FindEvidenceMissing, ptr(idx), fmt.Sprintf("the evidence %x the record names is not in the archive", rec.EvidenceDigest)}}
	case err != nil:
		return []Finding{{FindEvidenceMissing, ptr(idx), fmt.Sprintf("the evidence %x cannot be read: %v", rec.EvidenceDigest, err)}}
	}
	if sum := sha256.Sum256(ev); !bytes.Equal(sum[:], rec.EvidenceDigest) {
		return []Finding{{FindEvidenceAltered, ptr(idx), fmt.Sprintf("the archived evidence %x hashes to %x", rec.EvidenceDigest, sum)}}
	}
	w.evidence.Add(1)
	return nil
}

// absorb adds a bundle's leaves to the tree, in log order.
func (w *walker) absorb(ctx context.Context, b *bundle) error {
	if b.tileErr != nil {
		if errors.Is(b.tileErr, fs.ErrNotExist) {
			w.tileMismatches = append(w.tileMismatches, Finding{FindTileMissing, ptr(b.first), fmt.Sprintf("%s is missing", layout.TilePath(0, b.ri.Index, b.ri.Partial))})
		} else {
			return fmt.Errorf("reading %s: %w", layout.TilePath(0, b.ri.Index, b.ri.Partial), b.tileErr)
		}
	} else if b.tile0 != nil {
		if w.firstLeafMismatch == nil {
			w.firstLeafMismatch = b.tile0
		}
		w.tileMismatches = append(w.tileMismatches, Finding{FindTileAltered, b.tile0, fmt.Sprintf("%s does not hold the leaf hash of entry %d", layout.TilePath(0, b.ri.Index, b.ri.Partial), *b.tile0)})
	}
	for i, h := range b.hashes {
		idx := b.first + uint64(i)
		if w.st != nil && idx < w.st.Size && w.firstPrefixDiff == nil && !bytes.Equal(h[:prefixLen], w.st.LeafPrefixes[idx*prefixLen:(idx+1)*prefixLen]) {
			w.firstPrefixDiff = ptr(idx)
		}
		w.prefixes = append(w.prefixes, h[:prefixLen]...)
	}
	inside := w.st != nil && w.st.Size > b.first && w.st.Size < b.first+uint64(len(b.hashes))
	if b.subtree != nil && w.tree.End() == b.first && !inside {
		w.visit(ctx, compact.NewNodeID(8, b.ri.Index), b.subtree.Hashes()[0])
		if err := w.tree.AppendRange(b.subtree, func(id compact.NodeID, h []byte) { w.visit(ctx, id, h) }); err != nil {
			return err
		}
		w.atStateSize()
	} else {
		for _, h := range b.hashes {
			if err := w.tree.Append(h, func(id compact.NodeID, h []byte) { w.visit(ctx, id, h) }); err != nil {
				return err
			}
			w.atStateSize()
		}
	}
	for i, rec := range b.records {
		if rec == nil {
			continue
		}
		idx := b.first + uint64(i)
		w.rep.Records++
		w.rep.ByKind[string(rec.Kind)]++
		w.rep.ByOutcome[rec.Outcome]++
		if w.opts.OnRecord != nil {
			w.opts.OnRecord(idx, rec)
		}
		if w.re != nil {
			w.re.record(ctx, idx, rec)
		}
	}
	return nil
}

// atStateSize compares the tree with the state's root when it reaches the
// size last verified.
func (w *walker) atStateSize() {
	if w.st == nil || w.st.Size == 0 || w.tree.End() != w.st.Size {
		return
	}
	root, err := w.tree.GetRootHash(nil)
	if err != nil {
		return
	}
	if !bytes.Equal(root, w.st.Root) {
		// Classified in finish: a rewritten history when the entries add up
		// to the signed root, altered entries when they do not.
		w.stateDiffers = true
	} else if w.proofFailed != nil {
		w.rep.add(FindInconsistent, ptr(w.st.Size), "the entries are consistent with the last checkpoint seen, but the log's tiles give no valid consistency proof from size %d: %v", w.st.Size, w.proofFailed)
	}
	w.proofFailed = nil
}

// visit derives the upper-level tiles (levels 8, 16, ... of the tree) and
// compares each completed tile with the log's.
func (w *walker) visit(ctx context.Context, id compact.NodeID, h []byte) {
	if id.Level == 0 || id.Level%layout.TileHeight != 0 {
		return
	}
	k := compact.NodeID{Level: id.Level / layout.TileHeight, Index: id.Index / layout.TileWidth}
	w.pending[k] = append(w.pending[k], h)
	if len(w.pending[k]) == layout.TileWidth {
		w.compareTile(ctx, k, w.pending[k])
		delete(w.pending, k)
	}
}

func (w *walker) compareTile(ctx context.Context, k compact.NodeID, nodes [][]byte) {
	p := uint8(len(nodes) % layout.TileWidth)
	path := layout.TilePath(uint64(k.Level), k.Index, p)
	got, err := w.opts.Source.ReadTile(ctx, uint64(k.Level), k.Index, p)
	span := uint64(1) << (uint(k.Level) * layout.TileHeight)
	if err != nil {
		w.tileMismatches = append(w.tileMismatches, Finding{FindTileMissing, ptr(k.Index * layout.TileWidth * span), fmt.Sprintf("%s cannot be read: %v", path, err)})
		return
	}
	for j, n := range nodes {
		if len(got) < (j+1)*32 || !bytes.Equal(got[j*32:(j+1)*32], n) {
			from := (k.Index*layout.TileWidth + uint64(j)) * span
			f := Finding{FindTileAltered, ptr(from), fmt.Sprintf("%s node %d (over entries %d–%d) differs from the tree of the entries", path, j, from, from+span-1)}
			w.tileMismatches = append(w.tileMismatches, f)
			if w.upperMismatch == nil {
				w.upperMismatch = &f
			}
			return
		}
	}
}

// finish compares the recomputed root with the signed one and classifies
// the mismatches seen on the way.
func (w *walker) finish() {
	if w.stopped {
		return
	}
	for k, nodes := range w.pending {
		w.compareTile(context.Background(), k, nodes)
	}
	root := rfc6962.DefaultHasher.EmptyRoot()
	if w.tree.End() > 0 {
		var err error
		if root, err = w.tree.GetRootHash(nil); err != nil {
			w.rep.add(FindRootMismatch, nil, "the tree cannot be computed: %v", err)
			return
		}
	}
	if w.proofFailed != nil && w.st != nil && w.tree.End() < w.st.Size {
		w.proofFailed = nil // reported as truncated
	}
	if bytes.Equal(root, w.cp.Hash) {
		// The entries are what the signed root commits to: any tile that
		// disagrees was altered on its own.
		for _, f := range w.tileMismatches {
			w.rep.add(f.Kind, f.Index, "%s", f.Detail)
		}
		if w.stateDiffers {
			at, detail := w.firstPrefixDiff, "the first changed entry could not be told"
			if at != nil {
				detail = fmt.Sprintf("entries from index %d on differ from those seen", *at)
			}
			w.rep.add(FindRewritten, at, "the first %d entries no longer hash to the root verified at %s: %s; the log's history was rewritten and signed again with the log's key", w.st.Size, w.st.VerifiedAt.Format(time.RFC3339), detail)
		}
		return
	}
	switch {
	case w.firstLeafMismatch != nil:
		w.rep.add(FindEntryAltered, w.firstLeafMismatch, "entry %d does not hash to the leaf hash the log's tiles commit to, and the entries do not add up to the signed root %x", *w.firstLeafMismatch, w.cp.Hash)
	case w.upperMismatch != nil:
		w.rep.add(FindEntryAltered, w.upperMismatch.Index, "the entries do not add up to the signed root, and differ from the tree the log's tiles hold from index %d on (entries and their leaf tile were changed together): %s", *w.upperMismatch.Index, w.upperMismatch.Detail)
	default:
		w.rep.add(FindRootMismatch, nil, "the %d entries hash to %x, but the checkpoint signs %x", w.tree.End(), root, w.cp.Hash)
	}
}
