package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/audit/auditor"
	"github.com/vouch-dev/vouch/verifier/store"
)

var demoImage = agentside.Workload{
	ImageRef:    "ghcr.io/vouch-dev/demo-agent:v1",
	ImageDigest: "sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d",
}

// startVouchd runs the built vouchd on the data directory and returns its
// URL once it listens.
func startVouchd(t *testing.T, bin, data string) (*exec.Cmd, string) {
	t.Helper()
	// The burst attests as fast as six workers can from one address: far
	// beyond the default per-client limit, which is not under test here.
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--data", data, "--log-level", "warn", "--rate-attest", "0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	urls := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`listening on (http://\S+)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				urls <- m[1]
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case u := <-urls:
		return cmd, u
	case <-time.After(60 * time.Second):
		t.Fatal("vouchd did not start")
	}
	return nil, ""
}

type received struct {
	cti   []byte
	index uint64
}

// TestSIGKILLDuringBurst kills a real vouchd process with SIGKILL while
// attestations are in flight, restarts it on the same data directory, and
// checks that every credential a client received has its audit record (by
// cti and by log index), that the log verifies, and that no index is
// reused after the restart.
func TestSIGKILLDuringBurst(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs vouchd")
	}
	ctx := context.Background()
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "vouchd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building vouchd: %v\n%s", err, out)
	}
	data := filepath.Join(tmp, "data")
	proc, url := startVouchd(t, bin, data)

	// The agent, on the simulator in this process; its AK enrolled in the
	// verifier's database (SQLite allows a second writer).
	tpm, err := agentside.Open(ctx, agentside.SpecSimulator, agentside.OpenOptions{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	bootLog, err := os.ReadFile("../../testdata/eventlogs/rhel8-uefi.bin")
	if err != nil {
		t.Fatal(err)
	}
	if err := tpm.Boot(bootLog); err != nil {
		t.Fatal(err)
	}
	if err := tpm.MeasureWorkload(demoImage); err != nil {
		t.Fatal(err)
	}
	agent, err := agentside.NewAgent(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	st, err := store.OpenSQLite(ctx, filepath.Join(data, verifier.DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(agent.AKPublic())
	d := sha256.Sum256(spki)
	if err := st.Enroll(ctx, store.Enrollment{AKDigest: d[:], AKPublic: spki, Method: "operator", EnrolledBy: "crash test", EnrolledAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	// The burst: workers attest until the process dies under them.
	client, err := agentside.NewClient(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := attest.NewRemoteKeys(attest.RemoteKeysOptions{URL: url + "/v1/keys"})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := rk.KeySet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []received
	req := &attest.Request{Audience: "https://docs.example"}
	attestOnce := func() error {
		ch, err := client.Challenge(ctx)
		if err != nil {
			return err
		}
		ev, err := agent.Evidence(ch.Nonce, req)
		if err != nil {
			return err
		}
		iss, err := client.Attest(ctx, ev)
		if err != nil {
			return err
		}
		c, err := attest.VerifyCredential(iss.Credential, keys, attest.CredentialOptions{Audience: []string{req.Audience}})
		if err != nil {
			t.Errorf("credential: %v", err)
			return err
		}
		idx, err := strconv.ParseUint(iss.LogIndex, 10, 64)
		if err != nil || c.LogIndex == nil || *c.LogIndex != idx {
			t.Errorf("log index: header %q, claim %v", iss.LogIndex, c.LogIndex)
		}
		mu.Lock()
		got = append(got, received{c.ID, idx})
		mu.Unlock()
		return nil
	}
	const workers = 6
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := attestOnce(); err != nil && strings.Contains(err.Error(), "connection refused") {
					return
				}
			}
		}()
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 40 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	proc.Wait()
	close(stop)
	wg.Wait()
	mu.Lock()
	before := append([]received(nil), got...)
	mu.Unlock()
	if len(before) < 10 {
		t.Fatalf("only %d credentials before the kill", len(before))
	}
	t.Logf("%d credentials received before SIGKILL", len(before))

	// Restart on the same data directory; attest a few more times.
	proc, url = startVouchd(t, bin, data)
	client, _ = agentside.NewClient(url, nil)
	got = nil
	for range 3 {
		if err := attestOnce(); err != nil {
			t.Fatal(err)
		}
	}
	after := got
	proc.Process.Signal(syscall.SIGTERM)
	proc.Wait()

	// Audit the data directory.
	src, err := auditor.OpenSource(data, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(filepath.Join(data, audit.PublicKeyFile))
	recs := map[uint64]*audit.Record{}
	rep, err := auditor.Verify(ctx, auditor.Options{Source: src, PublicKey: strings.TrimSpace(string(key)), Evidence: true,
		OnRecord: func(i uint64, r *audit.Record) { recs[i] = r }})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("the log does not verify after the crash: %v", rep.Findings)
	}
	seen := map[uint64]bool{}
	var maxBefore uint64
	for _, c := range append(append([]received(nil), before...), after...) {
		r := recs[c.index]
		if r == nil || r.Credential == nil || string(r.Credential.ID) != string(c.cti) {
			t.Errorf("credential %x (log index %d) has no audit record: %+v", c.cti, c.index, r)
		}
		if seen[c.index] {
			t.Errorf("log index %d given to two credentials", c.index)
		}
		seen[c.index] = true
	}
	for _, c := range before {
		maxBefore = max(maxBefore, c.index)
	}
	for _, c := range after {
		if c.index <= maxBefore {
			t.Errorf("index %d after the restart is not past the %d handed out before", c.index, maxBefore)
		}
	}
	t.Logf("log of %d records verifies; %d credentials checked", rep.Records, len(before)+len(after))
}
