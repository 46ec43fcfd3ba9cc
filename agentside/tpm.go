package agentside

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	gecel "github.com/google/go-eventlog/cel"
	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/legacy/tpm2"
)

// SpecSimulator is the TPM spec of the in-process simulator (insecure,
// development only; see the package documentation).
const SpecSimulator = "sim"

// ErrNotSupported is returned by [Open] for TPM specs that are recognised but
// not implemented yet, and by operations a TPM kind cannot do.
var ErrNotSupported = errors.New("not supported yet")

// OpenOptions configures [Open].
type OpenOptions struct {
	// StateDir is where the agent keeps state between runs. For "sim" it
	// holds the simulator seed (file "sim-seed", mode 0600) that makes the
	// simulated TPM, and so its AK, the same on every run. It is created
	// (mode 0700) if missing. Required for "sim"; see [DefaultStateDir].
	StateDir string
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// DefaultStateDir returns $XDG_STATE_HOME/vouch-agent, or
// ~/.local/state/vouch-agent when XDG_STATE_HOME is unset.
func DefaultStateDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "vouch-agent"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("finding the state directory: %w; pass --state", err)
	}
	return filepath.Join(home, ".local", "state", "vouch-agent"), nil
}

// specKind is the kind of TPM a spec names.
type specKind int

const (
	kindSimulator specKind = iota + 1
	kindSWTPM
	kindDevice
)

// tpmSpec is a parsed TPM spec.
type tpmSpec struct {
	kind specKind
	addr string // swtpm data channel, host:port
	path string // device path
}

// parseSpec parses "sim", "swtpm:HOST:PORT" or an absolute device path.
func parseSpec(spec string) (tpmSpec, error) {
	switch {
	case spec == SpecSimulator:
		return tpmSpec{kind: kindSimulator}, nil
	case strings.HasPrefix(spec, "swtpm:"):
		hostPort := strings.TrimPrefix(spec, "swtpm:")
		host, portStr, err := net.SplitHostPort(hostPort)
		if err != nil || host == "" {
			return tpmSpec{}, fmt.Errorf("TPM spec %q: want swtpm:HOST:PORT (e.g. swtpm:localhost:2321)", spec)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil || port < 1 || port > 65535 {
			return tpmSpec{}, fmt.Errorf("TPM spec %q: port %q is not a number between 1 and 65535", spec, portStr)
		}
		return tpmSpec{kind: kindSWTPM, addr: net.JoinHostPort(host, strconv.Itoa(port))}, nil
	case strings.HasPrefix(spec, "/"):
		return tpmSpec{kind: kindDevice, path: filepath.Clean(spec)}, nil
	}
	return tpmSpec{}, fmt.Errorf("TPM spec %q: use %q (in-process simulator, insecure), swtpm:HOST:PORT or a device path such as /dev/tpmrm0", spec, SpecSimulator)
}

// TPM is an open TPM with the state the agent keeps about it: the firmware
// event log and the canonical event log of the workload measurements. Its
// methods are safe for concurrent use; every TPM command runs under one mutex.
type TPM struct {
	mu     sync.Mutex
	rwc    io.ReadWriteCloser // nil once closed
	spec   string
	kind   specKind
	log    *slog.Logger
	banks  []tpm2.PCRSelection // allocated PCR banks
	closed bool

	firmwareLog []byte    // TCG PC Client event log
	booted      bool      // Boot ran (simulator)
	cel         gecel.CEL // workload measurements, nil until MeasureWorkload
	celBytes    []byte

	agents map[*Agent]struct{} // open agents, flushed on Close
}

// Open opens the TPM that spec names. For "sim" it blocks while another
// simulator is open in this process (there is only one), until ctx ends.
func Open(ctx context.Context, spec string, opts OpenOptions) (*TPM, error) {
	ps, err := parseSpec(spec)
	if err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	t := &TPM{spec: spec, kind: ps.kind, log: logger}
	switch ps.kind {
	case kindSimulator:
		if t.rwc, err = openSimulator(ctx, opts.StateDir, logger); err != nil {
			return nil, err
		}
	case kindSWTPM:
		if t.rwc, err = openSWTPM(ctx, ps.addr); err != nil {
			return nil, fmt.Errorf("TPM spec %q: %w", spec, err)
		}
	case kindDevice:
		var logPath string
		if t.rwc, logPath, err = openDevice(ps.path, logger); err != nil {
			return nil, fmt.Errorf("TPM spec %q: %w", spec, err)
		}
		if t.firmwareLog, err = readFirmwareLog(logPath); err != nil {
			// Not fatal: the log may be given with UseFirmwareLog (--boot-log).
			logger.Warn("cannot read the firmware event log; attestation needs it", "path", logPath, "err", err)
		}
	}
	if t.banks, err = client.AllocatedPCRs(t.rwc); err != nil {
		_ = t.rwc.Close()
		return nil, fmt.Errorf("TPM %s: %w", spec, err)
	}
	return t, nil
}

// openSimulator starts the in-process simulator with the seed kept in
// stateDir, honouring ctx while another simulator holds the process lock.
func openSimulator(ctx context.Context, stateDir string, logger *slog.Logger) (io.ReadWriteCloser, error) {
	seed, seedPath, err := loadOrCreateSeed(stateDir, logger)
	if err != nil {
		return nil, err
	}
	logger.Warn("INSECURE: using the in-process TPM simulator; its keys derive from a seed file, development only", "seed_file", seedPath)
	type result struct {
		sim *simulator.Simulator
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := simulator.GetWithFixedSeedInsecure(seed)
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("starting the TPM simulator: %w", r.err)
		}
		return r.sim, nil
	case <-ctx.Done():
		// Whoever holds the simulator closes it eventually; close ours then.
		go func() {
			if r := <-ch; r.sim != nil {
				_ = r.sim.Close()
			}
		}()
		return nil, fmt.Errorf("waiting for the TPM simulator (one per process): %w", ctx.Err())
	}
}

// Spec returns the spec the TPM was opened with.
func (t *TPM) Spec() string { return t.spec }

// Simulated reports whether the TPM is the insecure in-process simulator.
func (t *TPM) Simulated() bool { return t.kind == kindSimulator }

// Firmwareless reports whether the TPM has no firmware that measured a boot
// (the simulator and swtpm): [TPM.Boot] must replay a recorded log into it
// before it can attest.
func (t *TPM) Firmwareless() bool { return t.kind == kindSimulator || t.kind == kindSWTPM }

// Close flushes the keys of agents still open on the TPM (swtpm and real
// TPMs keep transient objects after the connection ends) and closes it.
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	for a := range t.agents {
		a.closeKeys()
		a.closed = true
	}
	t.agents = nil
	t.closed = true
	err := t.rwc.Close()
	t.rwc = nil
	return err
}

// do runs f with the TPM under the TPM mutex.
func (t *TPM) do(f func(rw io.ReadWriter) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errors.New("the TPM is closed")
	}
	return f(t.rwc)
}

// FirmwareLog returns the TCG PC Client firmware event log: for the
// simulator, the log given to [TPM.Boot]. It is nil before Boot.
func (t *TPM) FirmwareLog() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]byte(nil), t.firmwareLog...)
}

// CanonicalEventLog returns the encoded canonical event log of the workload
// measurements, nil before [TPM.MeasureWorkload].
func (t *TPM) CanonicalEventLog() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]byte(nil), t.celBytes...)
}

// Banks returns the hash algorithms of the TPM's allocated PCR banks.
func (t *TPM) Banks() []crypto.Hash {
	var out []crypto.Hash
	for _, sel := range t.banks {
		if h, err := sel.Hash.Hash(); err == nil {
			out = append(out, h)
		}
	}
	return out
}

// ReadPCR returns the value of PCR index in the bank of hash.
func (t *TPM) ReadPCR(index int, hash crypto.Hash) ([]byte, error) {
	alg, err := tpm2.HashToAlgorithm(hash)
	if err != nil {
		return nil, err
	}
	var v []byte
	err = t.do(func(rw io.ReadWriter) error {
		var err error
		v, err = tpm2.ReadPCR(rw, index, alg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading PCR %d (%v): %w", index, hash, err)
	}
	return v, nil
}

// AKPublic returns the public key of the attestation key: the ECC P-256
// restricted signing primary of go-tpm-tools (client.AttestationKeyECC) in
// the owner hierarchy. It is the key to enroll with the verifier.
func (t *TPM) AKPublic() (crypto.PublicKey, error) {
	var pub crypto.PublicKey
	err := t.do(func(rw io.ReadWriter) error {
		ak, err := client.AttestationKeyECC(rw)
		if err != nil {
			return fmt.Errorf("loading the attestation key: %w", err)
		}
		defer ak.Close()
		pub = ak.PublicKey()
		return nil
	})
	return pub, err
}
