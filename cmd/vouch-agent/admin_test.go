package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// --admin-listen serves the sidecar's own paths for probes from outside the
// agent's network namespace, and never forwards anything.
func TestSidecarAdminListen(t *testing.T) {
	state := t.TempDir()
	vhs, _ := startRealVerifier(t, time.Minute, state)
	rp := startRelyingParty(t, vhs.URL)
	addrs := make(chan net.Addr, 2)
	var stderr bytes.Buffer
	a := &app{stdout: io.Discard, stderr: &stderr, adminListening: func(x net.Addr) { addrs <- x }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- a.execute(ctx, []string{"run", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-level", "error",
			"--state", state, "--verifier", vhs.URL, "--upstream", rp.URL,
			"--boot-log", bootLog, "--image-ref", demoRef, "--image-digest", demoDigest})
	}()
	defer func() {
		cancel()
		if code := <-done; code != exitOK {
			t.Errorf("run exited %d: %s", code, stderr.String())
		}
	}()
	var admin string
	select {
	case x := <-addrs:
		admin = "http://" + x.String()
	case code := <-done:
		t.Fatalf("run exited %d: %s", code, stderr.String())
	case <-time.After(time.Minute):
		t.Fatal("no admin address")
	}
	waitFor(t, "readiness on the admin address", func() bool {
		resp, _ := do(t, "GET", admin+"/.vouch/readyz", nil, nil)
		return resp.StatusCode == http.StatusOK
	})
	for _, p := range []string{"/.vouch/healthz", "/.vouch/status", "/.vouch/metrics"} {
		if resp, b := do(t, "GET", admin+p, nil, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s on the admin address: %s %s", p, resp.Status, b)
		}
	}
	n := rp.count()
	for _, p := range []string{"/documents/customer-A/report-7", "/.vouch/../documents/x", "/"} {
		if resp, _ := do(t, "GET", admin+p, nil, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s on the admin address: %s, want 404", p, resp.Status)
		}
	}
	if rp.count() != n {
		t.Error("the admin address forwarded a request")
	}
}
