package access_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/access"
	"github.com/vouch-dev/vouch/verifier/store"
)

func TestAdminAuthentication(t *testing.T) {
	f := newFixture(t)
	send := func(mutate func(*http.Request), sign func(*http.Request, []byte)) error {
		body := []byte(`{}`)
		req, _ := http.NewRequest(http.MethodGet, f.http.URL+"/v1/delegations", bytes.NewReader(body))
		if sign != nil {
			sign(req, body)
		}
		if mutate != nil {
			mutate(req)
		}
		resp, err := f.http.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		return attest.ReadProblem(resp)
	}
	aliceSigns := func(at time.Time) func(*http.Request, []byte) {
		return func(req *http.Request, body []byte) {
			if err := access.SignRequest(req, body, "alice", f.aliceK, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	now := f.clock.Now()
	mallory, _ := access.GenerateUserKey("p256")
	var captured *http.Request
	tests := []struct {
		name   string
		sign   func(*http.Request, []byte)
		mutate func(*http.Request)
		want   attest.Reason
	}{
		{name: "signed by alice", sign: aliceSigns(now)},
		{name: "unsigned", want: attest.ReasonUserUnauthenticated},
		{name: "not base64", mutate: func(r *http.Request) { r.Header.Set(access.SignatureHeader, "!!") }, want: attest.ReasonUserUnauthenticated},
		{name: "60 s old", sign: aliceSigns(now.Add(-60 * time.Second))},
		{name: "61 s old", sign: aliceSigns(now.Add(-61 * time.Second)), want: attest.ReasonUserUnauthenticated},
		{name: "6 s ahead", sign: aliceSigns(now.Add(6 * time.Second)), want: attest.ReasonUserUnauthenticated},
		{name: "another body", sign: aliceSigns(now), mutate: func(r *http.Request) {
			r.Body = http.NoBody
			r.ContentLength = 0
		}, want: attest.ReasonUserUnauthenticated},
		{name: "another path", sign: aliceSigns(now), mutate: func(r *http.Request) { r.URL.RawQuery = "user=bob" }, want: attest.ReasonUserUnauthenticated},
		{name: "mallory's key claiming to be alice", sign: func(r *http.Request, b []byte) {
			if err := access.SignRequest(r, b, "alice", mallory, now); err != nil {
				t.Fatal(err)
			}
		}, want: attest.ReasonUserUnauthenticated},
		{name: "unknown user", sign: func(r *http.Request, b []byte) {
			access.SignRequest(r, b, "mallory", mallory, now)
		}, want: attest.ReasonUserUnauthenticated},
		{name: "replayed signature", sign: aliceSigns(now), mutate: func(r *http.Request) {
			captured = r
		}},
	}
	for _, tt := range tests {
		err := send(tt.mutate, tt.sign)
		if attest.ReasonOf(err) != tt.want && !(tt.want == "" && err == nil) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
	err := send(func(r *http.Request) { r.Header = captured.Header.Clone() }, nil)
	if attest.ReasonOf(err) != attest.ReasonUserUnauthenticated {
		t.Errorf("replay: %v", err)
	}
}

func TestAdminPermissions(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	bobK := f.addUser(t, "bob", false)
	bob := f.client(t, "bob", bobK)
	aliceDlg := f.delegate(t, nil)
	bobDlg, err := bob.CreateDelegation(ctx, &access.DelegationRequest{
		Intent: "read-summaries", AgentIDs: []string{"urn:ietf:params:oauth:ckt:sha-256:x"},
		Resources: []string{`Summary::"bob/*"`}, ExpiresAt: f.clock.Now().Add(time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	if bobDlg.User != "bob" || bobDlg.Status != "active" || len(bobDlg.ID) != 30 {
		t.Fatalf("bob's delegation %+v", bobDlg)
	}
	if list, err := bob.Delegations(ctx, ""); err != nil || len(list) != 1 || list[0].ID != bobDlg.ID {
		t.Fatalf("bob lists %+v %v", list, err)
	}
	if list, err := f.alice.Delegations(ctx, ""); err != nil || len(list) != 2 {
		t.Fatalf("admin lists %d %v", len(list), err)
	}
	checks := []struct {
		name string
		err  error
		want attest.Reason
	}{
		{"bob reads alice's delegation", func() error { _, err := bob.Delegation(ctx, aliceDlg.ID); return err }(), attest.ReasonDelegationUnknown},
		{"bob revokes alice's delegation", func() error { _, err := bob.SetStatus(ctx, aliceDlg.ID, "revoke", ""); return err }(), attest.ReasonDelegationUnknown},
		{"bob lists alice's", func() error { _, err := bob.Delegations(ctx, "alice"); return err }(), attest.ReasonUserForbidden},
		{"bob adds a user", func() error {
			_, err := bob.AddUser(ctx, &access.UserRequest{ID: "carol", PublicKey: pubPEM(t)})
			return err
		}(), attest.ReasonUserForbidden},
		{"bob lists users", func() error { _, err := bob.Users(ctx); return err }(), attest.ReasonUserForbidden},
		{"bad operation", func() error { _, err := f.alice.SetStatus(ctx, aliceDlg.ID, "delete", ""); return err }(), attest.ReasonRequestMalformed},
	}
	for _, c := range checks {
		if attest.ReasonOf(c.err) != c.want {
			t.Errorf("%s: %v, want %s", c.name, c.err, c.want)
		}
	}
	// The admin manages anyone's; bob's revocation by alice is recorded as hers.
	v, err := f.alice.SetStatus(ctx, bobDlg.ID, "revoke", "left the company")
	if err != nil || v.Status != "revoked" || v.UpdatedBy != "alice" || v.Reason != "left the company" {
		t.Fatalf("%+v %v", v, err)
	}
	u, err := f.alice.AddUser(ctx, &access.UserRequest{ID: "carol", PublicKey: pubPEM(t)})
	if err != nil || u.ID != "carol" || u.Admin || u.CreatedBy != "alice" {
		t.Fatalf("%+v %v", u, err)
	}
	if _, err := f.alice.AddUser(ctx, &access.UserRequest{ID: "carol", PublicKey: pubPEM(t)}); attest.ReasonOf(err) != attest.ReasonRequestMalformed {
		t.Fatalf("duplicate user: %v", err)
	}
	if list, err := f.alice.Users(ctx); err != nil || len(list) != 3 {
		t.Fatalf("users %+v %v", list, err)
	}
}

func pubPEM(t *testing.T) string {
	k, _ := access.GenerateUserKey("ed25519")
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func TestDelegationValidation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := f.clock.Now()
	nb := now.Add(2 * time.Hour)
	tests := []struct {
		name string
		mut  func(*access.DelegationRequest)
		want attest.Reason
	}{
		{"unknown intent", func(q *access.DelegationRequest) { q.Intent = "do-anything" }, attest.ReasonIntentUnknown},
		{"no agents", func(q *access.DelegationRequest) { q.ImageDigests = nil }, attest.ReasonRequestMalformed},
		{"bad image digest", func(q *access.DelegationRequest) { q.ImageDigests = []string{"latest"} }, attest.ReasonRequestMalformed},
		{"no resources", func(q *access.DelegationRequest) { q.Resources = nil }, attest.ReasonRequestMalformed},
		{"malformed resource", func(q *access.DelegationRequest) { q.Resources = []string{"customer-A/*"} }, attest.ReasonRequestMalformed},
		{"resource type no intent action applies to", func(q *access.DelegationRequest) { q.Resources = []string{`Invoice::"x"`} }, attest.ReasonRequestMalformed},
		{"action outside the intent", func(q *access.DelegationRequest) { q.Actions = []string{"documents:delete"} }, attest.ReasonIntentAction},
		{"bad network", func(q *access.DelegationRequest) { q.Networks = []string{"10.0.0.0/33"} }, attest.ReasonRequestMalformed},
		{"bad window", func(q *access.DelegationRequest) { q.Window = "9-5" }, attest.ReasonRequestMalformed},
		{"already expired", func(q *access.DelegationRequest) { q.ExpiresAt = now }, attest.ReasonRequestMalformed},
		{"too long", func(q *access.DelegationRequest) { q.ExpiresAt = now.Add(91 * 24 * time.Hour) }, attest.ReasonRequestMalformed},
		{"starts after it ends", func(q *access.DelegationRequest) { q.NotBefore = &nb }, attest.ReasonRequestMalformed},
	}
	for _, tt := range tests {
		q := &access.DelegationRequest{Intent: "summarize-documents", ImageDigests: []string{image}, Resources: []string{`Document::"customer-A/*"`}, ExpiresAt: now.Add(time.Hour)}
		tt.mut(q)
		if _, err := f.alice.CreateDelegation(ctx, q); attest.ReasonOf(err) != tt.want {
			t.Errorf("%s: %v, want %s", tt.name, err, tt.want)
		}
	}
	// A delegation that starts later is listed as expired until then.
	later := now.Add(time.Minute)
	d := f.delegate(t, func(q *access.DelegationRequest) { q.NotBefore = &later })
	if d.Status != "expired" {
		t.Fatalf("not yet valid delegation shows %q", d.Status)
	}
	body, _ := json.Marshal(d)
	if !bytes.Contains(body, []byte(`"not_before"`)) {
		t.Fatal(string(body))
	}
}

// TestClientCertificate: with TLS, a client certificate carrying a
// registered user's key authenticates that user without a signature.
func TestClientCertificate(t *testing.T) {
	f := newFixture(t)
	// A CA, and a client certificate for a key registered as "dave".
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vouch users CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	ca, _ := x509.ParseCertificate(caDER)
	userKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(userKey.Public())
	if err := f.srv.Store().AddUser(context.Background(), storeUser("dave", spki)); err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "dave"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, _ := x509.CreateCertificate(rand.Reader, leafTmpl, ca, userKey.Public(), caKey)
	strangerKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	strangerDER, _ := x509.CreateCertificate(rand.Reader, leafTmpl, ca, strangerKey.Public(), caKey)

	srv := httptest.NewUnstartedServer(f.srv.Handler())
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	srv.StartTLS()
	defer srv.Close()
	get := func(cert tls.Certificate) (int, error) {
		tr := srv.Client().Transport.(*http.Transport).Clone()
		tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
		resp, err := (&http.Client{Transport: tr}).Get(srv.URL + "/v1/delegations")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return resp.StatusCode, attest.ReadProblem(resp)
		}
		return resp.StatusCode, nil
	}
	if code, err := get(tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: userKey}); code != http.StatusOK {
		t.Fatalf("dave's certificate: %d %v", code, err)
	}
	if _, err := get(tls.Certificate{Certificate: [][]byte{strangerDER}, PrivateKey: strangerKey}); attest.ReasonOf(err) != attest.ReasonUserUnauthenticated {
		t.Fatalf("a trusted certificate for an unregistered key: %v", err)
	}
	if _, err := get(tls.Certificate{}); attest.ReasonOf(err) != attest.ReasonUserUnauthenticated {
		t.Fatalf("no certificate: %v", err)
	}
}

func TestUserKeyFiles(t *testing.T) {
	dir := t.TempDir()
	for _, kind := range []string{"ed25519", "p256"} {
		k, err := access.GenerateUserKey(kind)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, kind+".key")
		if err := access.WriteUserKey(path, k); err != nil {
			t.Fatal(err)
		}
		if _, err := access.LoadUserKey(path); err != nil {
			t.Fatal(err)
		}
		pub, err := os.ReadFile(path + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := access.ParsePublicKey(pub); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, 0o644)
		if _, err := access.LoadUserKey(path); err == nil {
			t.Fatal("a world-readable key was loaded")
		}
	}
	if _, err := access.GenerateUserKey("rsa"); err == nil {
		t.Fatal("rsa accepted")
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(p384.Public())
	if _, err := access.ParsePublicKey(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})); err == nil {
		t.Fatal("P-384 user key accepted")
	}
}

func storeUser(id string, spki []byte) store.User {
	return store.User{ID: id, PublicKey: spki, CreatedAt: time.Now(), CreatedBy: "test"}
}
