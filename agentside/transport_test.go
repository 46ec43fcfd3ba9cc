package agentside

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/veraison/go-cose"

	"github.com/vouch-dev/vouch/attest"
)

// seen is what the relying party received.
type seen struct {
	method, uri, auth, pop string
	body                   []byte
}

func recordingServer(t *testing.T) (*httptest.Server, *[]seen) {
	var (
		mu  sync.Mutex
		got []seen
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		got = append(got, seen{r.Method, r.RequestURI, r.Header.Get("Authorization"), r.Header.Get(attest.PoPHeader), b})
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv, &got
}

// checkPoP decodes and verifies a Vouch-PoP header with go-cose and returns
// its claims.
func checkPoP(t *testing.T, header string, pub *ecdsa.PublicKey) *attest.PoPClaims {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(header)
	if err != nil {
		t.Fatalf("Vouch-PoP is not unpadded base64url: %v", err)
	}
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(raw); err != nil {
		t.Fatalf("Vouch-PoP is not a COSE_Sign1: %v", err)
	}
	alg, err := msg.Headers.Protected.Algorithm()
	if err != nil || alg != cose.AlgorithmES256 {
		t.Fatalf("PoP alg = %v, %v; want ES256", alg, err)
	}
	if ct, _ := msg.Headers.Protected[cose.HeaderLabelContentType].(string); ct != attest.PoPContentType {
		t.Errorf("PoP content type = %v", msg.Headers.Protected[cose.HeaderLabelContentType])
	}
	v, err := cose.NewVerifier(cose.AlgorithmES256, pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.Verify(nil, v); err != nil {
		t.Fatalf("PoP signature: %v", err)
	}
	var c attest.PoPClaims
	if err := attest.Unmarshal(msg.Payload, &c); err != nil {
		t.Fatalf("PoP payload: %v", err)
	}
	return &c
}

func TestTransport(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srv, got := recordingServer(t)
	cred := []byte("\xd2the credential")
	now := time.Unix(1_900_000_000, 0)
	tr := &Transport{Credential: func() []byte { return cred }, Key: key, Now: func() time.Time { return now }}
	hc := &http.Client{Transport: tr}
	tests := []struct {
		method, path string
		body         []byte
	}{
		{http.MethodGet, "/docs/a?x=1&y=%20", nil},
		{http.MethodPost, "/docs", []byte(`{"q":"summarize"}`)},
		{http.MethodPut, "/Docs/%2Fweird", bytes.Repeat([]byte{0}, 100_000)},
		{http.MethodPost, "/empty", []byte{}},
	}
	ids := map[string]bool{}
	for i, tc := range tests {
		var body io.Reader
		if tc.body != nil {
			body = bytes.NewReader(tc.body)
		}
		req, err := http.NewRequest(tc.method, srv.URL+tc.path, body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Keep", "1")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		resp.Body.Close()
		if req.Header.Get("Authorization") != "" || req.Header.Get(attest.PoPHeader) != "" {
			t.Error("the transport modified the caller's request")
		}
		s := (*got)[i]
		if !bytes.Equal(s.body, tc.body) && !(len(s.body) == 0 && len(tc.body) == 0) {
			t.Errorf("%s %s: the server got a body of %d bytes, want %d", tc.method, tc.path, len(s.body), len(tc.body))
		}
		if s.auth != "Vouch "+base64.RawURLEncoding.EncodeToString(cred) {
			t.Errorf("Authorization = %q", s.auth)
		}
		c := checkPoP(t, s.pop, &key.PublicKey)
		wantTarget := strings.ToLower("http://"+srv.Listener.Addr().String()) + s.uri
		bd, cd := sha256.Sum256(tc.body), sha256.Sum256(cred)
		if c.Method != tc.method || c.Target != wantTarget || c.IssuedAt != now.Unix() ||
			!bytes.Equal(c.BodyDigest, bd[:]) || !bytes.Equal(c.CredentialDigest, cd[:]) || len(c.ID) != attest.PoPIDSize {
			t.Errorf("%s %s: claims = %+v, want target %q", tc.method, tc.path, c, wantTarget)
		}
		if ids[string(c.ID)] {
			t.Error("a proof id was reused")
		}
		ids[string(c.ID)] = true
	}
}

func TestTransportErrors(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv, got := recordingServer(t)
	tests := []struct {
		name string
		tr   *Transport
		body string
		want string
	}{
		{"no credential yet", &Transport{Credential: func() []byte { return nil }, Key: key}, "", "no credential yet"},
		{"no key", &Transport{Credential: func() []byte { return []byte("c") }}, "", "no proof-of-possession key"},
		{"body too large", &Transport{Credential: func() []byte { return []byte("c") }, Key: key, MaxBody: 10}, "01234567890", "larger than 10 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/x", strings.NewReader(tc.body))
			_, err := (&http.Client{Transport: tc.tr}).Do(req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Do = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if len(*got) != 0 {
		t.Errorf("%d requests reached the server", len(*got))
	}
}

// TestTransportWithTPMKey signs proofs with the TPM-resident agent key from
// several goroutines at once.
func TestTransportWithTPMKey(t *testing.T) {
	tpm := openSim(t, "")
	agent, err := NewAgent(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	srv, got := recordingServer(t)
	tr := &Transport{Credential: func() []byte { return []byte("cred") }, Key: agent.Signer()}
	hc := &http.Client{Transport: tr}
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			resp, err := hc.Post(srv.URL+"/p", "text/plain", strings.NewReader(strings.Repeat("b", i)))
			if err == nil {
				resp.Body.Close()
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range *got {
		c := checkPoP(t, s.pop, agent.PublicKey().(*ecdsa.PublicKey))
		bd := sha256.Sum256(s.body)
		if !bytes.Equal(c.BodyDigest, bd[:]) {
			t.Error("body digest mismatch")
		}
	}
	if len(*got) != n {
		t.Errorf("%d requests reached the server, want %d", len(*got), n)
	}
}
