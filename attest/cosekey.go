package attest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

// KeySetMediaType is the Content-Type of an encoded COSE_KeySet.
const KeySetMediaType = "application/cose-key-set"

// PublicCOSEKey returns the COSE_Key (RFC 9052 §7) of an ECDSA P-256 public
// key for ES256, with kid set to its RFC 9679 thumbprint.
func PublicCOSEKey(pub crypto.PublicKey) (*cose.Key, error) {
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("only ECDSA P-256 keys are supported, got %T", pub)
	}
	// Not cose.NewKeyFromPublic: it trims leading zero octets of x and y,
	// which RFC 9053 §7.1.1 and the RFC 9679 thumbprint forbid.
	point, err := ec.Bytes()
	if err != nil {
		return nil, fmt.Errorf("building COSE_Key: %w", err)
	}
	k, err := cose.NewKeyEC2(cose.AlgorithmES256, point[1:33], point[33:65], nil)
	if err != nil {
		return nil, fmt.Errorf("building COSE_Key: %w", err)
	}
	tp, err := Thumbprint(k)
	if err != nil {
		return nil, err
	}
	k.ID = tp
	return k, nil
}

// Thumbprint returns the RFC 9679 COSE Key Thumbprint (SHA-256) of an EC2
// key: the digest of the deterministic encoding of its required parameters
// {1: kty, -1: crv, -2: x, -3: y}.
func Thumbprint(k *cose.Key) ([]byte, error) {
	if k == nil || k.Type != cose.KeyTypeEC2 {
		return nil, errors.New("thumbprint: only EC2 keys are supported")
	}
	crv, x, y, _ := k.EC2()
	if crv != cose.CurveP256 || len(x) == 0 || len(x) > 32 || len(y) == 0 || len(y) > 32 {
		return nil, errors.New("thumbprint: key is not a complete P-256 public key")
	}
	// The thumbprint is over full-length coordinates; restore leading zero
	// octets that some encoders (crypto/elliptic, go-cose) drop.
	b, err := Marshal(map[int]any{1: int(cose.KeyTypeEC2), -1: int(crv), -2: leftPad(x, 32), -3: leftPad(y, 32)})
	if err != nil {
		return nil, fmt.Errorf("thumbprint: %w", err)
	}
	d := sha256.Sum256(b)
	return d[:], nil
}

// SubjectOf returns the credential subject for an agent key: the RFC 9679
// thumbprint URI "urn:ietf:params:oauth:ckt:sha-256:<base64url>".
func SubjectOf(k *cose.Key) (string, error) {
	tp, err := Thumbprint(k)
	if err != nil {
		return "", err
	}
	return "urn:ietf:params:oauth:ckt:sha-256:" + base64.RawURLEncoding.EncodeToString(tp), nil
}

// ECDSAPublic extracts a P-256 ECDSA public key from a COSE_Key, checking
// that the key type, curve and (if present) algorithm all say ES256.
func ECDSAPublic(k *cose.Key) (*ecdsa.PublicKey, error) {
	if k == nil {
		return nil, errors.New("no key")
	}
	if k.Type != cose.KeyTypeEC2 {
		return nil, fmt.Errorf("key type %v is not EC2", k.Type)
	}
	if k.Algorithm != cose.AlgorithmReserved && k.Algorithm != cose.AlgorithmES256 {
		return nil, fmt.Errorf("key algorithm %v is not ES256", k.Algorithm)
	}
	crv, x, y, _ := k.EC2()
	if crv != cose.CurveP256 {
		return nil, fmt.Errorf("key curve %v is not P-256", crv)
	}
	if len(x) == 0 || len(x) > 32 || len(y) == 0 || len(y) > 32 {
		return nil, fmt.Errorf("key coordinates are %d and %d bytes; a P-256 public key has two of 32", len(x), len(y))
	}
	if _, err := k.PublicKey(); err != nil { // key_ops and parameter consistency
		return nil, fmt.Errorf("decoding public key: %w", err)
	}
	point := make([]byte, 0, 65)
	point = append(point, 4)
	point = append(point, leftPad(x, 32)...)
	point = append(point, leftPad(y, 32)...)
	// ParseUncompressedPublicKey refuses points that are not on the curve.
	ec, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		return nil, fmt.Errorf("key is not a valid P-256 point: %w", err)
	}
	return ec, nil
}

// leftPad returns b left-padded with zero octets to n bytes (b if longer).
func leftPad(b []byte, n int) []byte {
	if len(b) >= n {
		return b
	}
	return append(make([]byte, n-len(b), n), b...)
}

// hasPrivate reports whether a COSE_Key carries private key material.
func hasPrivate(k *cose.Key) bool {
	_, d := k.Params[cose.KeyLabelEC2D]
	return d
}

// KeySet is a verifier's published signing keys, by kid.
type KeySet struct {
	keys map[string]*ecdsa.PublicKey
	raw  []*cose.Key
}

// NewKeySet builds a key set from COSE keys. Each key must have a kid and be an
// ES256 P-256 public key (no private part). Errors are *Error with
// ReasonKeySetInvalid.
func NewKeySet(keys ...*cose.Key) (*KeySet, error) {
	ks := &KeySet{keys: make(map[string]*ecdsa.PublicKey, len(keys))}
	for i, k := range keys {
		if k == nil {
			return nil, Errorf(ReasonKeySetInvalid, "key %d is null", i)
		}
		if hasPrivate(k) {
			return nil, Errorf(ReasonKeySetInvalid, "key %d (kid %x) carries private key material; publish public keys only", i, k.ID)
		}
		if len(k.ID) == 0 {
			return nil, Errorf(ReasonKeySetInvalid, "key %d has no kid", i)
		}
		pub, err := ECDSAPublic(k)
		if err != nil {
			return nil, Errorf(ReasonKeySetInvalid, "key %d (kid %x): %w", i, k.ID, err)
		}
		if _, dup := ks.keys[string(k.ID)]; dup {
			return nil, Errorf(ReasonKeySetInvalid, "key %d: kid %x appears twice", i, k.ID)
		}
		ks.keys[string(k.ID)] = pub
		ks.raw = append(ks.raw, k)
	}
	return ks, nil
}

// Lookup returns the key with the given kid.
func (ks *KeySet) Lookup(kid []byte) (*ecdsa.PublicKey, bool) {
	if ks == nil {
		return nil, false
	}
	k, ok := ks.keys[string(kid)]
	return k, ok
}

// Len returns the number of keys in the set.
func (ks *KeySet) Len() int {
	if ks == nil {
		return 0
	}
	return len(ks.raw)
}

// MarshalCBOR encodes the set as a COSE_KeySet (an array of COSE_Key).
func (ks *KeySet) MarshalCBOR() ([]byte, error) { return Marshal(ks.raw) }

// DecodeKeySet decodes a COSE_KeySet. Errors are *Error with
// ReasonKeySetInvalid.
func DecodeKeySet(data []byte) (*KeySet, error) {
	if len(data) > MaxKeySetSize {
		return nil, Errorf(ReasonKeySetInvalid, "key set is %d bytes; at most %d are accepted", len(data), MaxKeySetSize)
	}
	var raws []cbor.RawMessage
	if err := lenientDecMode.Unmarshal(data, &raws); err != nil {
		return nil, Errorf(ReasonKeySetInvalid, "key set is not a COSE_KeySet: %w", err)
	}
	if len(raws) == 0 {
		return nil, Errorf(ReasonKeySetInvalid, "key set is empty")
	}
	keys := make([]*cose.Key, len(raws))
	for i, raw := range raws {
		k, err := decodeCOSEKey(raw)
		if err != nil {
			return nil, Errorf(ReasonKeySetInvalid, "key %d is not a COSE_Key: %w", i, err)
		}
		keys[i] = k
	}
	return NewKeySet(keys...)
}

// decodeCOSEKey decodes one COSE_Key. go-cose v1.3.0's Key.UnmarshalCBOR
// panics when an EC2 or OKP key's crv (-1) is not an integer, so the
// parameter types it asserts are checked first.
func decodeCOSEKey(data []byte) (*cose.Key, error) {
	var m map[any]any
	if err := lenientDecMode.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	if v, ok := m[int64(-1)]; ok {
		switch v.(type) {
		case int64, uint64:
		default:
			return nil, fmt.Errorf("crv (-1) is a %T, not an integer", v)
		}
	}
	k := new(cose.Key)
	if err := k.UnmarshalCBOR(data); err != nil {
		return nil, err
	}
	return k, nil
}

// UnmarshalCBOR decodes a cnf claim {1: COSE_Key}, tolerating other
// confirmation methods, through the guarded COSE_Key decoder.
func (c *Confirmation) UnmarshalCBOR(data []byte) error {
	var raw struct {
		Key cbor.RawMessage `cbor:"1,keyasint"`
	}
	if err := lenientDecMode.Unmarshal(data, &raw); err != nil {
		return err
	}
	*c = Confirmation{}
	if raw.Key == nil {
		return nil
	}
	k, err := decodeCOSEKey(raw.Key)
	if err != nil {
		return fmt.Errorf("cnf COSE_Key: %w", err)
	}
	c.Key = k
	return nil
}
