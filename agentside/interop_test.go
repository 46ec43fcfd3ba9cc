package agentside

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// TestTransportAcceptedByMiddleware sends requests through Transport, signed
// with the TPM-resident agent key, to a relying party protected by the attest
// middleware, with a credential whose cnf is the agent key.
func TestTransportAcceptedByMiddleware(t *testing.T) {
	tpm := openSim(t, "")
	agent, err := NewAgent(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()

	issuer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	issuerKey, err := attest.PublicCOSEKey(&issuer.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := attest.NewKeySet(issuerKey)
	if err != nil {
		t.Fatal(err)
	}
	cnf, err := attest.PublicCOSEKey(agent.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	sub, err := attest.SubjectOf(cnf)
	if err != nil {
		t.Fatal(err)
	}
	const aud = "https://rp.example"
	now := time.Now()
	cred, err := attest.SignCredential(issuer, issuerKey.ID, &attest.Claims{
		Issuer: "test-verifier", Subject: sub, Audience: aud,
		Expiry: now.Add(time.Minute).Unix(), NotBefore: now.Unix(), IssuedAt: now.Unix(),
		ID: bytes.Repeat([]byte{1}, 16), Confirm: attest.Confirmation{Key: cnf},
		Nonce: bytes.Repeat([]byte{2}, attest.NonceSize), Profile: attest.Profile,
		Submods: map[string]attest.Appraisal{},
	})
	if err != nil {
		t.Fatal(err)
	}

	var handlerBody []byte
	var last *http.Request
	srv := httptest.NewUnstartedServer(nil)
	mw, err := attest.NewMiddleware(attest.MiddlewareOptions{
		Keys:       attest.StaticKeys{Keys: keys},
		Credential: attest.CredentialOptions{Audience: []string{aud}},
		Origin:     "http://" + srv.Listener.Addr().String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handlerBody, _ = io.ReadAll(r.Body)
		last = r
		w.WriteHeader(http.StatusOK)
	}))
	srv.Start()
	defer srv.Close()

	hc := &http.Client{Transport: &Transport{Credential: func() []byte { return cred }, Key: agent.Signer()}}
	body := `{"q":"summarize customer-A"}`
	resp, err := hc.Post(srv.URL+"/docs/customer-A?page=2", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, problem %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	if string(handlerBody) != body {
		t.Errorf("the handler got body %q, want %q", handlerBody, body)
	}

	// Replaying the same headers is refused.
	replay, _ := http.NewRequest(http.MethodPost, srv.URL+"/docs/customer-A?page=2", strings.NewReader(body))
	replay.Header = last.Header.Clone()
	resp, err = http.DefaultClient.Do(replay)
	if err != nil {
		t.Fatal(err)
	}
	if err := attest.ReadProblem(resp); resp.StatusCode != http.StatusUnauthorized || attest.ReasonOf(err) != attest.ReasonPoPReplayed {
		t.Errorf("replay: status %d, %v; want 401 pop-replayed", resp.StatusCode, err)
	}
	resp.Body.Close()

	// Another key than the cnf key is refused.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	hc = &http.Client{Transport: &Transport{Credential: func() []byte { return cred }, Key: other}}
	resp, err = hc.Get(srv.URL + "/docs")
	if err != nil {
		t.Fatal(err)
	}
	if err := attest.ReadProblem(resp); attest.ReasonOf(err) != attest.ReasonPoPSignature {
		t.Errorf("foreign key: status %d, %v; want pop-signature", resp.StatusCode, err)
	}
	resp.Body.Close()
}
