// Package auditor verifies a Vouch audit log from outside the verifier,
// trusting nothing it serves: it checks the checkpoint's signature against
// a key the auditor holds, its consistency with the last checkpoint the
// auditor saw (a State file), recomputes the Merkle tree from every entry
// and compares it with the signed root and every tile, decodes every
// record, checks the archived evidence, and can re-run the appraisal of
// every attestation (Reappraise). Tampering is reported as Findings naming
// the kind of tampering and the index it starts at.
package auditor

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"time"

	flog "github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"

	"github.com/vouch-dev/vouch/verifier/audit"
)

// Kinds of Finding. They are stable identifiers.
const (
	FindCheckpointSignature = "checkpoint-signature"   // the checkpoint is not validly signed by the key
	FindCheckpointMalformed = "checkpoint-malformed"   // signed, but not a checkpoint of this log
	FindKeyChanged          = "key-changed"            // the key differs from the one in the state
	FindTruncated           = "truncated"              // the log is smaller than when last seen
	FindRewritten           = "rewritten"              // entries seen before were changed (history rewritten)
	FindInconsistent        = "inconsistent"           // no valid consistency proof from the last checkpoint seen
	FindBundleMissing       = "entry-bundle-missing"   // an entry bundle the checkpoint covers is missing
	FindBundleMalformed     = "entry-bundle-malformed" // an entry bundle cannot be parsed
	FindEntryAltered        = "entry-altered"          // an entry differs from what the tree commits to
	FindTileMissing         = "tile-missing"           // a hash tile the checkpoint covers is missing
	FindTileAltered         = "tile-altered"           // a hash tile differs from the tree of the entries
	FindRootMismatch        = "root-mismatch"          // the entries do not add up to the signed root
	FindRecordMalformed     = "record-malformed"       // an entry is not a valid audit record
	FindEvidenceMissing     = "evidence-missing"       // a record's archived evidence is missing
	FindEvidenceAltered     = "evidence-altered"       // archived evidence does not hash to its record's digest
	FindRefsMissing         = "refs-missing"           // a record's reference set is not archived
	FindRefsAltered         = "refs-altered"           // an archived reference set does not hash to its id
	FindReappraisal         = "reappraisal-differs"    // re-running the appraisal gives another outcome
	FindWitnessSignature    = "witness-signature"      // a witnessed checkpoint does not verify with the log's and a witness's key
	FindSplitView           = "split-view"             // the log shows this auditor a history a witness did not see
)

// maxFindings bounds the findings listed; the rest are counted.
const maxFindings = 1000

// Finding is one thing wrong with the log.
type Finding struct {
	Kind   string  `json:"kind"`
	Index  *uint64 `json:"index,omitempty"` // first log index concerned
	Detail string  `json:"detail"`
}

func (f Finding) String() string {
	if f.Index != nil {
		return fmt.Sprintf("%s at index %d: %s", f.Kind, *f.Index, f.Detail)
	}
	return fmt.Sprintf("%s: %s", f.Kind, f.Detail)
}

// Options configure Verify.
type Options struct {
	Source Source
	// PublicKey is the checkpoint verifier key (note format). When empty,
	// the key pinned in the state is used, else the key the log publishes
	// (trust on first use: the report says so, and the state pins it).
	PublicKey string
	// StatePath, if set, is read before and written after a clean run.
	StatePath string
	// Evidence checks every record's archived evidence against its digest.
	Evidence bool
	// Reappraise re-runs the appraisal of every attestation with archived
	// evidence and reports outcomes that differ (implies Evidence).
	Reappraise bool
	// Workers fetching and hashing entry bundles; GOMAXPROCS when 0.
	Workers int
	// Progress, if set, is called as entries are verified.
	Progress func(done, total uint64)
	// OnRecord, if set, is called with every decoded record, in order.
	OnRecord func(index uint64, r *audit.Record)
	// Witnessed are checkpoints of this log cosigned by witnesses (vouch
	// audit witness); each must verify with the log's key and one of
	// WitnessKeys, and the log must be the tree each witness saw or an
	// extension of it. This catches a log that shows different auditors
	// different histories, which no single auditor's State can.
	Witnessed [][]byte
	// WitnessKeys are the note verifier keys of the witnesses trusted.
	WitnessKeys []string
}

// WitnessedView is what one witness saw of the log.
type WitnessedView struct {
	Witness string `json:"witness"`
	Size    uint64 `json:"size"`
	Root    []byte `json:"root"`
}

// Report is the outcome of Verify.
type Report struct {
	Source       string            `json:"source"`
	Origin       string            `json:"origin"`
	KeySource    string            `json:"key_source"`
	Size         uint64            `json:"size"`
	Root         []byte            `json:"root"`
	PreviousSize *uint64           `json:"previous_size,omitempty"`
	Records      uint64            `json:"records"`
	ByKind       map[string]uint64 `json:"by_kind"`
	ByOutcome    map[string]uint64 `json:"by_outcome"`
	Evidence     uint64            `json:"evidence_checked"`
	Reappraised  uint64            `json:"reappraised"`
	Skipped      map[string]uint64 `json:"reappraisal_skipped,omitempty"`
	Witnessed    []WitnessedView   `json:"witnessed,omitempty"`
	Findings     []Finding         `json:"findings"`
	MoreFindings uint64            `json:"findings_not_listed,omitempty"`
	StateSaved   bool              `json:"state_saved"`
	Elapsed      time.Duration     `json:"elapsed_ns"`
	PerSecond    float64           `json:"records_per_second"`
}

// OK reports whether nothing was found wrong.
func (r *Report) OK() bool { return len(r.Findings) == 0 }

func (r *Report) add(kind string, idx *uint64, format string, args ...any) {
	if len(r.Findings) >= maxFindings {
		r.MoreFindings++
		return
	}
	r.Findings = append(r.Findings, Finding{Kind: kind, Index: idx, Detail: fmt.Sprintf(format, args...)})
}

func ptr(v uint64) *uint64 { return &v }

// Verify verifies the log. Tampering is reported in the Report's Findings;
// the error is for failures to run (an unreachable source, a bad key).
func Verify(ctx context.Context, opts Options) (*Report, error) {
	start := time.Now()
	rep := &Report{Source: opts.Source.String(), ByKind: map[string]uint64{}, ByOutcome: map[string]uint64{}, Findings: []Finding{}}
	if opts.Reappraise {
		opts.Evidence = true
	}
	var st *State
	if opts.StatePath != "" {
		var err error
		if st, err = LoadState(opts.StatePath); err != nil {
			return nil, err
		}
	}
	v, err := resolveKey(ctx, opts, st, rep)
	if err != nil {
		return nil, err
	}
	cp, err := readCheckpoint(ctx, opts.Source, v, rep)
	if err != nil || cp == nil {
		rep.Elapsed = time.Since(start)
		return rep, err
	}
	rep.Origin, rep.Size, rep.Root = cp.Origin, cp.Size, cp.Hash
	w := &walker{opts: opts, rep: rep, cp: cp, st: st}
	if st != nil {
		rep.PreviousSize = ptr(st.Size)
		w.checkAgainstState(ctx)
	}
	if opts.Reappraise {
		w.re = newReappraiser(opts.Source, rep)
	}
	if err := w.walk(ctx); err != nil {
		return nil, err
	}
	w.checkWitnessed(ctx, v)
	rep.Elapsed = time.Since(start)
	if s := rep.Elapsed.Seconds(); s > 0 {
		rep.PerSecond = float64(rep.Records) / s
	}
	if rep.OK() && opts.StatePath != "" && (st == nil || cp.Size >= st.Size) {
		ns := &State{Origin: cp.Origin, PublicKey: w.key, Size: cp.Size, Root: cp.Hash, Checkpoint: string(w.cpRaw), VerifiedAt: time.Now().UTC(), LeafPrefixes: w.prefixes}
		if err := ns.Save(opts.StatePath); err != nil {
			return rep, err
		}
		rep.StateSaved = true
	}
	return rep, nil
}

// resolveKey picks the checkpoint verifier key: given, pinned, or published.
func resolveKey(ctx context.Context, opts Options, st *State, rep *Report) (note.Verifier, error) {
	key := opts.PublicKey
	switch {
	case key != "":
		rep.KeySource = "given (--pubkey)"
		if st != nil && st.PublicKey != key {
			rep.add(FindKeyChanged, nil, "the key given differs from the key %q the state file pinned; if the log's key was rotated on purpose, start a new state file", st.PublicKey)
		}
	case st != nil:
		key, rep.KeySource = st.PublicKey, "pinned by the state file"
	default:
		k, err := opts.Source.ReadKey(ctx)
		if err != nil {
			return nil, fmt.Errorf("no --pubkey given and the log's published key cannot be read: %w", err)
		}
		key, rep.KeySource = k, "published by the log (trusted on first use; pass --pubkey to pin it)"
	}
	v, err := note.NewVerifier(key)
	if err != nil {
		return nil, fmt.Errorf("checkpoint key %q: %w", key, err)
	}
	return keyed{Verifier: v, key: key}, nil
}

// keyed remembers the key text of a verifier, for the state file.
type keyed struct {
	note.Verifier
	key string
}

// readCheckpoint fetches and verifies the checkpoint; nil when it is bad
// (reported as a finding).
func readCheckpoint(ctx context.Context, src Source, v note.Verifier, rep *Report) (*checkpoint, error) {
	raw, err := src.ReadCheckpoint(ctx)
	if errors.Is(err, fs.ErrNotExist) {
		rep.add(FindCheckpointMalformed, nil, "the log has no checkpoint")
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the checkpoint: %w", err)
	}
	n, err := note.Open(raw, note.VerifierList(v))
	if err != nil {
		rep.add(FindCheckpointSignature, nil, "the checkpoint does not verify with key %s: %v", v.Name(), err)
		return nil, nil
	}
	var cp flog.Checkpoint
	if _, err := cp.Unmarshal([]byte(n.Text)); err != nil {
		rep.add(FindCheckpointMalformed, nil, "the signed note is not a checkpoint: %v", err)
		return nil, nil
	}
	if cp.Origin != v.Name() {
		rep.add(FindCheckpointMalformed, nil, "the checkpoint's origin %q is not the key's name %q", cp.Origin, v.Name())
		return nil, nil
	}
	if len(cp.Hash) != sha256.Size {
		rep.add(FindCheckpointMalformed, nil, "the checkpoint's root hash has %d bytes", len(cp.Hash))
		return nil, nil
	}
	return &checkpoint{Checkpoint: cp, raw: raw, key: v.(keyed).key}, nil
}

type checkpoint struct {
	flog.Checkpoint
	raw []byte
	key string
}
