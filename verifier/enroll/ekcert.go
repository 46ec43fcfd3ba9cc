package enroll

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	_ "crypto/sha1" // SHA-1 EK certificate signatures
	"crypto/sha256"
	_ "crypto/sha512" // SHA-384/512 signatures
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// MaxEKCertSize bounds an EK certificate (as read from NV, with padding).
const MaxEKCertSize = 8 << 10

// Quirks of real EK certificates that ParseEKCert accepts; each is recorded
// in EKCert.Quirks so that an enrollment says what was tolerated.
const (
	QuirkNVHeader        = "nv-header"          // TCG NV header 10 01 00 <len> before the DER
	QuirkTrailingBytes   = "trailing-bytes"     // NV padding after the DER (often 0xFF)
	QuirkCriticalTPMSAN  = "critical-tpm-san"   // critical SAN holding only the TPM directoryName (Go: unhandled critical extension)
	QuirkNegativeSerial  = "negative-serial"    // negative serial number (Go's parser refuses it)
	QuirkNegativeModulus = "negative-modulus"   // RSA modulus encoded without its leading zero (Go refuses it)
	QuirkRSAOAEPKey      = "rsaes-oaep-spki"    // RSA key with the id-RSAES-OAEP algorithm (Go: unknown key)
	QuirkNoAKI           = "no-aki"             // no authority key identifier: issuer found by name
	QuirkNoEKU           = "no-eku"             // no TCG EK extended key usage
	QuirkSHA1Signature   = "sha1-signature"     // signed with SHA-1 (older manufacturer CAs)
	QuirkFetchedIssuer   = "aia-fetched-issuer" // issuer fetched from the AIA caIssuers URL
)

var (
	oidSAN              = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidEKU              = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidPolicies         = asn1.ObjectIdentifier{2, 5, 29, 32}
	oidSubjectDirAttrs  = asn1.ObjectIdentifier{2, 5, 29, 9}
	oidAKI              = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidAIA              = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 1}
	oidCAIssuers        = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 2}
	oidTPMManufacturer  = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel         = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion       = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	oidTCGEKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
	oidEKUAny           = asn1.ObjectIdentifier{2, 5, 29, 37, 0}
	oidRSA              = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidRSAOAEP          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}
	oidECPublicKey      = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
)

// sigAlgs maps signature algorithm OIDs to their hash and key type.
var sigAlgs = []struct {
	oid  asn1.ObjectIdentifier
	hash crypto.Hash
	ecc  bool
}{
	{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 5}, crypto.SHA1, false},
	{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}, crypto.SHA256, false},
	{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 12}, crypto.SHA384, false},
	{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 13}, crypto.SHA512, false},
	{asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 1}, crypto.SHA1, true},
	{asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}, crypto.SHA256, true},
	{asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}, crypto.SHA384, true},
	{asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}, crypto.SHA512, true},
}

// TPMInfo is what an EK certificate's SAN says about the TPM.
type TPMInfo struct {
	Manufacturer string `json:"manufacturer,omitempty"` // e.g. "id:53544D20" (STM)
	Model        string `json:"model,omitempty"`
	Version      string `json:"version,omitempty"`
}

// EKCert is an EK certificate parsed leniently: real EK certificates are
// often not what Go's x509 parser (made for TLS) accepts, so the fields the
// verifier needs are read with encoding/asn1 and every extension is
// interpreted here. The signature is checked against the issuer in
// [Anchors.Verify], never here.
type EKCert struct {
	Raw       []byte // the certificate's DER, without NV header or padding
	TBS       []byte // the signed part
	SigAlg    asn1.ObjectIdentifier
	Signature []byte
	Serial    *big.Int
	RawIssuer []byte
	Issuer    pkix.Name
	NotBefore time.Time
	NotAfter  time.Time
	PublicKey crypto.PublicKey // *rsa.PublicKey or *ecdsa.PublicKey
	// AuthorityKeyID is nil when the certificate has none.
	AuthorityKeyID []byte
	// IssuerURLs are the AIA caIssuers URLs.
	IssuerURLs []string
	TPM        TPMInfo
	Quirks     []string
}

// certificate and tbsCertificate mirror RFC 5280 loosely enough to read a
// negative serial or an unknown key algorithm.
type certificate struct {
	TBS       asn1.RawValue
	SigAlg    pkix.AlgorithmIdentifier
	Signature asn1.BitString
}

type tbsCertificate struct {
	Version    int `asn1:"optional,explicit,default:0,tag:0"`
	Serial     *big.Int
	SigAlg     pkix.AlgorithmIdentifier
	Issuer     asn1.RawValue
	Validity   validity
	Subject    asn1.RawValue
	SPKI       spki
	IssuerUID  asn1.BitString   `asn1:"optional,tag:1"`
	SubjectUID asn1.BitString   `asn1:"optional,tag:2"`
	Extensions []pkix.Extension `asn1:"optional,explicit,tag:3"`
}

type validity struct {
	NotBefore, NotAfter time.Time
}

type spki struct {
	Raw       asn1.RawContent
	Algorithm pkix.AlgorithmIdentifier
	PublicKey asn1.BitString
}

// ParseEKCert parses an EK certificate as read from a TPM's NV index: DER,
// possibly behind the TCG NV header and followed by padding.
func ParseEKCert(b []byte) (*EKCert, error) {
	if len(b) > MaxEKCertSize {
		return nil, fmt.Errorf("the EK certificate is %d bytes; at most %d are accepted", len(b), MaxEKCertSize)
	}
	var quirks []string
	if len(b) > 5 && bytes.Equal(b[:3], []byte{0x10, 0x01, 0x00}) {
		n := int(binary.BigEndian.Uint16(b[3:5]))
		if len(b) < 5+n {
			return nil, fmt.Errorf("the EK certificate's NV header announces %d bytes, but %d follow", n, len(b)-5)
		}
		b = b[5 : 5+n]
		quirks = append(quirks, QuirkNVHeader)
	}
	var c certificate
	rest, err := asn1.Unmarshal(b, &c)
	if err != nil {
		return nil, fmt.Errorf("the EK certificate is not DER: %w", err)
	}
	if len(rest) > 0 {
		quirks = append(quirks, QuirkTrailingBytes)
	}
	raw := b[:len(b)-len(rest)]
	var t tbsCertificate
	if rest, err := asn1.Unmarshal(c.TBS.FullBytes, &t); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("the EK certificate's TBSCertificate cannot be parsed: %v", err)
	}
	if !t.SigAlg.Algorithm.Equal(c.SigAlg.Algorithm) {
		return nil, errors.New("the EK certificate's inner and outer signature algorithms differ")
	}
	if t.Serial == nil {
		return nil, errors.New("the EK certificate has no serial number")
	}
	if t.Serial.Sign() < 0 {
		quirks = append(quirks, QuirkNegativeSerial)
	}
	e := &EKCert{
		Raw: raw, TBS: c.TBS.FullBytes, SigAlg: c.SigAlg.Algorithm, Signature: c.Signature.RightAlign(),
		Serial: t.Serial, RawIssuer: t.Issuer.FullBytes, NotBefore: t.Validity.NotBefore, NotAfter: t.Validity.NotAfter,
	}
	var issuer pkix.RDNSequence
	if _, err := asn1.Unmarshal(t.Issuer.FullBytes, &issuer); err != nil {
		return nil, fmt.Errorf("the EK certificate's issuer name: %w", err)
	}
	e.Issuer.FillFromRDNSequence(&issuer)
	if e.PublicKey, err = parseEKPublicKey(t.SPKI, &quirks); err != nil {
		return nil, err
	}
	if err := e.parseExtensions(t.Extensions, &quirks); err != nil {
		return nil, err
	}
	e.Quirks = quirks
	return e, nil
}

func parseEKPublicKey(k spki, quirks *[]string) (crypto.PublicKey, error) {
	switch alg := k.Algorithm.Algorithm; {
	case alg.Equal(oidRSA), alg.Equal(oidRSAOAEP):
		if alg.Equal(oidRSAOAEP) {
			*quirks = append(*quirks, QuirkRSAOAEPKey)
		}
		var pk struct {
			N *big.Int
			E int
		}
		if rest, err := asn1.Unmarshal(k.PublicKey.RightAlign(), &pk); err != nil || len(rest) > 0 {
			return nil, fmt.Errorf("the EK certificate's RSA public key cannot be parsed: %v", err)
		}
		if pk.N.Sign() < 0 {
			// A modulus whose top bit is set, encoded without the leading
			// zero byte: read its bytes as unsigned.
			n := new(big.Int).Lsh(big.NewInt(1), uint(8*((pk.N.BitLen()+7)/8)))
			pk.N.Add(pk.N, n)
			*quirks = append(*quirks, QuirkNegativeModulus)
		}
		if pk.N.BitLen() < 2048 || pk.E < 3 || pk.E&1 == 0 {
			return nil, fmt.Errorf("the EK certificate's RSA key (%d bits, e=%d) is not an acceptable EK", pk.N.BitLen(), pk.E)
		}
		return &rsa.PublicKey{N: pk.N, E: pk.E}, nil
	case alg.Equal(oidECPublicKey):
		pub, err := x509.ParsePKIXPublicKey(k.Raw)
		if err != nil {
			return nil, fmt.Errorf("the EK certificate's ECC public key: %w", err)
		}
		return pub, nil
	default:
		return nil, fmt.Errorf("the EK certificate's key algorithm %v is neither RSA nor ECC", alg)
	}
}

func (e *EKCert) parseExtensions(exts []pkix.Extension, quirks *[]string) error {
	hasEKU := false
	for _, x := range exts {
		switch {
		case x.Id.Equal(oidSAN):
			info, onlyDirName, err := parseTPMSAN(x.Value)
			if err != nil {
				return err
			}
			e.TPM = info
			if x.Critical && onlyDirName {
				*quirks = append(*quirks, QuirkCriticalTPMSAN)
			}
		case x.Id.Equal(oidEKU):
			var ekus []asn1.ObjectIdentifier
			if _, err := asn1.Unmarshal(x.Value, &ekus); err != nil {
				return fmt.Errorf("the EK certificate's extended key usage: %w", err)
			}
			for _, u := range ekus {
				hasEKU = hasEKU || u.Equal(oidTCGEKCertificate) || u.Equal(oidEKUAny)
			}
			if !hasEKU {
				return fmt.Errorf("the EK certificate's extended key usages %v do not include the TCG EK certificate usage %v", ekus, oidTCGEKCertificate)
			}
		case x.Id.Equal(oidBasicConstraints):
			var bc struct {
				IsCA bool `asn1:"optional"`
				Len  int  `asn1:"optional,default:-1"`
			}
			if _, err := asn1.Unmarshal(x.Value, &bc); err != nil {
				return fmt.Errorf("the EK certificate's basic constraints: %w", err)
			}
			if bc.IsCA {
				return errors.New("the EK certificate is a CA certificate")
			}
		case x.Id.Equal(oidAKI):
			var aki struct {
				ID []byte `asn1:"optional,tag:0"`
			}
			if _, err := asn1.Unmarshal(x.Value, &aki); err != nil {
				return fmt.Errorf("the EK certificate's authority key identifier: %w", err)
			}
			e.AuthorityKeyID = aki.ID
		case x.Id.Equal(oidAIA):
			var ads []struct {
				Method   asn1.ObjectIdentifier
				Location asn1.RawValue
			}
			if _, err := asn1.Unmarshal(x.Value, &ads); err != nil {
				return fmt.Errorf("the EK certificate's authority information access: %w", err)
			}
			for _, ad := range ads {
				if ad.Method.Equal(oidCAIssuers) && ad.Location.Class == asn1.ClassContextSpecific && ad.Location.Tag == 6 {
					e.IssuerURLs = append(e.IssuerURLs, string(ad.Location.Bytes))
				}
			}
		case x.Id.Equal(oidKeyUsage), x.Id.Equal(oidPolicies), x.Id.Equal(oidSubjectDirAttrs):
			// Understood well enough: key usage and policies constrain
			// relying parties of other kinds; the subject directory
			// attributes describe the TPM's security assertions.
		case x.Critical:
			return fmt.Errorf("the EK certificate has a critical extension %v that the verifier does not understand", x.Id)
		}
	}
	if len(e.AuthorityKeyID) == 0 {
		*quirks = append(*quirks, QuirkNoAKI)
	}
	if !hasEKU {
		*quirks = append(*quirks, QuirkNoEKU)
	}
	return nil
}

// parseTPMSAN reads the TPM manufacturer, model and version from a SAN's
// directoryName, and reports whether the SAN holds nothing else.
func parseTPMSAN(v []byte) (TPMInfo, bool, error) {
	var names []asn1.RawValue
	if rest, err := asn1.Unmarshal(v, &names); err != nil || len(rest) > 0 {
		return TPMInfo{}, false, fmt.Errorf("the EK certificate's subject alternative name cannot be parsed: %v", err)
	}
	var info TPMInfo
	only := true
	for _, n := range names {
		if n.Class != asn1.ClassContextSpecific || n.Tag != 4 {
			only = false
			continue
		}
		var rdns pkix.RDNSequence
		if rest, err := asn1.Unmarshal(n.Bytes, &rdns); err != nil || len(rest) > 0 {
			return TPMInfo{}, false, fmt.Errorf("the EK certificate's SAN directoryName cannot be parsed: %v", err)
		}
		for _, rdn := range rdns {
			for _, atv := range rdn {
				s, _ := atv.Value.(string)
				switch {
				case atv.Type.Equal(oidTPMManufacturer):
					info.Manufacturer = s
				case atv.Type.Equal(oidTPMModel):
					info.Model = s
				case atv.Type.Equal(oidTPMVersion):
					info.Version = s
				default:
					only = false
				}
			}
		}
	}
	return info, only, nil
}

// checkSignedBy verifies the certificate's signature with the issuer's key.
// SHA-1 signatures are accepted (recorded as a quirk): older manufacturer
// CAs signed EK certificates with SHA-1, which Go's x509 no longer does.
func (e *EKCert) checkSignedBy(issuer *x509.Certificate) error {
	for _, a := range sigAlgs {
		if !a.oid.Equal(e.SigAlg) {
			continue
		}
		h := a.hash.New()
		h.Write(e.TBS)
		digest := h.Sum(nil)
		switch pub := issuer.PublicKey.(type) {
		case *rsa.PublicKey:
			if a.ecc {
				return errors.New("an RSA issuer key cannot verify an ECDSA signature")
			}
			return rsa.VerifyPKCS1v15(pub, a.hash, digest, e.Signature)
		case *ecdsa.PublicKey:
			if !a.ecc {
				return errors.New("an ECDSA issuer key cannot verify an RSA signature")
			}
			if !ecdsa.VerifyASN1(pub, digest, e.Signature) {
				return errors.New("ECDSA signature does not verify")
			}
			return nil
		}
		return fmt.Errorf("issuer key of type %T", issuer.PublicKey)
	}
	return fmt.Errorf("signature algorithm %v is not supported", e.SigAlg)
}

// usesSHA1 reports whether the certificate is signed with SHA-1.
func (e *EKCert) usesSHA1() bool {
	for _, a := range sigAlgs {
		if a.oid.Equal(e.SigAlg) {
			return a.hash == crypto.SHA1
		}
	}
	return false
}

// EKDigest is the SHA-256 of an EK public key's SubjectPublicKeyInfo (DER):
// the identity of a TPM in the enrollment registry and the allowlist.
func EKDigest(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	d := sha256.Sum256(der)
	return d[:], nil
}
