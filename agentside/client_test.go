package agentside

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/server"

	"github.com/vouch-dev/vouch/attest"
)

// fakeVerifier implements the verifier API contract; attest checks the
// evidence with go-tpm-tools and answers with a fixed credential.
type fakeVerifier struct {
	t         *testing.T
	nonce     []byte
	used      bool
	akPub     crypto.PublicKey
	challenge func(w http.ResponseWriter) // overrides the challenge answer
	answer    func(w http.ResponseWriter) // overrides the attest answer
}

func (f *fakeVerifier) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/prefix/v1/challenge":
		if f.challenge != nil {
			f.challenge(w)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"nonce":"`+base64.StdEncoding.EncodeToString(f.nonce)+`","expires_at":"2030-01-02T03:04:05Z"}`)
	case r.Method == http.MethodPost && r.URL.Path == "/prefix/v1/attest":
		if r.Header.Get("Content-Type") != attest.EvidenceMediaType {
			attest.WriteProblem(w, attest.ProblemFor(http.StatusUnsupportedMediaType, attest.Errorf(attest.ReasonUnsupportedMediaType, "want evidence")))
			return
		}
		if f.answer != nil {
			f.answer(w)
			return
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, attest.MaxEvidenceSize+1))
		ev, err := attest.DecodeEvidence(body)
		if err != nil {
			attest.WriteProblem(w, attest.ProblemFor(http.StatusBadRequest, err))
			return
		}
		if !bytes.Equal(ev.Nonce, f.nonce) || f.used {
			attest.WriteProblem(w, attest.ProblemFor(http.StatusConflict, attest.Errorf(attest.ReasonNonceReplayed, "nonce already used at 12:00")))
			return
		}
		f.used = true
		att := decodeAttestation(f.t, ev)
		if _, err := server.VerifyAttestation(att, server.VerifyOpts{Nonce: attest.Binding(ev.Nonce, ev.AgentKey, ev.Request), TrustedAKs: []crypto.PublicKey{f.akPub}}); err != nil {
			attest.WriteProblem(w, attest.ProblemFor(http.StatusForbidden, attest.Errorf(attest.ReasonQuoteInvalid, "%v", err)))
			return
		}
		w.Header().Set("Content-Type", "application/cwt")
		w.Header().Set(LogIndexHeader, "42")
		_, _ = w.Write([]byte("credential-bytes"))
	default:
		http.NotFound(w, r)
	}
}

func TestAgentAttest(t *testing.T) {
	_, agent := bootedAgent(t, "cos-121-amd-sev.bin", Workload{ImageRef: "r", ImageDigest: testDigest})
	fv := &fakeVerifier{t: t, nonce: bytes.Repeat([]byte{9}, attest.NonceSize), akPub: agent.AKPublic()}
	srv := httptest.NewServer(fv)
	defer srv.Close()
	c, err := NewClient(srv.URL+"/prefix/", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	req := &attest.Request{Audience: "vouch-demo", Intent: "read"}
	iss, err := agent.AttestIssued(ctx, c, req)
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	if string(iss.Credential) != "credential-bytes" || iss.LogIndex != "42" {
		t.Errorf("issued = %q, log index %q", iss.Credential, iss.LogIndex)
	}
	// The fake verifier refuses a second use of its only nonce.
	_, err = agent.Attest(ctx, c, req)
	var ae *attest.Error
	if !errors.As(err, &ae) || ae.Reason != attest.ReasonNonceReplayed || !strings.Contains(ae.Detail, "12:00") {
		t.Fatalf("second Attest = %v, want nonce-replayed with the server's detail", err)
	}
	// An invalid request is refused before a nonce is spent.
	if _, err := agent.Attest(ctx, c, &attest.Request{}); attest.ReasonOf(err) != attest.ReasonAudienceInvalid {
		t.Errorf("Attest without audience = %v", err)
	}
}

func TestClientResponses(t *testing.T) {
	nonce := bytes.Repeat([]byte{3}, attest.NonceSize)
	ev := &attest.Evidence{Version: 1, Nonce: nonce, Request: []byte{1}, TPM: []byte{1}, AgentKey: []byte{1}, CertifyInfo: []byte{1}, CertifySig: []byte{1}}
	tests := []struct {
		name      string
		challenge func(w http.ResponseWriter)
		answer    func(w http.ResponseWriter)
		reason    attest.Reason // of the error, if it is an *attest.Error
		want      string
	}{
		{
			name:      "challenge not json",
			challenge: func(w http.ResponseWriter) { w.Header().Set("Content-Type", "text/plain"); w.WriteHeader(201) },
			want:      "Content-Type",
		},
		{
			name: "short nonce",
			challenge: func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(201)
				_, _ = io.WriteString(w, `{"nonce":"AAAA","expires_at":"2030-01-02T03:04:05Z"}`)
			},
			want: "32 bytes",
		},
		{
			name: "bad expiry",
			challenge: func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(201)
				_, _ = io.WriteString(w, `{"nonce":"`+base64.StdEncoding.EncodeToString(nonce)+`","expires_at":"tomorrow"}`)
			},
			want: "RFC 3339",
		},
		{
			name: "huge challenge",
			challenge: func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(201)
				_, _ = w.Write(bytes.Repeat([]byte(" "), maxChallengeSize+10))
			},
			want: "larger than",
		},
		{
			name: "challenge unavailable",
			challenge: func(w http.ResponseWriter) {
				w.WriteHeader(503)
				_, _ = io.WriteString(w, "down")
			},
			reason: attest.ReasonUnavailable,
		},
		{
			name: "refused",
			answer: func(w http.ResponseWriter) {
				attest.WriteProblem(w, attest.ProblemFor(403, attest.Errorf(attest.ReasonAKUnknown, "enroll it")))
			},
			reason: attest.ReasonAKUnknown,
			want:   "enroll it",
		},
		{
			name: "huge credential",
			answer: func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "application/cwt")
				_, _ = w.Write(make([]byte, attest.MaxCredentialSize+1))
			},
			want: "larger than",
		},
		{
			name:   "empty credential",
			answer: func(w http.ResponseWriter) { w.Header().Set("Content-Type", "application/cwt") },
			want:   "empty credential",
		},
		{
			name: "credential wrong type",
			answer: func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, "{}")
			},
			want: "Content-Type",
		},
		{
			name: "redirect not followed",
			answer: func(w http.ResponseWriter) {
				w.Header().Set("Location", "http://elsewhere.example/")
				w.WriteHeader(307)
			},
			reason: attest.ReasonRequestMalformed,
			want:   "307",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fv := &fakeVerifier{t: t, nonce: nonce, challenge: tc.challenge, answer: tc.answer}
			srv := httptest.NewServer(fv)
			defer srv.Close()
			c, err := NewClient(srv.URL+"/prefix", nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if tc.challenge != nil {
				_, err = c.Challenge(ctx)
			} else {
				if _, err := c.Challenge(ctx); err != nil {
					t.Fatal(err)
				}
				_, err = c.Attest(ctx, ev)
			}
			if err == nil {
				t.Fatal("no error")
			}
			if tc.reason != "" && attest.ReasonOf(err) != tc.reason {
				t.Errorf("reason = %s, want %s (%v)", attest.ReasonOf(err), tc.reason, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestClientHonoursContext(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	c, err := NewClient(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Challenge(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Challenge with a cancelled context = %v", err)
	}
}

func TestNewClient(t *testing.T) {
	tests := []struct {
		base string
		ok   bool
		want string // endpoint of the challenge
	}{
		{"https://vouch.example", true, "https://vouch.example/v1/challenge"},
		{"http://127.0.0.1:8443/api/", true, "http://127.0.0.1:8443/api/v1/challenge"},
		{"vouch.example", false, ""},
		{"ftp://vouch.example", false, ""},
		{"https://vouch.example/?x=1", false, ""},
		{"https://user:pw@vouch.example/", false, ""},
		{"https://", false, ""},
	}
	for _, tc := range tests {
		c, err := NewClient(tc.base, nil)
		if (err == nil) != tc.ok {
			t.Errorf("NewClient(%q) error = %v, want ok=%v", tc.base, err, tc.ok)
			continue
		}
		if tc.ok && c.endpoint(challengePath) != tc.want {
			t.Errorf("NewClient(%q) challenge endpoint = %q, want %q", tc.base, c.endpoint(challengePath), tc.want)
		}
	}
}
