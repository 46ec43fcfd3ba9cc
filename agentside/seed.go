package agentside

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// seedFileName is the simulator seed file in the state directory.
const seedFileName = "sim-seed"

// maxSeedFileSize bounds the seed file read.
const maxSeedFileSize = 64

// loadOrCreateSeed returns the simulator seed kept in stateDir, creating the
// directory (0700) and a random seed (file 0600) the first time. Creation is
// atomic: two agents starting together end up with the same seed.
func loadOrCreateSeed(stateDir string, logger *slog.Logger) (int64, string, error) {
	if stateDir == "" {
		return 0, "", errors.New("the TPM simulator needs a state directory for its seed (OpenOptions.StateDir, --state)")
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return 0, "", fmt.Errorf("creating the state directory: %w", err)
	}
	path := filepath.Join(stateDir, seedFileName)
	seed, err := readSeed(path, logger)
	if err == nil {
		return seed, path, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return 0, "", err
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, "", fmt.Errorf("simulator seed: %w", err)
	}
	seed = int64(binary.BigEndian.Uint64(b[:]))
	tmp, err := os.CreateTemp(stateDir, seedFileName+".*")
	if err != nil {
		return 0, "", fmt.Errorf("writing the simulator seed: %w", err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file 0600.
	_, werr := tmp.WriteString(strconv.FormatInt(seed, 10) + "\n")
	if serr := tmp.Sync(); werr == nil {
		werr = serr
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return 0, "", fmt.Errorf("writing the simulator seed: %w", werr)
	}
	// Link fails if another process created the seed meanwhile: use theirs.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			seed, err := readSeed(path, logger)
			return seed, path, err
		}
		return 0, "", fmt.Errorf("writing the simulator seed: %w", err)
	}
	logger.Info("created a new simulator seed; the simulated TPM has a new AK, enroll it", "seed_file", path)
	return seed, path, nil
}

func readSeed(path string, logger *slog.Logger) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		logger.Warn("the simulator seed file is readable by others; anyone who reads it can compute the simulated TPM's keys", "seed_file", path, "mode", fi.Mode().Perm().String())
	}
	b := make([]byte, maxSeedFileSize+1)
	n, err := f.Read(b)
	if err != nil || n > maxSeedFileSize {
		return 0, fmt.Errorf("simulator seed file %s cannot be read or is too large; remove it to start a new simulated TPM", path)
	}
	seed, err := strconv.ParseInt(strings.TrimSpace(string(b[:n])), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("simulator seed file %s does not hold a decimal int64; remove it to start a new simulated TPM (and enroll its new AK)", path)
	}
	return seed, nil
}
