package auditor

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/transparency-dev/tessera/api/layout"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/verifier/audit"
)

// Size limits of what a source may return; anything larger is refused
// before it is buffered.
const (
	maxCheckpointSize = 64 << 10
	maxKeySize        = 4 << 10
	maxTileSize       = layout.TileWidth * 32
	maxBundleSize     = layout.EntryBundleWidth * (2 + audit.MaxRecordSize)
)

// Source is where an auditor reads a log from: the verifier's data
// directory, or vouchd's /v1/log/ over HTTP. Missing resources are errors
// wrapping fs.ErrNotExist.
type Source interface {
	ReadCheckpoint(ctx context.Context) ([]byte, error)
	ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error)
	ReadEntryBundle(ctx context.Context, index uint64, p uint8) ([]byte, error)
	ReadEvidence(ctx context.Context, digest []byte) ([]byte, error)
	ReadRefs(ctx context.Context, id string) ([]byte, error)
	// ReadKey returns the checkpoint verifier key the log publishes (to be
	// trusted on first use only; see Options.PublicKey).
	ReadKey(ctx context.Context) (string, error)
	String() string
}

// OpenSource returns the source at loc: an http(s) URL of a vouchd (its
// base URL or its /v1/log/ URL) or a directory: a verifier's data directory
// or the log directory inside it.
func OpenSource(loc string, hc *http.Client) (Source, error) {
	if strings.HasPrefix(loc, "http://") || strings.HasPrefix(loc, "https://") {
		u, err := url.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("log URL %q: %w", loc, err)
		}
		if !strings.Contains(u.Path, "/v1/log") {
			u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/log"
		}
		if !strings.HasSuffix(u.Path, "/") {
			u.Path += "/"
		}
		if hc == nil {
			hc = &http.Client{Timeout: 30 * time.Second}
		}
		return &httpSource{base: u, hc: hc}, nil
	}
	fi, err := os.Stat(loc)
	if err != nil {
		return nil, fmt.Errorf("log directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("log directory %s is not a directory", loc)
	}
	d := &dirSource{dataDir: loc, logDir: filepath.Join(loc, audit.LogDirName)}
	if _, err := os.Stat(filepath.Join(d.logDir, layout.CheckpointPath)); err != nil {
		if _, err2 := os.Stat(filepath.Join(loc, layout.CheckpointPath)); err2 == nil {
			// loc is the log directory itself.
			d.logDir, d.dataDir = loc, filepath.Dir(loc)
		} else {
			return nil, fmt.Errorf("%s holds no audit log (no %s or %s/%s)", loc, layout.CheckpointPath, audit.LogDirName, layout.CheckpointPath)
		}
	}
	return d, nil
}

// partialOrFull fetches a partial resource and falls back to the full one
// (the tree may have grown past it), trimming a full tile to the width asked.
func partialOrFull(ctx context.Context, p uint8, f func(context.Context, uint8) ([]byte, error)) ([]byte, error) {
	b, err := f(ctx, p)
	if errors.Is(err, fs.ErrNotExist) && p > 0 {
		return f(ctx, 0)
	}
	return b, err
}

type dirSource struct {
	dataDir, logDir string
}

func (d *dirSource) String() string { return d.dataDir }

func readFileLimit(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}

func (d *dirSource) ReadCheckpoint(_ context.Context) ([]byte, error) {
	return readFileLimit(filepath.Join(d.logDir, layout.CheckpointPath), maxCheckpointSize)
}

func (d *dirSource) ReadTile(ctx context.Context, l, i uint64, p uint8) ([]byte, error) {
	b, err := partialOrFull(ctx, p, func(_ context.Context, p uint8) ([]byte, error) {
		return readFileLimit(filepath.Join(d.logDir, layout.TilePath(l, i, p)), maxTileSize)
	})
	return trimTile(b, p), err
}

func (d *dirSource) ReadEntryBundle(ctx context.Context, i uint64, p uint8) ([]byte, error) {
	return partialOrFull(ctx, p, func(_ context.Context, p uint8) ([]byte, error) {
		return readFileLimit(filepath.Join(d.logDir, layout.EntriesPath(i, p)), maxBundleSize)
	})
}

func (d *dirSource) ReadEvidence(_ context.Context, digest []byte) ([]byte, error) {
	return readFileLimit(audit.EvidencePath(d.dataDir, digest), attest.MaxEvidenceSize)
}

func (d *dirSource) ReadRefs(_ context.Context, id string) ([]byte, error) {
	p, err := audit.RefsPath(d.dataDir, id)
	if err != nil {
		return nil, err
	}
	return readFileLimit(p, policy.MaxCanonicalRefsSize)
}

func (d *dirSource) ReadKey(_ context.Context) (string, error) {
	b, err := readFileLimit(filepath.Join(d.dataDir, audit.PublicKeyFile), maxKeySize)
	return strings.TrimSpace(string(b)), err
}

type httpSource struct {
	base *url.URL
	hc   *http.Client
	// sleep waits before a request refused with 429 is sent again; nil
	// waits on a timer (tests record the waits instead).
	sleep func(ctx context.Context, d time.Duration) error
}

func (h *httpSource) String() string { return h.base.String() }

// vouchd limits how fast one client reads its log (--rate-read): a whole
// log is thousands of tiles and bundles, so an auditor that is refused with
// 429 waits for the Retry-After the verifier asks for, then asks again, a
// bounded number of times per resource.
const (
	maxRateLimitedRetries = 20
	maxRetryAfter         = time.Minute
)

func (h *httpSource) wait(ctx context.Context, d time.Duration) error {
	if h.sleep != nil {
		return h.sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (h *httpSource) get(ctx context.Context, p string, max int64) ([]byte, error) {
	u := h.base.JoinPath(p)
	var resp *http.Response
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, err
		}
		if resp, err = h.hc.Do(req); err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusTooManyRequests || attempt == maxRateLimitedRetries {
			break
		}
		d := attest.RetryAfter(resp, time.Now(), maxRetryAfter)
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if err := h.wait(ctx, d); err != nil {
			return nil, fmt.Errorf("GET %s: waiting %v as the verifier asked (429): %w", u, d, err)
		}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("GET %s: %w", u, fs.ErrNotExist)
	case resp.StatusCode == http.StatusTooManyRequests:
		return nil, fmt.Errorf("GET %s: still refused after %d waits: %w", u, maxRateLimitedRetries, attest.ReadProblem(resp))
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("GET %s: larger than %d bytes", u, max)
	}
	return b, nil
}

func (h *httpSource) ReadCheckpoint(ctx context.Context) ([]byte, error) {
	return h.get(ctx, layout.CheckpointPath, maxCheckpointSize)
}

func (h *httpSource) ReadTile(ctx context.Context, l, i uint64, p uint8) ([]byte, error) {
	b, err := partialOrFull(ctx, p, func(ctx context.Context, p uint8) ([]byte, error) {
		return h.get(ctx, layout.TilePath(l, i, p), maxTileSize)
	})
	return trimTile(b, p), err
}

func (h *httpSource) ReadEntryBundle(ctx context.Context, i uint64, p uint8) ([]byte, error) {
	return partialOrFull(ctx, p, func(ctx context.Context, p uint8) ([]byte, error) {
		return h.get(ctx, layout.EntriesPath(i, p), maxBundleSize)
	})
}

func (h *httpSource) ReadEvidence(ctx context.Context, digest []byte) ([]byte, error) {
	return h.get(ctx, "evidence/"+hex.EncodeToString(digest), attest.MaxEvidenceSize)
}

func (h *httpSource) ReadRefs(ctx context.Context, id string) ([]byte, error) {
	hexID, ok := strings.CutPrefix(id, "sha256:")
	if !ok {
		return nil, fmt.Errorf("reference-set id %q is not sha256:<hex>", id)
	}
	return h.get(ctx, "refs/"+hexID, policy.MaxCanonicalRefsSize)
}

func (h *httpSource) ReadKey(ctx context.Context) (string, error) {
	b, err := h.get(ctx, "key", maxKeySize)
	return strings.TrimSpace(string(b)), err
}

// trimTile cuts a full tile served for a partial request to the width asked.
func trimTile(b []byte, p uint8) []byte {
	if p > 0 && len(b) > int(p)*32 {
		return b[:int(p)*32]
	}
	return b
}
