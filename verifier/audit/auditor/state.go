package auditor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/vouch-dev/vouch/verifier/audit"
)

// stateVersion is the version of the state file format.
const stateVersion = 1

// prefixLen is how many bytes of each leaf hash the state keeps: enough to
// name the first entry a rewritten history changed (detection itself rests
// on the full root hash).
const prefixLen = 4

// maxStateSize bounds a state file: 1e8 entries' prefixes, base64.
const maxStateSize = 600 << 20

// State is what an auditor remembers of the log between runs (--state): the
// last checkpoint it verified, the key it verified it with, and a short
// prefix of every leaf hash, so that a history rewritten since is caught
// and the first rewritten entry named.
type State struct {
	Version    int       `json:"version"`
	Origin     string    `json:"origin"`
	PublicKey  string    `json:"public_key"`
	Size       uint64    `json:"size"`
	Root       []byte    `json:"root"`
	Checkpoint string    `json:"checkpoint"`
	VerifiedAt time.Time `json:"verified_at"`
	// LeafPrefixes holds the first 4 bytes of each leaf hash, in order.
	LeafPrefixes []byte `json:"leaf_prefixes"`
}

// LoadState reads a state file; a missing file is (nil, nil).
func LoadState(path string) (*State, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("auditor state: %w", err)
	}
	defer f.Close()
	var s State
	dec := json.NewDecoder(io.LimitReader(f, maxStateSize))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("auditor state %s: %w", path, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("auditor state %s: version %d, want %d", path, s.Version, stateVersion)
	}
	if uint64(len(s.LeafPrefixes)) != s.Size*prefixLen || len(s.Root) != 32 {
		return nil, fmt.Errorf("auditor state %s: inconsistent (size %d, %d prefix bytes, root of %d bytes)", path, s.Size, len(s.LeafPrefixes), len(s.Root))
	}
	return &s, nil
}

// Save writes the state atomically.
func (s *State) Save(path string) error {
	s.Version = stateVersion
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := audit.WriteFileSync(path, b, 0o600, false); err != nil {
		return fmt.Errorf("auditor state: %w", err)
	}
	return nil
}
