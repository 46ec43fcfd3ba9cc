package attest_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// A relying party protects its API with the middleware; an agent calls it
// with its credential and a fresh proof of possession per request.
func Example_relyingParty() {
	// The verifier's signing key and published key set (GET /v1/keys); a
	// real relying party uses attest.NewRemoteKeys with the verifier's URL.
	issuerKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	issuerCOSE, _ := attest.PublicCOSEKey(issuerKey.Public())
	keys, _ := attest.NewKeySet(issuerCOSE)

	// The relying party.
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/documents/", func(w http.ResponseWriter, r *http.Request) {
		c, _ := attest.ClaimsFromContext(r.Context())
		fmt.Fprintf(w, "hello agent with intent %q", c.Intent)
	})
	srv := httptest.NewServer(nil)
	defer srv.Close()
	protect, err := attest.NewMiddleware(attest.MiddlewareOptions{
		Keys:       attest.StaticKeys{Keys: keys},
		Credential: attest.CredentialOptions{Audience: []string{"https://docs.example"}},
		Origin:     srv.URL, // the external origin clients use, e.g. https://docs.example
	})
	if err != nil {
		panic(err)
	}
	srv.Config.Handler = protect(mux)

	// The verifier issues a credential bound to the agent's key (in real
	// life a TPM-resident key, after appraising the agent's evidence).
	agentKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cnf, _ := attest.PublicCOSEKey(agentKey.Public())
	sub, _ := attest.SubjectOf(cnf)
	now := time.Now()
	cred, err := attest.SignCredential(issuerKey, issuerCOSE.ID, &attest.Claims{
		Issuer: "https://vouchd.example", Subject: sub, Audience: "https://docs.example",
		Expiry: now.Unix() + 60, NotBefore: now.Unix(), IssuedAt: now.Unix(),
		ID: make([]byte, 16), Confirm: attest.Confirmation{Key: cnf}, Nonce: make([]byte, 32),
		Profile: attest.Profile, Intent: "summarise",
	})
	if err != nil {
		panic(err)
	}

	// The agent: credential in Authorization, proof of possession over
	// method, target URI, body and credential in Vouch-PoP.
	body := []byte(`{"question":"what changed?"}`)
	req, _ := http.NewRequest("POST", srv.URL+"/v1/documents/customer-A", bytes.NewReader(body))
	claims, _ := attest.NewPoPClaims(req.Method, attest.TargetURI(req.URL), body, cred, time.Now())
	pop, _ := attest.SignPoP(agentKey, claims)
	req.Header.Set("Authorization", attest.AuthScheme+" "+base64.RawURLEncoding.EncodeToString(cred))
	req.Header.Set(attest.PoPHeader, base64.RawURLEncoding.EncodeToString(pop))

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		panic(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, string(out))

	// The same request again is a replay.
	req2, _ := http.NewRequest("POST", srv.URL+"/v1/documents/customer-A", bytes.NewReader(body))
	req2.Header = req.Header.Clone()
	resp, _ = http.DefaultClient.Do(req2)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	// Output:
	// 200 hello agent with intent "summarise"
	// 401 Vouch error="pop-replayed"
}

// VerifyCredential and PoPVerifier can be used without HTTP, e.g. for
// another transport.
func ExampleVerifyCredential() {
	issuerKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	issuerCOSE, _ := attest.PublicCOSEKey(issuerKey.Public())
	keys, _ := attest.NewKeySet(issuerCOSE)
	agentKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cnf, _ := attest.PublicCOSEKey(agentKey.Public())
	sub, _ := attest.SubjectOf(cnf)
	now := time.Now()
	cred, _ := attest.SignCredential(issuerKey, issuerCOSE.ID, &attest.Claims{
		Subject: sub, Audience: "https://docs.example", Expiry: now.Unix() + 60, IssuedAt: now.Unix(),
		ID: make([]byte, 16), Confirm: attest.Confirmation{Key: cnf}, Profile: attest.Profile,
	})

	_, err := attest.VerifyCredential(cred, keys, attest.CredentialOptions{Audience: []string{"https://other.example"}})
	fmt.Println(attest.ReasonOf(err))
	c, err := attest.VerifyCredential(cred, keys, attest.CredentialOptions{Audience: []string{"https://docs.example"}})
	fmt.Println(err == nil, c.Subject == sub)

	pub, _ := attest.ECDSAPublic(c.Confirm.Key)
	pv := attest.NewPoPVerifier(attest.PoPOptions{})
	pc, _ := attest.NewPoPClaims("GET", "https://docs.example/v1/x", nil, cred, time.Now())
	pop, _ := attest.SignPoP(agentKey, pc)
	_, err = pv.Verify(pop, pub, "GET", "https://docs.example/v1/y", nil, cred)
	fmt.Println(attest.ReasonOf(err))
	// Output:
	// credential-audience
	// true true
	// pop-target
}

// A scope entry grants one action on a resource or a prefix pattern of
// resources; ScopeAllows is what the offline ScopeAuthorizer checks.
func ExampleScopeAllows() {
	scope := []string{`documents:read:Document::"customer-A/*"`, `summaries:create:Summary::"customer-A/report-7"`}
	for _, q := range []struct{ action, resource string }{
		{"documents:read", `Document::"customer-A/report-7"`},
		{"documents:delete", `Document::"customer-A/report-7"`},
		{"documents:read", `Document::"customer-B/report-1"`},
	} {
		res, _ := attest.ParseResource(q.resource)
		fmt.Println(q.action, q.resource, attest.ScopeAllows(scope, q.action, res))
	}
	// Output:
	// documents:read Document::"customer-A/report-7" true
	// documents:delete Document::"customer-A/report-7" false
	// documents:read Document::"customer-B/report-1" false
}
