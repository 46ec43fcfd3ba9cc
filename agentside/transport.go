package agentside

import (
	"bytes"
	"crypto"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// DefaultMaxPoPBody bounds the request body a [Transport] reads to digest,
// when Transport.MaxBody is zero.
const DefaultMaxPoPBody = 8 << 20

// ErrNoCredential is the error of a [Transport] whose credential source has
// no credential (none yet, or the last one expired): the request is not sent.
var ErrNoCredential = errors.New("vouch transport: no credential yet; attest first")

// Transport is an http.RoundTripper that presents a Vouch credential on every
// request together with a fresh proof of possession of its key:
//
//	Authorization: Vouch <base64url credential>
//	Vouch-PoP: <base64url COSE_Sign1 of attest.PoPClaims>
//
// The proof covers the method, the target URI ([attest.TargetURI]), the time,
// a random id, the SHA-256 of the body and of the credential. The body is read
// (at most MaxBody bytes) to digest it and sent unchanged.
//
// It adds the credential to every request, including redirects, so use it
// only in an http.Client for the relying party the credential is for.
type Transport struct {
	// Base sends the request; nil means http.DefaultTransport.
	Base http.RoundTripper
	// Credential returns the current credential (COSE_Sign1 CWT). It is
	// called once per request, so a refresher can swap credentials.
	Credential func() []byte
	// Key is the proof-of-possession key, the credential's cnf key: for an
	// agent, [Agent.Signer].
	Key crypto.Signer
	// MaxBody bounds the request body; 0 means DefaultMaxPoPBody.
	MaxBody int64
	// Now returns the time put in proofs; nil means time.Now.
	Now func() time.Time
}

// RoundTrip implements http.RoundTripper. It does not modify req.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	body, err := t.readBody(req)
	if err != nil {
		return nil, err
	}
	if t.Credential == nil || t.Key == nil {
		return nil, errors.New("vouch transport: no credential source or no proof-of-possession key")
	}
	cred := t.Credential()
	if len(cred) == 0 {
		return nil, ErrNoCredential
	}
	now := time.Now
	if t.Now != nil {
		now = t.Now
	}
	claims, err := attest.NewPoPClaims(req.Method, attest.TargetURI(req.URL), body, cred, now())
	if err != nil {
		return nil, fmt.Errorf("vouch transport: %w", err)
	}
	pop, err := attest.SignPoP(t.Key, claims)
	if err != nil {
		return nil, fmt.Errorf("vouch transport: %w", err)
	}
	out := req.Clone(req.Context())
	if body != nil {
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		out.ContentLength = int64(len(body))
	}
	out.Header.Set("Authorization", attest.AuthScheme+" "+base64.RawURLEncoding.EncodeToString(cred))
	out.Header.Set(attest.PoPHeader, base64.RawURLEncoding.EncodeToString(pop))
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	return base.RoundTrip(out)
}

// readBody reads and closes req's body (a RoundTripper must close it, even on
// error). It returns nil for a request without a body.
func (t *Transport) readBody(req *http.Request) ([]byte, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, nil
	}
	defer req.Body.Close()
	limit := t.MaxBody
	if limit <= 0 {
		limit = DefaultMaxPoPBody
	}
	b, err := io.ReadAll(io.LimitReader(req.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("vouch transport: reading the request body: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("vouch transport: the request body is larger than %d bytes, the most a proof of possession digests", limit)
	}
	return b, nil
}
