package testenv

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// A port taken between picking it and swtpm binding it is the race other
// test binaries cause; startSWTPMOn must notice (swtpm exits) rather than
// report a TPM that is not there, so StartSWTPM can try other ports.
func TestStartSWTPMOnTakenPort(t *testing.T) {
	bin := LookTool(t, "swtpm", "swtpm")
	for _, tc := range []struct {
		name  string
		taken int // 0: data port, 1: control port
	}{{"data port taken", 0}, {"control port taken", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			port := freePortPair(t)
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+tc.taken)))
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			s, stderr, err := startSWTPMOn(bin, t.TempDir(), port)
			if err != nil {
				t.Fatal(err)
			}
			if s != nil {
				s.Stop()
				t.Fatalf("swtpm reported as started on port %d while port %d is taken", port, port+tc.taken)
			}
			if !strings.Contains(stderr, "Address already in use") {
				t.Errorf("stderr does not say why swtpm exited: %q", stderr)
			}
		})
	}
}

func TestStartSWTPMRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	a := StartSWTPM(t, dir)
	a.Stop()
	a.Stop() // idempotent
	b := StartSWTPM(t, dir)
	if b.StateDir != dir {
		t.Fatalf("state dir %q, want %q", b.StateDir, dir)
	}
	c, err := net.Dial("tcp", net.JoinHostPort(b.Host, strconv.Itoa(b.CtrlPort)))
	if err != nil {
		t.Fatalf("restarted swtpm does not listen on its control port: %v", err)
	}
	c.Close()
}
