package verifier_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/policy"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/internal/tamper"
	"github.com/vouch-dev/vouch/verifier/store"
)

// unreplayable are the real logs a simulator at locality 0 cannot
// reproduce (agentside.Boot refuses them); they are derived and checked
// offline only (policy and firmware-refs tests).
var unreplayable = map[string]string{
	"gdc-host":        "StartupLocality 3",
	"glinux-alex":     "StartupLocality 3",
	"host-gmes":       "H-CRTM and PCR 17+ events",
	"option-rom-sha1": "measures into PCR 13, the workload PCR",
}

// verifierOnLoopback starts a verifier with refs on a loopback HTTP server,
// without per-client rate limits: its tests attest dozens of times a second
// from one address.
func verifierOnLoopback(t testing.TB, refs *verifier.RefHolder) (*verifier.Server, *agentside.Client) {
	t.Helper()
	srv, err := verifier.New(context.Background(), verifier.Config{DataDir: t.TempDir(), Refs: refs, Logger: slog.New(slog.DiscardHandler),
		RateLimits: verifier.NoRateLimits()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	cl, err := agentside.NewClient(hs.URL, hs.Client())
	if err != nil {
		t.Fatal(err)
	}
	return srv, cl
}

// bootedAgent boots a fresh simulator from log, measures the demo image and
// enrolls the agent's AK with srv. Close the returned func before the next
// simulator: there is one per process.
func bootedAgent(t testing.TB, srv *verifier.Server, log []byte) (*agentside.Agent, func()) {
	t.Helper()
	tpm, err := agentside.Open(context.Background(), agentside.SpecSimulator, agentside.OpenOptions{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	fail := func(err error) {
		tpm.Close()
		t.Fatal(err)
	}
	if err := tpm.Boot(log); err != nil {
		fail(err)
	}
	if err := tpm.MeasureWorkload(demoImage); err != nil {
		fail(err)
	}
	agent, err := agentside.NewAgent(tpm)
	if err != nil {
		fail(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(agent.AKPublic())
	if err != nil {
		fail(err)
	}
	d := sha256.Sum256(spki)
	if err := srv.Store().Enroll(context.Background(), store.Enrollment{AKDigest: d[:], AKPublic: spki, Method: "operator", EnrolledBy: "test", EnrolledAt: time.Now()}); err != nil {
		fail(err)
	}
	return agent, func() { agent.Close(); tpm.Close() }
}

// mutation is an attack on a real boot: the machine booted something else,
// and its firmware logged it faithfully, so that the log replays into the
// TPM and the quote matches it. Only reference values can tell.
type mutation struct {
	name    string
	applies func(b *policy.BootFacts) bool
	mutate  func(t *testing.T, log []byte) []byte
	want    attest.Reason
}

var mutations = []mutation{
	{
		name:    "bootloader changed",
		applies: func(b *policy.BootFacts) bool { return hasClass(b, policy.ClassEFIApp) },
		mutate: func(t *testing.T, log []byte) []byte {
			evs := parseLog(t, log)
			var last tamper.Event
			for _, e := range evs {
				if !e.HeaderEvent && e.PCR == 4 && e.Type == 0x80000003 {
					last = e
				}
			}
			return tamper.SetDigests(log, last, func(_ uint16, old []byte) []byte {
				d := bytes.Clone(old)
				d[0] ^= 0x5a
				return d
			})
		},
		want: attest.ReasonRefsEFIApp,
	},
	{
		name:    "secure boot off",
		applies: func(b *policy.BootFacts) bool { return b.SecureBoot != nil && b.SecureBoot.Enabled },
		mutate: func(t *testing.T, log []byte) []byte {
			e, ok := tamper.FindVariable(log, parseLog(t, log), "SecureBoot")
			if !ok {
				t.Fatal("no SecureBoot variable event")
			}
			return tamper.Rewrite(log, e, tamper.SetVariableValue(e.Data(log), []byte{0}), tamper.HashData)
		},
		want: attest.ReasonRefsSecureBoot,
	},
	{
		name:    "dbx entry removed",
		applies: func(b *policy.BootFacts) bool { return b.SecureBoot != nil && len(b.SecureBoot.DBX) > 0 },
		mutate: func(t *testing.T, log []byte) []byte {
			e, ok := tamper.FindVariable(log, parseLog(t, log), "dbx")
			if !ok {
				t.Fatal("no dbx variable event")
			}
			_, dbx, _ := tamper.VariableName(e.Data(log))
			fewer, err := tamper.RemoveLastSignature(dbx)
			if err != nil {
				t.Fatal(err)
			}
			return tamper.Rewrite(log, e, tamper.SetVariableValue(e.Data(log), fewer), tamper.HashData)
		},
		want: attest.ReasonRefsDBX,
	},
	{
		name:    "forbidden kernel parameter",
		applies: func(b *policy.BootFacts) bool { return hasClass(b, policy.ClassKernelCmdline) },
		mutate: func(t *testing.T, log []byte) []byte {
			for {
				e, ok := nextCmdline(t, log)
				if !ok {
					return log
				}
				log = appendParam(log, e, "init=/bin/sh")
			}
		},
		want: attest.ReasonRefsKernelCmdline,
	},
}

var grubCmdlinePrefixes = []string{"kernel_cmdline: ", "grub_kernel_cmdline ", "grub_cmd: linux", "grub_cmd linux"}

// nextCmdline finds a GRUB kernel command-line event not yet mutated.
func nextCmdline(t *testing.T, log []byte) (tamper.Event, bool) {
	for _, e := range parseLog(t, log) {
		d := string(e.Data(log))
		if e.HeaderEvent || e.PCR != 8 || e.Type != 0xd || strings.Contains(d, "init=/bin/sh") {
			continue
		}
		for _, p := range grubCmdlinePrefixes {
			if strings.HasPrefix(d, p) {
				return e, true
			}
		}
	}
	return tamper.Event{}, false
}

// appendParam adds a kernel parameter to a GRUB command-line event, as an
// edited grub.cfg would, with GRUB's digest rule (the text after the
// prefix, without the trailing NUL).
func appendParam(log []byte, e tamper.Event, param string) []byte {
	d := string(e.Data(log))
	nul := strings.HasSuffix(d, "\x00")
	d = strings.TrimSuffix(d, "\x00") + " " + param
	prefix := ""
	for _, p := range []string{"kernel_cmdline: ", "grub_kernel_cmdline ", "grub_cmd: ", "grub_cmd "} {
		if strings.HasPrefix(d, p) {
			prefix = p
			break
		}
	}
	text := d[len(prefix):]
	if nul {
		d += "\x00"
	}
	return tamper.Rewrite(log, e, []byte(d), func(alg uint16, _ []byte) []byte { return tamper.HashData(alg, []byte(text)) })
}

func parseLog(t *testing.T, log []byte) []tamper.Event {
	t.Helper()
	evs, err := tamper.ParseLog(log)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func hasClass(b *policy.BootFacts, c policy.Class) bool {
	for _, e := range b.Events {
		if e.Class == c {
			return true
		}
	}
	return false
}

// TestRealPlatforms boots the simulator from every replayable real log in
// testdata, attests through HTTP on loopback against the shipped reference
// set (all profiles loaded), and expects an affirming credential naming the
// platform's profile. Then, for each attack that applies to the platform,
// it boots the attacked log and expects a contraindicated refusal with the
// attack's reason.
func TestRealPlatforms(t *testing.T) {
	refs, err := firmwarerefs.LoadWithPlatforms()
	if err != nil {
		t.Fatal(err)
	}
	srv, client := verifierOnLoopback(t, verifier.NewRefHolder(refs))
	logs, _ := filepath.Glob("../testdata/eventlogs/*.bin")
	covered := 0
	for _, path := range logs {
		name := strings.TrimSuffix(filepath.Base(path), ".bin")
		if why, ok := unreplayable[name]; ok {
			t.Logf("%s: offline only (%s)", name, why)
			continue
		}
		log, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		v := policy.VerifyOptions{}
		boot, _, err := policy.OfflineBoot(log, &v, true)
		if err != nil {
			t.Fatal(err)
		}
		covered++
		t.Run(name, func(t *testing.T) {
			t.Run("affirming", func(t *testing.T) {
				agent, done := bootedAgent(t, srv, log)
				defer done()
				cred, err := agent.Attest(context.Background(), client, request)
				if err != nil {
					t.Fatalf("attest: %v", err)
				}
				claims, err := attest.VerifyCredential(cred, srv.Keys().KeySet(), attest.CredentialOptions{Audience: []string{request.Audience}})
				if err != nil {
					t.Fatal(err)
				}
				tpmA := claims.Submods[attest.SubmodTPM]
				if tpmA.Status != attest.StatusAffirming || tpmA.Claims.Platform != name || tpmA.PolicyID != refs.ID() {
					t.Fatalf("tpm appraisal = %v, platform %q, policy %s; want affirming %s under %s", tpmA.Status, tpmA.Claims.Platform, tpmA.PolicyID, name, refs.ID())
				}
				if tv := tpmA.TrustVector; tv.Executables != attest.ExecApprovedBoot || tv.Configuration != attest.ConfigApproved || tv.Hardware != attest.HardwareGenuine {
					t.Fatalf("trust vector %+v", tv)
				}
			})
			for _, m := range mutations {
				if !m.applies(boot) {
					continue
				}
				t.Run(m.name, func(t *testing.T) {
					bad := m.mutate(t, log)
					if bytes.Equal(bad, log) {
						t.Fatal("mutation changed nothing")
					}
					agent, done := bootedAgent(t, srv, bad)
					defer done()
					_, err := agent.Attest(context.Background(), client, request)
					var pe *attest.ProblemError
					if !errors.As(err, &pe) {
						t.Fatalf("attest = %v, want a refusal", err)
					}
					tpmA := pe.Problem.Appraisal[attest.SubmodTPM]
					if pe.Problem.Reason != m.want || tpmA.Status != attest.StatusContraindicated {
						t.Fatalf("refusal %s (tpm %v), want %s, contraindicated: %v", pe.Problem.Reason, tpmA.Status, m.want, err)
					}
					if len(tpmA.Reasons) == 0 || tpmA.Reasons[0].Detail == "" {
						t.Fatalf("no actionable reason in the problem's appraisal: %+v", tpmA)
					}
					t.Logf("%s", tpmA.Reasons[0].Detail)
				})
			}
		})
	}
	if covered < 10 {
		t.Fatalf("only %d real platforms attested end to end", covered)
	}
}

// TestOfflinePlatforms applies the attacks to the real logs the simulator
// cannot replay, and checks them offline (vouch refs check) against the
// shipped set: the attack's reason is among the findings.
func TestOfflinePlatforms(t *testing.T) {
	refs, err := firmwarerefs.LoadWithPlatforms()
	if err != nil {
		t.Fatal(err)
	}
	all := slices.Concat(mutations, []mutation{{
		name:    "firmware changed",
		applies: func(b *policy.BootFacts) bool { return hasClass(b, policy.ClassFirmware) },
		mutate: func(t *testing.T, log []byte) []byte {
			for _, e := range parseLog(t, log) {
				if !e.HeaderEvent && e.PCR == 0 && (e.Type == 0x80000008 || e.Type == 0x80000010 || e.Type == 0x11 || e.Type == 0x1 || e.Type == 0x7) {
					return tamper.SetDigests(log, e, func(_ uint16, old []byte) []byte { d := bytes.Clone(old); d[0] ^= 1; return d })
				}
			}
			return log
		},
		want: attest.ReasonRefsFirmware,
	}})
	for name := range unreplayable {
		log, err := os.ReadFile("../testdata/eventlogs/" + name + ".bin")
		if err != nil {
			t.Fatal(err)
		}
		v := policy.VerifyOptions{}
		boot, _, err := policy.OfflineBoot(log, &v, true)
		if err != nil {
			t.Fatal(err)
		}
		applied := 0
		for _, m := range all {
			if !m.applies(boot) {
				continue
			}
			applied++
			t.Run(name+"/"+m.name, func(t *testing.T) {
				rep, err := policy.Check(refs, m.mutate(t, log), nil, policy.CheckOptions{Profile: name})
				if err != nil {
					t.Fatal(err)
				}
				var reasons []attest.Reason
				for _, f := range rep.Findings {
					reasons = append(reasons, f.Reason)
				}
				if rep.Status != attest.StatusContraindicated || !slices.Contains(reasons, m.want) {
					t.Fatalf("%s with %v, want contraindicated with %s", rep.StatusName, reasons, m.want)
				}
			})
		}
		if applied == 0 {
			t.Errorf("%s: no attack applies", name)
		}
	}
}

// TestAKDenied puts the agent's AK on the threat-intelligence deny list: the
// ak step refuses it although it is enrolled.
func TestAKDenied(t *testing.T) {
	shipped, err := firmwarerefs.LoadWithPlatforms()
	if err != nil {
		t.Fatal(err)
	}
	holder := verifier.NewRefHolder(shipped)
	srv, client := verifierOnLoopback(t, holder)
	log, err := os.ReadFile(bootLog)
	if err != nil {
		t.Fatal(err)
	}
	agent, done := bootedAgent(t, srv, log)
	defer done()
	if _, err := agent.Attest(context.Background(), client, request); err != nil {
		t.Fatalf("before the deny list: %v", err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(agent.AKPublic())
	d := sha256.Sum256(spki)
	denied, err := policy.NewRefSet(shipped.Profiles, shipped.Images, policy.DenyList{AKs: policy.DigestList{{Digest: d[:], Note: "machine reported stolen"}}})
	if err != nil {
		t.Fatal(err)
	}
	holder.Set(denied)
	_, err = agent.Attest(context.Background(), client, request)
	var pe *attest.ProblemError
	if !errors.As(err, &pe) || pe.Problem.Reason != attest.ReasonAKDenied || !strings.Contains(pe.Problem.Detail, "machine reported stolen") {
		t.Fatalf("denied AK: %v", err)
	}
	if ok, _ := holder.EKDenied(d[:]); ok {
		t.Fatal("an AK entry denied an EK")
	}
}
