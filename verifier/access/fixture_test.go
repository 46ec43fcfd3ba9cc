package access_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/access"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/issuer"
	"github.com/vouch-dev/vouch/verifier/monitor"
	"github.com/vouch-dev/vouch/verifier/store"
)

const (
	image    = "sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d"
	audience = "https://docs.example"
	rpOrigin = "https://docs.example"
	report   = `Document::"customer-A/report-7"`
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// auditLog collects records.
type auditLog struct {
	mu   sync.Mutex
	recs []*audit.Record
	fail error
}

func (l *auditLog) Append(_ context.Context, r *audit.Record) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail != nil {
		return 0, l.fail
	}
	l.recs = append(l.recs, r)
	return uint64(len(l.recs) - 1), nil
}

// all returns every record so far.
func (l *auditLog) all() []*audit.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*audit.Record(nil), l.recs...)
}

// last returns the newest record the authorization service wrote. The
// monitor appends its own records (alerts) concurrently; they are skipped.
func (l *auditLog) last() *audit.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.recs) - 1; i >= 0; i-- {
		if k := l.recs[i].Kind; k != audit.KindAlert {
			return l.recs[i]
		}
	}
	return nil
}

// fixture is a verifier on loopback with an admin user "alice" and a
// software agent key (the credential is minted by the verifier's real
// issuer: these tests are about decisions, not attestation).
type fixture struct {
	srv    *verifier.Server
	http   *httptest.Server
	clock  *clock
	audit  *auditLog
	alice  *access.Client
	aliceK crypto.Signer
	agent  *ecdsa.PrivateKey
	sub    string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	refs, err := firmwarerefs.Load()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{clock: &clock{t: time.Now().Truncate(time.Second)}, audit: &auditLog{}}
	// These tests send one agent's bad requests in a row on purpose: the
	// monitor watches but only logs, so its automated response does not
	// revoke the agent under test (verifier/scenario_test.go tests that).
	watchOnly, err := monitor.ParseConfig([]byte("response: {low: [log], medium: [log], high: [log], critical: [log]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	f.srv, err = verifier.New(context.Background(), verifier.Config{
		DataDir: t.TempDir(), Refs: verifier.NewRefHolder(refs), Now: f.clock.Now,
		Logger: slog.New(slog.DiscardHandler), Audit: f.audit, Issuer: "vouchd-test", Monitor: watchOnly,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.srv.Close() })
	f.http = httptest.NewServer(f.srv.Handler())
	t.Cleanup(f.http.Close)
	f.aliceK = f.addUser(t, "alice", true)
	f.alice = f.client(t, "alice", f.aliceK)
	f.agent, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ck, _ := attest.PublicCOSEKey(f.agent.Public())
	ck.ID = nil
	f.sub, _ = attest.SubjectOf(ck)
	return f
}

// addUser registers a user directly in the store, as `vouch users add
// --data` does.
func (f *fixture) addUser(t testing.TB, id string, admin bool) crypto.Signer {
	t.Helper()
	k, err := access.GenerateUserKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(k.Public())
	if err := f.srv.Store().AddUser(context.Background(), store.User{ID: id, PublicKey: spki, Admin: admin, CreatedAt: time.Now(), CreatedBy: "test"}); err != nil {
		t.Fatal(err)
	}
	return k
}

func (f *fixture) client(t testing.TB, user string, key crypto.Signer) *access.Client {
	t.Helper()
	c, err := access.NewClient(f.http.URL, user, key, f.http.Client())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// delegate creates a delegation for the demo image on customer-A.
func (f *fixture) delegate(t testing.TB, mutate func(*access.DelegationRequest)) *access.DelegationView {
	t.Helper()
	q := &access.DelegationRequest{
		Intent: "summarize-documents", ImageDigests: []string{image},
		Resources: []string{`Document::"customer-A/*"`, `Summary::"customer-A/*"`},
		ExpiresAt: f.clock.Now().Add(time.Hour),
	}
	if mutate != nil {
		mutate(q)
	}
	d, err := f.alice.CreateDelegation(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// mint signs a credential with the verifier's issuer for the fixture's
// agent key (or key, if given), as /v1/attest would after an affirming
// appraisal of the demo image.
func (f *fixture) mint(t testing.TB, key *ecdsa.PrivateKey, mutate func(*attest.Claims)) []byte {
	t.Helper()
	if key == nil {
		key = f.agent
	}
	ck, _ := attest.PublicCOSEKey(key.Public())
	ck.ID = nil
	sub, _ := attest.SubjectOf(ck)
	id, _ := issuer.NewID()
	now := f.clock.Now()
	digest, _ := hex.DecodeString(strings.TrimPrefix(image, "sha256:"))
	c := &attest.Claims{
		Issuer: "vouchd-test", Subject: sub, Audience: audience,
		Expiry: now.Add(time.Minute).Unix(), NotBefore: now.Unix(), IssuedAt: now.Unix(), ID: id,
		Confirm: attest.Confirmation{Key: ck}, Nonce: make([]byte, 32), Profile: attest.Profile,
		Submods: map[string]attest.Appraisal{
			attest.SubmodTPM:      {Status: attest.StatusAffirming, Claims: &attest.AttesterClaims{Platform: "rhel8-uefi"}},
			attest.SubmodWorkload: {Status: attest.StatusAffirming, Claims: &attest.AttesterClaims{ImageDigest: &attest.Digest{Alg: attest.HashSHA256, Value: digest}}},
		},
		VerifierID: attest.VerifierID{Developer: "vouch.dev", Build: "test"},
		Intent:     "summarize-documents",
		Scope:      []string{`documents:read:Document::"customer-A/*"`, `summaries:create:Summary::"customer-A/*"`},
	}
	if mutate != nil {
		mutate(c)
	}
	raw, err := f.srv.Keys().Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// question builds a relying party's question for one request it received:
// GET (or method) on the RP, with a proof by key.
func (f *fixture) question(t testing.TB, cred []byte, key crypto.Signer, method, action, resource string) *attest.AuthorizeRequest {
	t.Helper()
	if key == nil {
		key = f.agent
	}
	u, _ := url.Parse(rpOrigin + "/documents/customer-A/report-7")
	pc, err := attest.NewPoPClaims(method, attest.TargetURI(u), nil, cred, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	pop, err := attest.SignPoP(key, pc)
	if err != nil {
		t.Fatal(err)
	}
	bd := sha256.Sum256(nil)
	return &attest.AuthorizeRequest{
		Credential: cred, PoP: pop, Method: method, Target: attest.TargetURI(u), BodySHA256: bd[:],
		Audience: audience, Action: action, Resource: resource, Context: attest.AuthorizeContext{SourceIP: "10.1.2.3"},
	}
}

// ask posts a question over HTTP.
func (f *fixture) ask(t testing.TB, q *attest.AuthorizeRequest) *attest.Decision {
	t.Helper()
	d, err := attest.PostAuthorize(context.Background(), f.http.Client(), f.http.URL+attest.AuthorizePath, q)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (f *fixture) agentClient(t testing.TB) *agentside.Client {
	t.Helper()
	c, err := agentside.NewClient(f.http.URL, f.http.Client())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func drain(r io.ReadCloser) { io.Copy(io.Discard, r); r.Close() }
