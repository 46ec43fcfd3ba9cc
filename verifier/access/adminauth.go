package access

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/veraison/go-cose"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/store"
)

// Signed admin requests.
//
// A user signs each admin API request with the private key whose public half
// is registered for them (Ed25519 or ECDSA P-256). The signature is a
// COSE_Sign1 carried in the Vouch-Signature header (unpadded base64url):
//
//	protected = { 1 => alg (-8 EdDSA or -7 ES256), 3 => "application/vnd.vouch.admin-request+cbor", 4 => bstr (user id, UTF-8) }
//	payload   = {
//	  1 => tstr,          ; HTTP method
//	  2 => tstr,          ; target URI: the verifier origin + path?query
//	  3 => int,           ; iat, seconds
//	  4 => bstr .size 16, ; random id, never reused
//	  5 => bstr .size 32, ; SHA-256 of the body
//	}
//
// The verifier accepts a signature made at most 60 s ago (5 s ahead), once.
// With TLS, a client certificate (verified against --tls-client-ca) whose
// public key is a registered user's key authenticates that user instead.

// Header and media type of signed admin requests.
const (
	SignatureHeader        = "Vouch-Signature"
	SignedRequestMediaType = "application/vnd.vouch.admin-request+cbor"
)

// Windows of signed requests.
const (
	signedMaxAge = 60 * time.Second
	signedFuture = 5 * time.Second
)

// SignedRequest is the payload of a Vouch-Signature.
type SignedRequest struct {
	Method     string `cbor:"1,keyasint"`
	Target     string `cbor:"2,keyasint"`
	IssuedAt   int64  `cbor:"3,keyasint"`
	ID         []byte `cbor:"4,keyasint"`
	BodyDigest []byte `cbor:"5,keyasint"`
}

// SignRequest adds a Vouch-Signature for user to req, whose body is body
// (nil for none). key is Ed25519 or ECDSA P-256.
func SignRequest(req *http.Request, body []byte, user string, key crypto.Signer, now time.Time) error {
	alg, err := algorithmOf(key.Public())
	if err != nil {
		return err
	}
	id := make([]byte, 16)
	if _, err := io.ReadFull(rand.Reader, id); err != nil {
		return err
	}
	bd := sha256.Sum256(body)
	payload, err := attest.Marshal(&SignedRequest{Method: req.Method, Target: attest.TargetURI(req.URL), IssuedAt: now.Unix(), ID: id, BodyDigest: bd[:]})
	if err != nil {
		return err
	}
	signer, err := cose.NewSigner(alg, key)
	if err != nil {
		return err
	}
	msg, err := cose.Sign1(rand.Reader, signer, cose.Headers{Protected: cose.ProtectedHeader{
		cose.HeaderLabelAlgorithm:   alg,
		cose.HeaderLabelContentType: SignedRequestMediaType,
		cose.HeaderLabelKeyID:       []byte(user),
	}}, payload, nil)
	if err != nil {
		return fmt.Errorf("signing the request: %w", err)
	}
	req.Header.Set(SignatureHeader, base64.RawURLEncoding.EncodeToString(msg))
	return nil
}

func algorithmOf(pub crypto.PublicKey) (cose.Algorithm, error) {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return cose.AlgorithmEdDSA, nil
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return cose.AlgorithmES256, nil
		}
	}
	return 0, fmt.Errorf("user keys are Ed25519 or ECDSA P-256, not %T", pub)
}

// authenticate returns the user a request comes from: by TLS client
// certificate, else by Vouch-Signature over the request and body.
func (s *Service) authenticate(ctx context.Context, r *http.Request, body []byte) (*store.User, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		leaf := r.TLS.VerifiedChains[0][0]
		u, err := s.opts.Store.UserByKey(ctx, store.KeyDigest(leaf.RawSubjectPublicKeyInfo))
		if errors.Is(err, store.ErrNotFound) {
			return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the client certificate %q is trusted but its key is no registered user's key", leaf.Subject)
		}
		if err != nil {
			return nil, unavailable(err)
		}
		return activeUser(u)
	}
	h := r.Header.Get(SignatureHeader)
	if h == "" {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the admin API needs a %s header (a request signed with your user key: vouch signs it with --key) or a TLS client certificate", SignatureHeader)
	}
	raw, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil || len(raw) > 4096 {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the %s header is not unpadded base64url of a COSE_Sign1", SignatureHeader)
	}
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(raw); err != nil || msg.Payload == nil {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the %s header is not a COSE_Sign1 with a payload", SignatureHeader)
	}
	if _, crit := msg.Headers.Protected[cose.HeaderLabelCritical]; crit {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the signature has crit parameters; none are understood")
	}
	if ct, _ := msg.Headers.Protected[cose.HeaderLabelContentType].(string); ct != SignedRequestMediaType {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the signature's content type must be %s", SignedRequestMediaType)
	}
	kid, _ := msg.Headers.Protected[cose.HeaderLabelKeyID].([]byte)
	if len(kid) == 0 || len(kid) > 128 {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the signature names no user (protected kid)")
	}
	u, err := s.opts.Store.UserByID(ctx, string(kid))
	if errors.Is(err, store.ErrNotFound) {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "no user %q is registered", kid)
	}
	if err != nil {
		return nil, unavailable(err)
	}
	pub, err := x509.ParsePKIXPublicKey(u.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("user %s: stored key: %w", u.ID, err)
	}
	alg, err := algorithmOf(pub)
	if err != nil {
		return nil, fmt.Errorf("user %s: %w", u.ID, err)
	}
	if got, err := msg.Headers.Protected.Algorithm(); err != nil || got != alg {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the signature's algorithm does not fit user %s's key", u.ID)
	}
	verifier, err := cose.NewVerifier(alg, pub)
	if err != nil {
		return nil, fmt.Errorf("user %s: %w", u.ID, err)
	}
	if err := msg.Verify(nil, verifier); err != nil {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the request is not signed by user %s's registered key", u.ID)
	}
	var sr SignedRequest
	if err := attest.Unmarshal(msg.Payload, &sr); err != nil || len(sr.ID) != 16 || len(sr.BodyDigest) != sha256.Size {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the signed payload is not a signed-request map")
	}
	if sr.Method != r.Method || sr.Target != s.requestTarget(r) {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the signature is for %s %s; this request is %s %s (set --external-url on vouchd behind a proxy)", sr.Method, sr.Target, r.Method, s.requestTarget(r))
	}
	bd := sha256.Sum256(body)
	if !bytes.Equal(bd[:], sr.BodyDigest) {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the signature does not cover this body")
	}
	now := s.now()
	iat := time.Unix(sr.IssuedAt, 0)
	if now.Sub(iat) > signedMaxAge || iat.Sub(now) > signedFuture {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "the signature was made at %s; it is %s (accepted: %v old, %v ahead): check the clocks", iat.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), signedMaxAge, signedFuture)
	}
	if !s.signed.add(string(sr.ID), now, signedMaxAge+signedFuture+time.Second) {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "this signed request was already received (or the replay cache is full): sign every request afresh")
	}
	return activeUser(u)
}

func activeUser(u *store.User) (*store.User, error) {
	if u.DisabledAt != nil {
		return nil, attest.Errorf(attest.ReasonUserUnauthenticated, "user %s is disabled", u.ID)
	}
	return u, nil
}

// nonceCache remembers ids of signed requests until they could no longer
// be accepted. It refuses when full rather than forget.
type nonceCache struct {
	mu  sync.Mutex
	max int
	m   map[string]time.Time
}

func newNonceCache(max int) *nonceCache { return &nonceCache{max: max, m: map[string]time.Time{}} }

func (c *nonceCache) add(id string, now time.Time, ttl time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		for k, exp := range c.m {
			if now.After(exp) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= c.max {
			return false
		}
	}
	if exp, ok := c.m[id]; ok && !now.After(exp) {
		return false
	}
	c.m[id] = now.Add(ttl)
	return true
}

// GenerateUserKey makes a user key: "ed25519" (default) or "p256".
func GenerateUserKey(kind string) (crypto.Signer, error) {
	switch kind {
	case "", "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case "p256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	return nil, fmt.Errorf("key type %q: use ed25519 or p256", kind)
}

// WriteUserKey writes key as a PKCS#8 PEM file readable by its owner only,
// and its public key (SubjectPublicKeyInfo PEM) next to it as path + ".pub".
func WriteUserKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	return os.WriteFile(path+".pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}), 0o644)
}

// LoadUserKey reads a user's private key file (PKCS#8 PEM, Ed25519 or
// P-256). It refuses files other users can read.
func LoadUserKey(path string) (crypto.Signer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("user key %s has mode %v; it must be readable by its owner only (chmod 600)", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("user key %s is not a PEM PRIVATE KEY (make one with vouch users keygen)", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("user key %s: %w", path, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("user key %s cannot sign", path)
	}
	if _, err := algorithmOf(signer.Public()); err != nil {
		return nil, fmt.Errorf("user key %s: %w", path, err)
	}
	return signer, nil
}

// ParsePublicKey reads a user's public key: PEM "PUBLIC KEY" or base64 of
// the DER SubjectPublicKeyInfo. It returns the DER.
func ParsePublicKey(b []byte) ([]byte, error) {
	der := b
	if block, _ := pem.Decode(b); block != nil {
		if block.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("PEM block is %q; want PUBLIC KEY", block.Type)
		}
		der = block.Bytes
	} else if d, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(b))); err == nil {
		der = d
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	if _, err := algorithmOf(pub); err != nil {
		return nil, err
	}
	return der, nil
}
