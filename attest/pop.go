package attest

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/veraison/go-cose"
)

// HTTP header names and the Authorization scheme a Vouch request uses.
const (
	// AuthScheme is the Authorization scheme: "Authorization: Vouch <base64url credential>".
	AuthScheme = "Vouch"
	// PoPHeader carries the base64url (unpadded) proof of possession.
	PoPHeader = "Vouch-PoP"
	// PoPContentType is the COSE content type of a proof's payload.
	PoPContentType = "application/vnd.vouch.pop+cbor"
)

// PoPIDSize is the size of a proof's random id.
const PoPIDSize = 16

// PoPClaims is the payload of a proof of possession: a COSE_Sign1 made with
// the credential's cnf key, fresh for every request (the DPoP idea of
// RFC 9449, carried in COSE).
//
//	pop = {
//	  1 => tstr,          ; HTTP method, upper case
//	  2 => tstr,          ; target URI: scheme://host[:port]/path[?query]
//	  3 => int,           ; iat, seconds since the epoch
//	  4 => bstr .size 16, ; jti: random, never reused
//	  5 => bstr .size 32, ; SHA-256 of the request body (of the empty string when there is none)
//	  6 => bstr .size 32, ; SHA-256 of the encoded credential presented with it
//	}
type PoPClaims struct {
	Method           string `cbor:"1,keyasint"`
	Target           string `cbor:"2,keyasint"`
	IssuedAt         int64  `cbor:"3,keyasint"`
	ID               []byte `cbor:"4,keyasint"`
	BodyDigest       []byte `cbor:"5,keyasint"`
	CredentialDigest []byte `cbor:"6,keyasint"`
}

// NewPoPClaims fills a proof for one request: a fresh random id, the current
// time and the digests of body and credential.
func NewPoPClaims(method, target string, body, credential []byte, now time.Time) (*PoPClaims, error) {
	id := make([]byte, PoPIDSize)
	if _, err := io.ReadFull(rand.Reader, id); err != nil {
		return nil, fmt.Errorf("proof of possession id: %w", err)
	}
	bd := sha256.Sum256(body)
	cd := sha256.Sum256(credential)
	return &PoPClaims{
		Method:           method,
		Target:           target,
		IssuedAt:         now.Unix(),
		ID:               id,
		BodyDigest:       bd[:],
		CredentialDigest: cd[:],
	}, nil
}

// SignPoP signs claims with the proof-of-possession key. key is typically the
// agent's TPM-resident key (go-tpm-tools client.Key.GetSigner); it must be an
// ECDSA P-256 key.
func SignPoP(key crypto.Signer, claims *PoPClaims) ([]byte, error) {
	payload, err := Marshal(claims)
	if err != nil {
		return nil, fmt.Errorf("encoding proof of possession: %w", err)
	}
	signer, err := cose.NewSigner(cose.AlgorithmES256, key)
	if err != nil {
		return nil, fmt.Errorf("proof of possession signer: %w", err)
	}
	headers := cose.Headers{Protected: cose.ProtectedHeader{
		cose.HeaderLabelAlgorithm:   cose.AlgorithmES256,
		cose.HeaderLabelContentType: PoPContentType,
	}}
	msg, err := cose.Sign1(rand.Reader, signer, headers, payload, nil)
	if err != nil {
		return nil, fmt.Errorf("signing proof of possession: %w", err)
	}
	return msg, nil
}

// TargetURI is the form of a request's URI that a proof of possession signs:
// scheme://host[:port] followed by the escaped path and the raw query, without
// fragment or user info. Both sides must compute it the same way: the client
// from the URL it sends to, the relying party from its configured external
// origin and the request's RequestURI.
func TargetURI(u *url.URL) string {
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host) + u.RequestURI()
}
