// Package witness cosigns the checkpoints of a Vouch audit log after
// verifying them, so that auditors can tell when the log shows them a
// history other than the one it showed everybody else (a split view).
//
// A witness is an auditor that publishes what it saw: each Observe runs the
// full auditor.Verify (signature, consistency with the last checkpoint it
// cosigned, every entry, tile and record) and, only when nothing is wrong,
// adds its own signature to the log's checkpoint: a C2SP tlog-cosignature
// (cosignature/v1, Ed25519 over the checkpoint and the time of signing),
// the format transparency-log witnesses use. It never cosigns a
// checkpoint that does not extend the one it cosigned before. Auditors pass
// the cosigned checkpoints to auditor.Options.Witnessed; a log operator who
// rewrites history for some auditors would have to fool every witness too.
//
// The witness runs apart from the verifier (another host, another operator)
// with its own Ed25519 note key; it needs only read access to the log.
package witness

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"

	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/audit/auditor"
)

// CheckpointPath is where a witness serves its latest cosigned checkpoint.
const CheckpointPath = "/checkpoint"

// Options configure a Witness.
type Options struct {
	// Source is the log, as auditors read it. Required.
	Source auditor.Source
	// LogKey is the log's checkpoint verifier key. Required: a witness
	// never trusts the key a log publishes.
	LogKey string
	// SignerKey is the witness's note signer key (GenerateKey). Required.
	SignerKey string
	// StatePath keeps the last checkpoint verified (auditor.State); the
	// cosigned checkpoint is kept beside it (StatePath + ".cosigned").
	// Required: without it a restarted witness could be made to cosign a
	// rewritten history.
	StatePath string
	// Evidence also checks every archived evidence file.
	Evidence bool
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
}

// Witness verifies and cosigns checkpoints. Safe for concurrent use.
type Witness struct {
	opts   Options
	signer note.Signer   // cosignature/v1 (C2SP tlog-cosignature)
	self   note.Verifier // the witness's own verifier
	vkey   string
	logV   note.Verifier

	observe sync.Mutex // one Observe at a time
	mu      sync.RWMutex
	latest  []byte
	report  *auditor.Report
	at      time.Time
}

// GenerateKey returns a new witness signer key (an Ed25519 note key) and
// its verifier key for cosignature/v1, for the witness name (e.g.
// "witness.example.org").
func GenerateKey(name string) (signer, verifier string, err error) {
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		return "", "", err
	}
	vkey, err = fnote.VKeyToCosignatureV1(vkey)
	return skey, vkey, err
}

// New checks opts and loads the checkpoint cosigned before, if any.
func New(opts Options) (*Witness, error) {
	if opts.Source == nil || opts.LogKey == "" || opts.SignerKey == "" || opts.StatePath == "" {
		return nil, errors.New("witness: Source, LogKey, SignerKey and StatePath are required")
	}
	signer, err := fnote.NewSignerForCosignatureV1(opts.SignerKey)
	if err != nil {
		return nil, fmt.Errorf("witness: signer key: %w", err)
	}
	vkey, err := audit.VerifierKeyOf(opts.SignerKey)
	if err == nil {
		vkey, err = fnote.VKeyToCosignatureV1(vkey)
	}
	if err != nil {
		return nil, fmt.Errorf("witness: signer key: %w", err)
	}
	self, err := fnote.NewVerifierForCosignatureV1(vkey)
	if err != nil {
		return nil, fmt.Errorf("witness: signer key: %w", err)
	}
	logV, err := note.NewVerifier(opts.LogKey)
	if err != nil {
		return nil, fmt.Errorf("witness: log key %q: %w", opts.LogKey, err)
	}
	if logV.Name() == self.Name() {
		return nil, fmt.Errorf("witness: the witness key is named %q like the log; give the witness its own name", self.Name())
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	w := &Witness{opts: opts, signer: signer, self: self, vkey: vkey, logV: logV}
	b, err := os.ReadFile(w.cosignedPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("witness: %w", err)
	case len(b) > auditor.MaxCheckpoint:
		return nil, fmt.Errorf("witness: %s is %d bytes, over the %d-byte bound", w.cosignedPath(), len(b), auditor.MaxCheckpoint)
	default:
		if _, err := note.Open(b, note.VerifierList(logV, self)); err != nil {
			return nil, fmt.Errorf("witness: %s does not verify with the log's and this witness's keys: %w", w.cosignedPath(), err)
		}
		w.latest = b
	}
	return w, nil
}

// Name is the witness's key name.
func (w *Witness) Name() string { return w.signer.Name() }

// VerifierKey is the witness's public key for cosignature/v1, for auditors
// (WitnessKeys).
func (w *Witness) VerifierKey() string { return w.vkey }

func (w *Witness) cosignedPath() string { return w.opts.StatePath + ".cosigned" }

// Observe verifies the log and, when nothing is wrong, cosigns its
// checkpoint. The report says what was checked and found; the error is for
// failures to run and for a log that did not verify (then nothing is
// cosigned and the last cosigned checkpoint stays).
func (w *Witness) Observe(ctx context.Context) (*auditor.Report, error) {
	w.observe.Lock()
	defer w.observe.Unlock()
	rep, err := auditor.Verify(ctx, auditor.Options{Source: w.opts.Source, PublicKey: w.opts.LogKey,
		StatePath: w.opts.StatePath, Evidence: w.opts.Evidence})
	if err != nil {
		return nil, fmt.Errorf("witness: verifying the log: %w", err)
	}
	if !rep.OK() {
		return rep, fmt.Errorf("witness: the log did not verify (%d problem(s), first: %s); nothing cosigned", len(rep.Findings)+int(rep.MoreFindings), rep.Findings[0])
	}
	if !rep.StateSaved {
		return rep, errors.New("witness: the log verified but its state was not saved; nothing cosigned")
	}
	st, err := auditor.LoadState(w.opts.StatePath)
	if err != nil || st == nil {
		return rep, fmt.Errorf("witness: reading back the state: %v", err)
	}
	n, err := note.Open([]byte(st.Checkpoint), note.VerifierList(w.logV))
	if err != nil {
		return rep, fmt.Errorf("witness: the verified checkpoint does not open: %w", err)
	}
	n.Sigs = n.Sigs[:1:1] // the log's signature only; other witnesses cosign for themselves
	signed, err := note.Sign(n, w.signer)
	if err != nil {
		return rep, fmt.Errorf("witness: cosigning: %w", err)
	}
	if err := audit.WriteFileSync(w.cosignedPath(), signed, 0o644, false); err != nil {
		return rep, fmt.Errorf("witness: %w", err)
	}
	w.mu.Lock()
	w.latest, w.report, w.at = signed, rep, time.Now()
	w.mu.Unlock()
	return rep, nil
}

// Checkpoint returns the latest cosigned checkpoint, nil before the first.
func (w *Witness) Checkpoint() []byte {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.latest
}

// Run observes the log every interval until ctx ends, logging each outcome.
func (w *Witness) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		rep, err := w.Observe(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			w.opts.Logger.Error("witness: not cosigned", "log", w.opts.Source.String(), "err", err)
		case err == nil:
			w.opts.Logger.Info("witness: cosigned", "log", w.opts.Source.String(), "size", rep.Size, "root", fmt.Sprintf("%x", rep.Root), "records", rep.Records)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ServeHTTP serves the latest cosigned checkpoint at GET /checkpoint.
func (w *Witness) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if r.URL.Path != CheckpointPath {
		http.NotFound(rw, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		rw.Header().Set("Allow", "GET, HEAD")
		http.Error(rw, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	cp := w.Checkpoint()
	if cp == nil {
		http.Error(rw, "no checkpoint cosigned yet", http.StatusServiceUnavailable)
		return
	}
	rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	rw.Header().Set("Cache-Control", "no-store")
	rw.Write(cp)
}
