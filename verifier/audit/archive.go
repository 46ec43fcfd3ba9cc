package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/vouch-dev/vouch/policy"
)

// Archive keeps what decisions were made on, content-addressed, so that an
// auditor can re-run an appraisal: the raw evidence of every attestation
// (DataDir/evidence/ab/cdef…, named by its SHA-256) and every reference set
// the verifier loaded (DataDir/refs/<hex>.cbor, named by its id; the file
// is the canonical encoding the id hashes). Files are written atomically
// and fsynced before the record naming them is appended.
type Archive struct {
	dataDir string
}

// NewArchive returns the archive of a data directory.
func NewArchive(dataDir string) *Archive { return &Archive{dataDir: dataDir} }

// EvidencePath is where evidence with the given SHA-256 is archived.
func EvidencePath(dataDir string, digest []byte) string {
	h := hex.EncodeToString(digest)
	return filepath.Join(dataDir, EvidenceDirName, h[:2], h[2:])
}

var refsID = regexp.MustCompile(`^sha256:([0-9a-f]{64})$`)

// RefsPath is where the reference set with the given id is archived.
func RefsPath(dataDir, id string) (string, error) {
	m := refsID.FindStringSubmatch(id)
	if m == nil {
		return "", fmt.Errorf("reference-set id %q is not sha256:<64 hex>", id)
	}
	return filepath.Join(dataDir, RefsDirName, m[1]+".cbor"), nil
}

// PutEvidence archives raw evidence and returns its SHA-256. Evidence
// already archived is not written again.
func (a *Archive) PutEvidence(raw []byte) ([]byte, error) {
	sum := sha256.Sum256(raw)
	path := EvidencePath(a.dataDir, sum[:])
	if err := a.put(path, raw); err != nil {
		return nil, fmt.Errorf("archiving evidence: %w", err)
	}
	return sum[:], nil
}

// PutRefs archives a reference set under its id. The verifier calls it for
// every set it loads, before the set is used.
func (a *Archive) PutRefs(refs *policy.RefSet) error {
	path, err := RefsPath(a.dataDir, refs.ID())
	if err != nil {
		return err
	}
	b, err := refs.Canonical()
	if err != nil {
		return fmt.Errorf("archiving reference set: %w", err)
	}
	if sum := sha256.Sum256(b); "sha256:"+hex.EncodeToString(sum[:]) != refs.ID() {
		return errors.New("archiving reference set: its canonical encoding does not hash to its id")
	}
	if err := a.put(path, b); err != nil {
		return fmt.Errorf("archiving reference set %s: %w", refs.ID(), err)
	}
	return nil
}

// put writes data at path unless a file of the same size is there already
// (names are digests of the content).
func (a *Archive) put(path string, data []byte) error {
	if fi, err := os.Stat(path); err == nil && fi.Size() == int64(len(data)) {
		return nil
	}
	if err := mkdirSync(filepath.Dir(path), a.dataDir); err != nil {
		return err
	}
	return WriteFileSync(path, data, 0o600, false)
}

// mkdirSync creates dir and its missing parents up to (excluding) root,
// fsyncing each parent a directory was created in.
func mkdirSync(dir, root string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir && strings.HasPrefix(parent, root) && parent != root {
		if err := mkdirSync(parent, root); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	return syncDir(parent)
}
