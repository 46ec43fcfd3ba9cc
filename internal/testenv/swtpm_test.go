package testenv

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestStartSWTPMRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	a := StartSWTPM(t, dir)
	a.Stop()
	a.Stop() // idempotent
	b := StartSWTPM(t, dir)
	if b.StateDir != dir || b.CtrlPort != b.DataPort+1 {
		t.Fatalf("swtpm %+v, want state in %q and the control port next to the data port", b, dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "tpm2-00.permall")); err != nil {
		t.Fatalf("swtpm kept no state: %v", err)
	}
	c, err := net.Dial("tcp", net.JoinHostPort(b.Host, strconv.Itoa(b.DataPort)))
	if err != nil {
		t.Fatalf("restarted swtpm does not listen: %v", err)
	}
	c.Close()
}

// A swtpm that cannot start is reported with its own words, not as a TPM
// that is there — in particular when another process took its data port
// between picking and binding it.
func TestStartSWTPMReportsFailure(t *testing.T) {
	bin := LookTool(t, "swtpm", "swtpm")
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		stateDir string
		takeData bool
		want     string
	}{
		{"state dir is a file", notADir, false, "did not come up"},
		{"data port taken", t.TempDir(), true, "Address already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, ctrl, err := listenPair()
			if err != nil {
				t.Fatal(err)
			}
			port := data.Addr().(*net.TCPAddr).Port
			if tc.takeData {
				defer data.Close() // someone else's listener
			} else {
				data.Close()
			}
			s, err := startSWTPM(bin, tc.stateDir, port, ctrl)
			if err == nil {
				s.Stop()
				t.Fatal("reported as started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not say %q: %v", tc.want, err)
			}
		})
	}
}
