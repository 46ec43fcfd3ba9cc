package testenv

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// SWTPM is a running swtpm (libtpms, a TPM nobody here wrote) on loopback,
// stopped at the end of the test.
type SWTPM struct {
	// Spec is the agentside TPM spec, "swtpm:127.0.0.1:PORT".
	Spec string
	// Host, DataPort and CtrlPort are the server and control channels.
	Host               string
	DataPort, CtrlPort int
	// StateDir is swtpm's --tpmstate directory.
	StateDir string

	stopOnce sync.Once
	stop     func()
}

// Stop kills swtpm and waits for it to exit; the state directory stays, so
// StartSWTPM on it again is a reboot of the same TPM. Stop is idempotent and
// also runs at the end of the test.
func (s *SWTPM) Stop() { s.stopOnce.Do(s.stop) }

// TCTI returns the tpm2-tools TCTI string for this swtpm
// (TPM2TOOLS_TCTI, tpm2-tools' -T).
func (s *SWTPM) TCTI() string {
	return "swtpm:host=" + s.Host + ",port=" + strconv.Itoa(s.DataPort)
}

// portMu keeps two tests of one process from picking the same free ports.
var portMu sync.Mutex

// StartSWTPM runs "swtpm socket --tpm2" on two free loopback ports (data
// and control channel) with state in stateDir (a fresh temporary directory
// when empty) and --flags not-need-init,startup-clear. It skips the test
// without swtpm (fails in CI).
//
// Free ports are only free until someone else binds them: other test
// binaries run in parallel and pick ports too. When swtpm exits because a
// port was taken meanwhile, StartSWTPM tries again on other ports.
func StartSWTPM(t testing.TB, stateDir string) *SWTPM {
	t.Helper()
	bin := LookTool(t, "swtpm", "swtpm")
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	portMu.Lock()
	defer portMu.Unlock()
	for attempt := 0; ; attempt++ {
		// tpm2-tools' swtpm TCTI expects the control channel on the
		// data port + 1.
		s, stderr, err := startSWTPMOn(bin, stateDir, freePortPair(t))
		if err != nil {
			t.Fatal(err)
		}
		if s != nil {
			t.Cleanup(s.Stop)
			return s
		}
		if attempt == 9 {
			t.Fatalf("swtpm did not start in 10 attempts on free ports; its last words: %s", stderr)
		}
	}
}

// startSWTPMOn runs swtpm with its data channel on port data and its control
// channel on data+1. It returns nil and swtpm's stderr when swtpm exited or
// did not accept connections on both ports within 5 s (a port was taken).
func startSWTPMOn(bin, stateDir string, data int) (*SWTPM, string, error) {
	ctrl := data + 1
	s := &SWTPM{Host: "127.0.0.1", DataPort: data, CtrlPort: ctrl, StateDir: stateDir}
	dataAddr := net.JoinHostPort(s.Host, strconv.Itoa(data))
	s.Spec = "swtpm:" + dataAddr
	cmd := exec.Command(bin, "socket", "--tpm2",
		"--server", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(data),
		"--ctrl", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(ctrl),
		"--tpmstate", "dir="+stateDir,
		"--flags", "not-need-init,startup-clear")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("starting swtpm: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	if waitListening(dataAddr, exited) && waitListening(net.JoinHostPort(s.Host, strconv.Itoa(ctrl)), exited) {
		s.stop = stop
		return s, "", nil
	}
	stop()
	return nil, stderr.String(), nil
}

// freePortPair returns a loopback port P such that P and P+1 were free a
// moment ago.
func freePortPair(t testing.TB) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		if p >= 65535 {
			l.Close()
			continue
		}
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
		l.Close()
		if err == nil {
			l2.Close()
			return p
		}
	}
	t.Fatal("no two adjacent free loopback ports")
	return 0
}

// waitListening waits up to 5 s for addr to accept connections, or for the
// process to exit (a port taken meanwhile).
func waitListening(addr string, exited <-chan struct{}) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// SWTPMSetupCA is the local CA swtpm_setup --create-ek-cert used.
type SWTPMSetupCA struct {
	RootCert   string // PEM file of swtpm-localca's root CA
	IssuerCert string // PEM file of the intermediate that signed the EK certificates
}

// SWTPMSetup manufactures a TPM state in stateDir with swtpm_setup (package
// swtpm-tools): EKs with certificates from a local CA created in a fresh
// directory (swtpm_localca), RSA 2048 at NV 0x01c00002 and, with ecc, ECC
// P-384 at 0x01c00016. Start swtpm on stateDir afterwards.
func SWTPMSetup(t testing.TB, stateDir string, ecc bool) *SWTPMSetupCA {
	t.Helper()
	setup := LookTool(t, "swtpm_setup", "swtpm-tools")
	localca := LookTool(t, "swtpm_localca", "swtpm-tools")
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	files := map[string]string{
		"localca.conf":    "statedir = " + caDir + "\nsigningkey = " + caDir + "/signkey.pem\nissuercert = " + caDir + "/issuercert.pem\ncertserial = " + caDir + "/certserial\n",
		"localca.options": "--platform-manufacturer Vouch\n--platform-version 1.0\n--platform-model test\n",
		"setup.conf": "create_certs_tool = " + localca + "\ncreate_certs_tool_config = " + filepath.Join(dir, "localca.conf") +
			"\ncreate_certs_tool_options = " + filepath.Join(dir, "localca.options") + "\n",
	}
	if err := os.MkdirAll(caDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"--tpm2", "--tpmstate", stateDir, "--create-ek-cert", "--config", filepath.Join(dir, "setup.conf"), "--overwrite", "--pcr-banks", "sha1,sha256"}
	if ecc {
		args = append(args, "--ecc")
	}
	if out, err := exec.Command(setup, args...).CombinedOutput(); err != nil {
		t.Fatalf("swtpm_setup: %v\n%s", err, out)
	}
	return &SWTPMSetupCA{RootCert: filepath.Join(caDir, "swtpm-localca-rootca-cert.pem"), IssuerCert: filepath.Join(caDir, "issuercert.pem")}
}
