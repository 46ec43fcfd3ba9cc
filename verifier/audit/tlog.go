package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"
	"golang.org/x/mod/sumdb/note"
)

// Layout of the audit data in the verifier's data directory.
const (
	// LogDirName holds the tlog-tiles log: checkpoint, tile/..., tile/entries/...
	LogDirName = "log"
	// SignerKeyFile is the checkpoint signing key (a note private key, 0600).
	SignerKeyFile = "keys/log-signer.key"
	// PublicKeyFile is the checkpoint verifier key (a note verifier key).
	PublicKeyFile = "log.pub"
	// EvidenceDirName holds the evidence archive: evidence/ab/cdef… (SHA-256).
	EvidenceDirName = "evidence"
	// RefsDirName holds the reference-set archive: refs/<sha256 hex>.cbor.
	RefsDirName = "refs"
)

// Defaults of Options.
const (
	DefaultBatchMaxSize       = 1024
	DefaultBatchMaxAge        = 5 * time.Millisecond
	DefaultCheckpointInterval = time.Second
)

// Options configure Open.
type Options struct {
	// DataDir is the verifier's data directory.
	DataDir string
	// Origin names the log in its checkpoints when the signing key is
	// created (default "vouch.dev/audit/<random>"); an existing key keeps
	// its name.
	Origin string
	// BatchMaxSize and BatchMaxAge bound a batch of records sequenced
	// together: a record waits at most BatchMaxAge for others to share the
	// disk writes (and their fsyncs) with.
	BatchMaxSize uint
	BatchMaxAge  time.Duration
	// CheckpointInterval is how often a new checkpoint is signed when the
	// log grew (at least 100 ms).
	CheckpointInterval time.Duration
	// OnEnqueueError, if set, learns of a record taken by Enqueue that
	// could not be sequenced after all.
	OnEnqueueError func(error)
}

// TLog is the audit log: a transparency log on tessera's POSIX storage in
// DataDir/log. Append returns once the record is durably sequenced and
// integrated into the tree (tessera's POSIX driver writes entry bundles,
// tiles and its tree state with O_SYNC files and fsynced directories before
// the index is handed out); a checkpoint committing to it is signed within
// CheckpointInterval.
type TLog struct {
	dataDir  string
	signer   note.Signer
	vkey     string
	appender *tessera.Appender
	reader   tessera.LogReader
	shutdown func(context.Context) error
	cancel   context.CancelFunc
	onErr    func(error)

	closeOnce sync.Once
	closeErr  error
}

var _ Log = (*TLog)(nil)

// Open opens (creating on first use) the audit log of a data directory.
// Only one process should append to a data directory's log at a time
// (tessera serialises writers with file locks, but vouchd assumes it is the
// only writer when it reports the log's size).
func Open(ctx context.Context, opts Options) (*TLog, error) {
	if opts.DataDir == "" {
		return nil, errors.New("audit: DataDir is required")
	}
	if opts.BatchMaxSize == 0 {
		opts.BatchMaxSize = DefaultBatchMaxSize
	}
	if opts.BatchMaxAge == 0 {
		opts.BatchMaxAge = DefaultBatchMaxAge
	}
	if opts.CheckpointInterval == 0 {
		opts.CheckpointInterval = DefaultCheckpointInterval
	}
	signer, vkey, err := loadOrCreateSigner(opts.DataDir, opts.Origin)
	if err != nil {
		return nil, err
	}
	driver, err := posix.New(ctx, posix.Config{Path: filepath.Join(opts.DataDir, LogDirName)})
	if err != nil {
		return nil, fmt.Errorf("audit: log storage: %w", err)
	}
	// The appender's goroutines live until Close, not until ctx ends.
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ao := tessera.NewAppendOptions().
		WithCheckpointSigner(signer).
		WithBatching(opts.BatchMaxSize, opts.BatchMaxAge).
		WithCheckpointInterval(opts.CheckpointInterval).
		WithPushback(64 << 10)
	app, shutdown, reader, err := tessera.NewAppender(bg, driver, ao)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("audit: opening the log in %s: %w", opts.DataDir, err)
	}
	return &TLog{dataDir: opts.DataDir, signer: signer, vkey: vkey, appender: app, reader: reader, shutdown: shutdown, cancel: cancel,
		onErr: opts.OnEnqueueError}, nil
}

// Append encodes r and appends it. It returns once the entry is durably
// sequenced, with its index.
func (l *TLog) Append(ctx context.Context, r *Record) (uint64, error) {
	b, err := Encode(r)
	if err != nil {
		return 0, err
	}
	return l.AppendRaw(ctx, b)
}

// Enqueue encodes r and hands it to the appender without waiting: it is
// sequenced, durably, with the next batch (within BatchMaxAge). A crash
// before then loses it. See Enqueuer.
func (l *TLog) Enqueue(ctx context.Context, r *Record) error {
	b, err := Encode(r)
	if err != nil {
		return err
	}
	wait := l.Future(context.WithoutCancel(ctx), b)
	go func() {
		if _, err := wait(); err != nil && l.onErr != nil {
			l.onErr(fmt.Errorf("audit: a queued record was not sequenced: %w", err))
		}
	}()
	return nil
}

// AppendRaw appends an encoded record as is (benchmarks and tests of the
// auditor use it; the verifier appends Records).
func (l *TLog) AppendRaw(ctx context.Context, entry []byte) (uint64, error) {
	idx, err := l.appender.Add(ctx, tessera.NewEntry(entry))()
	if err != nil {
		return 0, fmt.Errorf("audit: appending to the log: %w", err)
	}
	return idx.Index, nil
}

// Future appends an encoded record and returns a function that waits for
// its index, so that a caller can queue many records before waiting.
func (l *TLog) Future(ctx context.Context, entry []byte) func() (uint64, error) {
	f := l.appender.Add(ctx, tessera.NewEntry(entry))
	return func() (uint64, error) {
		i, err := f()
		return i.Index, err
	}
}

// Size returns the number of entries integrated into the tree (which a
// published checkpoint covers within CheckpointInterval).
func (l *TLog) Size(ctx context.Context) (uint64, error) { return l.reader.IntegratedSize(ctx) }

// Checkpoint returns the latest published checkpoint (a signed note).
func (l *TLog) Checkpoint(ctx context.Context) ([]byte, error) { return l.reader.ReadCheckpoint(ctx) }

// PublicKey returns the checkpoint verifier key (note verifier key format).
func (l *TLog) PublicKey() string { return l.vkey }

// Origin returns the log's origin line (the signing key's name).
func (l *TLog) Origin() string { return l.signer.Name() }

// DataDir returns the data directory the log lives in.
func (l *TLog) DataDir() string { return l.dataDir }

// Close waits until a checkpoint covers every record appended through this
// TLog (bounded by ctx), then stops the appender. Appends after Close fail.
func (l *TLog) Close(ctx context.Context) error {
	l.closeOnce.Do(func() {
		l.closeErr = l.shutdown(ctx)
		l.cancel()
	})
	return l.closeErr
}

// loadOrCreateSigner reads the checkpoint signing key from the data
// directory, creating it (0600) and the public key file on first use.
func loadOrCreateSigner(dataDir, origin string) (note.Signer, string, error) {
	path := filepath.Join(dataDir, SignerKeyFile)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if origin == "" {
			var r [4]byte
			if _, err := rand.Read(r[:]); err != nil {
				return nil, "", err
			}
			origin = "vouch.dev/audit/" + hex.EncodeToString(r[:])
		}
		skey, _, err := note.GenerateKey(rand.Reader, origin)
		if err != nil {
			return nil, "", fmt.Errorf("audit: generating the checkpoint key: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, "", fmt.Errorf("audit: %w", err)
		}
		if err := WriteFileSync(path, []byte(skey+"\n"), 0o600, true); err != nil {
			return nil, "", fmt.Errorf("audit: writing the checkpoint key: %w", err)
		}
		b = []byte(skey)
	case err != nil:
		return nil, "", fmt.Errorf("audit: reading the checkpoint key: %w", err)
	default:
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
			return nil, "", fmt.Errorf("audit: %s is readable by other users (mode %v); chmod 600 it", path, fi.Mode().Perm())
		}
	}
	skey := strings.TrimSpace(string(b))
	signer, err := note.NewSigner(skey)
	if err != nil {
		return nil, "", fmt.Errorf("audit: the checkpoint key %s: %w", path, err)
	}
	vkey, err := VerifierKeyOf(skey)
	if err != nil {
		return nil, "", fmt.Errorf("audit: the checkpoint key %s: %w", path, err)
	}
	if err := WriteFileSync(filepath.Join(dataDir, PublicKeyFile), []byte(vkey+"\n"), 0o644, false); err != nil {
		return nil, "", fmt.Errorf("audit: writing the public key: %w", err)
	}
	return signer, vkey, nil
}

// VerifierKeyOf derives the verifier key ("name+hash+base64(alg‖pub)")
// from a note private key ("PRIVATE+KEY+name+hash+base64(alg‖seed)").
func VerifierKeyOf(skey string) (string, error) {
	parts := strings.SplitN(skey, "+", 5)
	if len(parts) != 5 || parts[0] != "PRIVATE" || parts[1] != "KEY" {
		return "", errors.New("not a note private key (PRIVATE+KEY+name+hash+key)")
	}
	key, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(key) != 1+ed25519.SeedSize || key[0] != 1 {
		return "", errors.New("not an Ed25519 note private key")
	}
	pub := ed25519.NewKeyFromSeed(key[1:]).Public().(ed25519.PublicKey)
	return note.NewEd25519VerifierKey(parts[2], pub)
}

// WriteFileSync writes a file atomically (temporary file, fsync, rename,
// fsync of the directory); with exclusive, it fails if path exists.
func WriteFileSync(path string, data []byte, perm os.FileMode, exclusive bool) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if exclusive {
		if err := os.Link(tmp, path); err != nil {
			return err
		}
	} else if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
