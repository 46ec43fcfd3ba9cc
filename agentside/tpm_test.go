package agentside

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseSpec(t *testing.T) {
	tests := []struct {
		spec string
		want tpmSpec
		err  string
	}{
		{spec: "sim", want: tpmSpec{kind: kindSimulator}},
		{spec: "swtpm:localhost:2321", want: tpmSpec{kind: kindSWTPM, addr: "localhost:2321"}},
		{spec: "swtpm:[::1]:2321", want: tpmSpec{kind: kindSWTPM, addr: "[::1]:2321"}},
		{spec: "/dev/tpmrm0", want: tpmSpec{kind: kindDevice, path: "/dev/tpmrm0"}},
		{spec: "/dev//tpm0/", want: tpmSpec{kind: kindDevice, path: "/dev/tpm0"}},
		{spec: "", err: "use \"sim\""},
		{spec: "simulator", err: "use \"sim\""},
		{spec: "swtpm:localhost", err: "swtpm:HOST:PORT"},
		{spec: "swtpm::2321", err: "swtpm:HOST:PORT"},
		{spec: "swtpm:localhost:65536", err: "between 1 and 65535"},
		{spec: "swtpm:localhost:x", err: "between 1 and 65535"},
		{spec: "dev/tpm0", err: "device path"},
	}
	for _, tc := range tests {
		got, err := parseSpec(tc.spec)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseSpec(%q) error = %v, want %q", tc.spec, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseSpec(%q) = %+v, %v; want %+v", tc.spec, got, err, tc.want)
		}
	}
}

func TestOpenDevice(t *testing.T) {
	cases := map[string]string{
		"/dev/null":        "not a TPM device",
		"/dev/tpm9x":       "not a TPM device",
		"/tmp/not-a-tpm-0": "not a TPM device",
	}
	if _, err := os.Stat("/dev/tpmrm7"); err != nil {
		cases["/dev/tpmrm7"] = "opening /dev/tpmrm7"
	}
	for spec, want := range cases {
		_, err := Open(context.Background(), spec, OpenOptions{Logger: discard()})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q) = %v, want an error containing %q", spec, err, want)
		}
	}
	if m := devicePattern.FindStringSubmatch("/dev/tpm0"); m == nil || m[1] != "" || fmt.Sprintf(securityfsLog, m[2]) != "/sys/kernel/security/tpm0/binary_bios_measurements" {
		t.Errorf("/dev/tpm0: %q", m)
	}
	if m := devicePattern.FindStringSubmatch("/dev/tpmrm1"); m == nil || m[1] != "rm" || m[2] != "1" {
		t.Errorf("/dev/tpmrm1: %q", m)
	}
	if _, err := Open(context.Background(), "sim", OpenOptions{}); err == nil || !strings.Contains(err.Error(), "state directory") {
		t.Errorf("Open(sim) without a state directory = %v", err)
	}
}

func TestBootNeedsSimulator(t *testing.T) {
	tpm := &TPM{spec: "/dev/tpmrm0", kind: kindDevice}
	if err := tpm.Boot([]byte{1}); !errors.Is(err, ErrNotSupported) {
		t.Errorf("Boot on a device = %v, want ErrNotSupported", err)
	}
}

// TestOpenWaitsForSimulator checks that a second Open waits for the first
// simulator to close, and gives up when its context ends.
func TestOpenWaitsForSimulator(t *testing.T) {
	dir := t.TempDir()
	first := openSim(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Open(ctx, SpecSimulator, OpenOptions{StateDir: dir}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open while the simulator is held = %v, want context.Canceled", err)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		tpm, err := Open(ctx, SpecSimulator, OpenOptions{StateDir: dir})
		if err == nil {
			err = tpm.Close()
		}
		done <- err
	}()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
}

func TestSeedFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	tpm := openSim(t, dir)
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, seedFileName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("seed file mode = %v, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Errorf("state directory mode = %v, want 0700", di.Mode().Perm())
	}
	s1, _, err := loadOrCreateSeed(dir, discard())
	if err != nil {
		t.Fatal(err)
	}
	s2, _, err := loadOrCreateSeed(dir, discard())
	if err != nil || s1 != s2 {
		t.Errorf("seed changed between loads: %d, %d, %v", s1, s2, err)
	}
	if err := os.WriteFile(path, []byte("not a number\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadOrCreateSeed(dir, discard()); err == nil || !strings.Contains(err.Error(), "remove it") {
		t.Errorf("corrupt seed = %v", err)
	}
}

func TestDefaultStateDir(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/var/lib/x")
	if d, err := DefaultStateDir(); err != nil || d != "/var/lib/x/vouch-agent" {
		t.Errorf("DefaultStateDir = %q, %v", d, err)
	}
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if d, err := DefaultStateDir(); err != nil || d != "/home/u/.local/state/vouch-agent" {
		t.Errorf("DefaultStateDir = %q, %v", d, err)
	}
}
