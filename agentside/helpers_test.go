package agentside

import (
	"context"
	"crypto"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	gepb "github.com/google/go-eventlog/proto/state"
	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"
	attestpb "github.com/google/go-tpm-tools/proto/attest"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"google.golang.org/protobuf/proto"

	"github.com/vouch-dev/vouch/attest"
)

// testDigest is a well-formed image digest.
const testDigest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// eventLogPath names a recorded firmware log of testdata/eventlogs.
func eventLogPath(name string) string {
	return filepath.Join("..", "testdata", "eventlogs", name)
}

func readEventLog(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(eventLogPath(name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// openSim opens the simulator with a fresh state directory (so a fresh seed)
// unless dir is given, and closes it at the end of the test.
func openSim(tb testing.TB, dir string) *TPM {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tpm, err := Open(ctx, SpecSimulator, OpenOptions{StateDir: dir})
	if err != nil {
		tb.Fatalf("Open(sim): %v", err)
	}
	tb.Cleanup(func() { _ = tpm.Close() })
	return tpm
}

// bootedAgent opens the simulator, boots it with the named log, measures w and
// creates an agent.
func bootedAgent(tb testing.TB, logName string, w Workload) (*TPM, *Agent) {
	tb.Helper()
	tpm := openSim(tb, "")
	if err := tpm.Boot(readEventLog(tb, logName)); err != nil {
		tb.Fatalf("Boot(%s): %v", logName, err)
	}
	if err := tpm.MeasureWorkload(w); err != nil {
		tb.Fatalf("MeasureWorkload: %v", err)
	}
	agent, err := NewAgent(tpm)
	if err != nil {
		tb.Fatalf("NewAgent: %v", err)
	}
	tb.Cleanup(func() { _ = agent.Close() })
	return tpm, agent
}

// quotedBank returns the PCRs a quote of att carries for hash, as a
// go-eventlog bank.
func quotedBank(tb testing.TB, att *attestpb.Attestation, hash crypto.Hash, alg tpmpb.HashAlgo) register.PCRBank {
	tb.Helper()
	for _, q := range att.GetQuotes() {
		if q.GetPcrs().GetHash() != alg {
			continue
		}
		bank := register.PCRBank{TCGHashAlgo: gepb.HashAlgo(alg)}
		for idx, v := range q.GetPcrs().GetPcrs() {
			bank.PCRs = append(bank.PCRs, register.PCR{Index: int(idx), Digest: v, DigestAlg: hash})
		}
		return bank
	}
	tb.Fatalf("no %v quote in the attestation", alg)
	return register.PCRBank{}
}

// tcgEvents parses a recorded log and returns its events in its first bank.
func tcgEvents(tb testing.TB, name string) []tcg.Event {
	tb.Helper()
	el, err := tcg.ParseEventLog(readEventLog(tb, name), tcg.ParseOpts{})
	if err != nil {
		tb.Fatal(err)
	}
	return el.Events(el.Algs[0])
}

// decodeAttestation decodes the TPM part of ev.
func decodeAttestation(tb testing.TB, ev *attest.Evidence) *attestpb.Attestation {
	tb.Helper()
	var att attestpb.Attestation
	if err := proto.Unmarshal(ev.TPM, &att); err != nil {
		tb.Fatalf("the TPM part of the evidence is not an attest.Attestation: %v", err)
	}
	return &att
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
