package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
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

// StartSWTPM runs "swtpm socket --tpm2" on two adjacent loopback ports
// (data and control channel) with state in stateDir (a fresh temporary
// directory when empty) and --flags not-need-init,startup-clear. It skips the
// test without swtpm (fails in CI).
//
// Other test binaries pick free ports too, and a port picked as free can be
// taken before swtpm binds it (this once failed in CI). So the test binds the
// control socket itself and hands it to swtpm (fd=3); swtpm answers on it
// only once it has bound its data port, so an answer proves both ports are
// swtpm's. swtpm takes its data port by number (with fd= it expects a
// connected client, not a listener): when that port was taken, swtpm exits
// and StartSWTPM tries again on other ports.
func StartSWTPM(t testing.TB, stateDir string) *SWTPM {
	t.Helper()
	bin := LookTool(t, "swtpm", "swtpm")
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	var err error
	for range 10 {
		var data, ctrl *net.TCPListener
		if data, ctrl, err = listenPair(); err != nil {
			break
		}
		port := data.Addr().(*net.TCPAddr).Port
		data.Close()
		var s *SWTPM
		if s, err = startSWTPM(bin, stateDir, port, ctrl); err == nil {
			t.Cleanup(s.Stop)
			return s
		}
	}
	t.Fatal(err)
	return nil
}

// listenPair binds two adjacent loopback ports, P and P+1: tpm2-tools'
// swtpm TCTI expects the control channel on the data port + 1.
func listenPair() (data, ctrl *net.TCPListener, err error) {
	for range 100 {
		l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, nil, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		if p < 65535 {
			if l2, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p + 1}); err == nil {
				return l, l2, nil
			}
		}
		l.Close()
	}
	return nil, nil, errors.New("no two adjacent free loopback ports in 100 tries")
}

// startSWTPM runs swtpm with its data channel on port data and its control
// channel on the listening socket ctrl (this
// process's copy is closed), and waits until the control channel answers.
func startSWTPM(bin, stateDir string, data int, ctrl *net.TCPListener) (*SWTPM, error) {
	s := &SWTPM{Host: "127.0.0.1", DataPort: data, CtrlPort: ctrl.Addr().(*net.TCPAddr).Port, StateDir: stateDir}
	s.Spec = "swtpm:" + net.JoinHostPort(s.Host, strconv.Itoa(s.DataPort))
	ctrlFile, err := ctrl.File() // a dup, inherited by swtpm as fd 3
	ctrl.Close()
	if err != nil {
		return nil, fmt.Errorf("passing the control socket to swtpm: %w", err)
	}
	defer ctrlFile.Close()
	cmd := exec.Command(bin, "socket", "--tpm2",
		"--server", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(s.DataPort),
		"--ctrl", "type=tcp,fd=3",
		"--tpmstate", "dir="+stateDir,
		"--flags", "not-need-init,startup-clear")
	cmd.ExtraFiles = []*os.File{ctrlFile}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.stop = func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	if err := probeControl(net.JoinHostPort(s.Host, strconv.Itoa(s.CtrlPort)), exited); err != nil {
		s.stop()
		return nil, fmt.Errorf("swtpm on %s did not come up: %w; its stderr: %s", s.Spec, err, stderr.String())
	}
	return s, nil
}

// probeControl asks swtpm's control channel for its capabilities
// (CMD_GET_CAPABILITY, 1) and waits up to 10 s for the answer, or for the
// process to exit.
func probeControl(addr string, exited <-chan struct{}) error {
	answered := make(chan error, 1)
	go func() {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			answered <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte{0, 0, 0, 1}); err != nil {
			answered <- err
			return
		}
		var caps [8]byte
		_, err = io.ReadFull(c, caps[:])
		answered <- err
	}()
	select {
	case err := <-answered:
		return err
	case <-exited:
		return errors.New("swtpm exited")
	}
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
