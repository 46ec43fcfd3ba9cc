package appraisal

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/google/go-tpm-tools/proto/attest"
	"google.golang.org/protobuf/proto"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/verifier/store"
)

// fuzzBase is one genuine attestation from the simulator, booted from a real
// log, and a pipeline whose store trusts its AK. Fuzz targets swap one
// unsigned part of it (the firmware log, the CEL) for the fuzzer's bytes:
// exactly what an attacker controls after the TPM has signed.
type fuzzBase struct {
	p    *Pipeline
	refs *policy.RefSet
	ev   *attest.Evidence
	att  *pb.Attestation
}

func newFuzzBase(f *testing.F) *fuzzBase {
	f.Helper()
	ctx := context.Background()
	tpm, err := agentside.Open(ctx, agentside.SpecSimulator, agentside.OpenOptions{StateDir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	defer tpm.Close()
	log, err := os.ReadFile("../../testdata/eventlogs/rhel8-uefi.bin")
	if err != nil {
		f.Fatal(err)
	}
	if err := tpm.Boot(log); err != nil {
		f.Fatal(err)
	}
	img := agentside.Workload{ImageRef: "ghcr.io/vouch-dev/demo-agent:v1", ImageDigest: "sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d"}
	if err := tpm.MeasureWorkload(img); err != nil {
		f.Fatal(err)
	}
	agent, err := agentside.NewAgent(tpm)
	if err != nil {
		f.Fatal(err)
	}
	defer agent.Close()
	ev, err := agent.Evidence(make([]byte, attest.NonceSize), &attest.Request{Audience: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	st, err := store.OpenSQLite(ctx, filepath.Join(f.TempDir(), "vouch.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	spki, _ := x509.MarshalPKIXPublicKey(agent.AKPublic())
	d := sha256.Sum256(spki)
	if err := st.Enroll(ctx, store.Enrollment{AKDigest: d[:], AKPublic: spki, Method: "operator", EnrolledAt: time.Now()}); err != nil {
		f.Fatal(err)
	}
	refs, err := firmwarerefs.Load()
	if err != nil {
		f.Fatal(err)
	}
	p, err := New(Options{Nonces: st, AKs: st, Refs: staticRefs{refs}})
	if err != nil {
		f.Fatal(err)
	}
	var att pb.Attestation
	if err := proto.Unmarshal(ev.TPM, &att); err != nil {
		f.Fatal(err)
	}
	return &fuzzBase{p: p, refs: refs, ev: ev, att: &att}
}

type staticRefs struct{ r *policy.RefSet }

func (s staticRefs) Refs() *policy.RefSet { return s.r }

// run runs the steps after the nonce on evidence whose TPM part is att.
func (b *fuzzBase) run(t *testing.T, att *pb.Attestation) error {
	raw, err := proto.Marshal(att)
	if err != nil {
		t.Fatal(err)
	}
	ev := *b.ev
	ev.TPM = raw
	o := &Outcome{Evidence: &ev, Binding: attest.Binding(ev.Nonce, ev.AgentKey, ev.Request)}
	for _, step := range []func() error{
		func() error { return b.p.checkAK(context.Background(), o) },
		func() error { return b.p.verifyQuote(b.refs, o) },
		func() error { return verifyWorkload(o) },
	} {
		if err := step(); err != nil {
			if _, ok := err.(*attest.Error); !ok {
				t.Fatalf("refusal is not an *attest.Error: %T %v", err, err)
			}
			return err
		}
	}
	return nil
}

// FuzzQuoteStepEventLog replaces the firmware event log of a genuine
// attestation. Replay against the signed PCRs must refuse every log but
// the genuine one, with a typed reason and without panicking.
func FuzzQuoteStepEventLog(f *testing.F) {
	b := newFuzzBase(f)
	f.Add(b.att.EventLog)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, log []byte) {
		att := proto.Clone(b.att).(*pb.Attestation)
		att.EventLog = log
		if err := b.run(t, att); err == nil && string(log) != string(b.att.EventLog) {
			// A different log that replays to the same PCRs and parses the same
			// is possible only by changing unmeasured bytes; it must at least
			// replay to the quoted values, which run() has checked.
			t.Logf("accepted a log differing from the genuine one in unmeasured bytes (%d bytes)", len(log))
		}
	})
}

// FuzzWorkloadStepCEL replaces the canonical event log of a genuine
// attestation.
func FuzzWorkloadStepCEL(f *testing.F) {
	b := newFuzzBase(f)
	f.Add(b.att.CanonicalEventLog)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, cel []byte) {
		att := proto.Clone(b.att).(*pb.Attestation)
		att.CanonicalEventLog = cel
		b.run(t, att)
	})
}

func TestCELFraming(t *testing.T) {
	tests := []struct {
		name string
		raw  []byte
		ok   bool
	}{
		{"empty", nil, true},
		{"one empty TLV", []byte{0, 0, 0, 0, 0}, true},
		{"length beyond the input (fuzzer's 3 GB claim)", []byte("\x80\xb6\x93\xe5\xe5\xb6t"), false},
		{"truncated header", []byte{1, 0, 0}, false},
		{"digest list with an overlong nested TLV", []byte{3, 0, 0, 0, 6, 11, 0xff, 0xff, 0xff, 0xff, 0}, false},
		{"digest list well framed", []byte{3, 0, 0, 0, 6, 11, 0, 0, 0, 1, 0xaa}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := checkCELFraming(tc.raw, 0); (err == nil) != tc.ok {
				t.Fatalf("checkCELFraming = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
