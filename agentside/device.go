package agentside

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"

	"github.com/google/go-tpm/legacy/tpm2"
)

// devicePattern matches the Linux TPM character devices.
var devicePattern = regexp.MustCompile(`^/dev/tpm(rm)?([0-9]+)$`)

// securityfsLog is where Linux exposes the firmware event log of TPM N.
const securityfsLog = "/sys/kernel/security/tpm%s/binary_bios_measurements"

// openDevice opens a Linux TPM device, preferring the kernel resource
// manager: for /dev/tpmN it uses /dev/tpmrmN when that exists, since the raw
// device allows one user at a time and leaves transient objects to its
// user. It returns the securityfs path of the device's firmware log.
func openDevice(path string, logger *slog.Logger) (io.ReadWriteCloser, string, error) {
	m := devicePattern.FindStringSubmatch(path)
	if m == nil {
		return nil, "", fmt.Errorf("%s is not a TPM device (want /dev/tpmrmN or /dev/tpmN)", path)
	}
	if m[1] == "" {
		rm := filepath.Join("/dev", "tpmrm"+m[2])
		if _, err := os.Stat(rm); err == nil {
			logger.Info("using the kernel resource manager", "device", rm, "asked", path)
			path = rm
		} else {
			logger.Warn("no kernel resource manager; the raw TPM device allows one user at a time", "device", path)
		}
	}
	rwc, err := tpm2.OpenTPM(path)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, "", fmt.Errorf("opening %s: %w (add the user to the tss group, see docs/hardware-trust.md)", path, err)
		}
		return nil, "", fmt.Errorf("opening %s: %w", path, err)
	}
	return rwc, fmt.Sprintf(securityfsLog, m[2]), nil
}

// readFirmwareLog reads a firmware event log from securityfs.
func readFirmwareLog(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFirmwareLogSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFirmwareLogSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, MaxFirmwareLogSize)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return b, nil
}

// UseFirmwareLog sets the firmware event log of a TPM with firmware (a
// device) when securityfs cannot be read by the agent: e.g. a copy of
// /sys/kernel/security/tpm0/binary_bios_measurements made by root at boot.
// The verifier replays it against the quoted PCRs, so a wrong log fails
// there. TPMs without firmware use [TPM.Boot] instead.
func (t *TPM) UseFirmwareLog(log []byte) error {
	if t.Firmwareless() {
		return fmt.Errorf("TPM %q has no firmware: replay the log with Boot", t.spec)
	}
	if len(log) == 0 || len(log) > MaxFirmwareLogSize {
		return fmt.Errorf("the firmware event log is %d bytes; want 1 to %d", len(log), MaxFirmwareLogSize)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.firmwareLog = append([]byte(nil), log...)
	return nil
}
