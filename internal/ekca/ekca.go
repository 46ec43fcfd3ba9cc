// Package ekca issues EK certificates from the project's TEST ONLY EK
// certificate authority (testdata/ekca), shaped like real manufacturers'
// ones, so that tests can provision them into the simulator's and swtpm's
// NV and exercise the verifier's EK chain validation. Never use it outside
// tests and development.
package ekca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// OIDs of the TCG EK Credential Profile.
var (
	OIDTPMManufacturer = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	OIDTPMModel        = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	OIDTPMVersion      = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	OIDEKCertificate   = asn1.ObjectIdentifier{2, 23, 133, 8, 1} // tcg-kp-EKCertificate
	oidSAN             = asn1.ObjectIdentifier{2, 5, 29, 17}
)

// CA is a test certificate authority: a certificate and its key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Load reads NAME.pem and NAME.key from dir (testdata/ekca).
func Load(dir, name string) (*CA, error) {
	cb, err := os.ReadFile(filepath.Join(dir, name+".pem"))
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(filepath.Join(dir, name+".key"))
	if err != nil {
		return nil, err
	}
	c, _ := pem.Decode(cb)
	k, _ := pem.Decode(kb)
	if c == nil || k == nil {
		return nil, fmt.Errorf("%s: not PEM", name)
	}
	cert, err := x509.ParseCertificate(c.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(k.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("CA key is not a signer")
	}
	return &CA{Cert: cert, Key: s}, nil
}

// Options shape an EK certificate after real-world ones.
type Options struct {
	NotBefore, NotAfter time.Time // default: 2024-01-01 .. 9999-12-31
	// Manufacturer, Model, Version go into the SAN directoryName (TPM
	// manufacturer "id:XXXXXXXX", model, firmware "id:XXXXXXXX").
	Manufacturer, Model, Version string
	NoAKI                        bool // omit the authority key identifier
	NoEKU                        bool // omit the TCG EK extended key usage
	NegativeSerial               bool // encode a negative serial number (Go's parser refuses it)
	// TrailingFF pads the DER with 0xFF bytes, as an NV index larger than
	// the certificate reads back.
	TrailingFF int
	// NVHeader prefixes the TCG NV header (0x10 0x01 0x00 || length).
	NVHeader bool
	// IssuerURL sets the AIA caIssuers URL.
	IssuerURL string
}

// IssueEK returns the DER (as stored in NV, per opts) of an EK certificate
// for ekPub: empty subject, critical SAN with the TPM's directory-name
// attributes, key usage keyEncipherment (RSA) or keyAgreement (ECC),
// basic constraints CA:FALSE, the TCG EK extended key usage.
func (ca *CA) IssueEK(ekPub crypto.PublicKey, o Options) ([]byte, error) {
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
	}
	if o.Manufacturer == "" {
		o.Manufacturer, o.Model, o.Version = "id:56544553", "VOUCHTEST", "id:00010002" // "VTES"
	}
	san, err := TPMSAN(o.Manufacturer, o.Model, o.Version)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 119))
	if err != nil {
		return nil, err
	}
	serial.SetBit(serial, 119, 1) // 15 bytes, top bit clear: flippable in place
	ku := x509.KeyUsageKeyEncipherment
	if _, ok := ekPub.(*ecdsa.PublicKey); ok {
		ku = x509.KeyUsageKeyAgreement
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             o.NotBefore,
		NotAfter:              o.NotAfter,
		KeyUsage:              ku,
		BasicConstraintsValid: true,
		ExtraExtensions:       []pkix.Extension{{Id: oidSAN, Critical: true, Value: san}},
	}
	if !o.NoEKU {
		tmpl.UnknownExtKeyUsage = []asn1.ObjectIdentifier{OIDEKCertificate}
	}
	if o.IssuerURL != "" {
		tmpl.IssuingCertificateURL = []string{o.IssuerURL}
	}
	parent := *ca.Cert
	if o.NoAKI {
		parent.SubjectKeyId = nil
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, &parent, ekPub, ca.Key)
	if err != nil {
		return nil, err
	}
	if o.NoAKI {
		if c, err := x509.ParseCertificate(der); err == nil && len(c.AuthorityKeyId) != 0 {
			return nil, errors.New("AKI still present")
		}
	}
	if o.NegativeSerial {
		if der, err = ca.negateSerial(der); err != nil {
			return nil, err
		}
	}
	for range o.TrailingFF {
		der = append(der, 0xff)
	}
	if o.NVHeader {
		der = append([]byte{0x10, 0x01, 0x00, byte(len(der) >> 8), byte(len(der))}, der...)
	}
	return der, nil
}

// TPMSAN encodes a subjectAltName holding one directoryName with the TCG
// TPM manufacturer, model and version attributes.
func TPMSAN(manufacturer, model, version string) ([]byte, error) {
	rdn := []attr{{OIDTPMManufacturer, manufacturer}, {OIDTPMModel, model}, {OIDTPMVersion, version}}
	// One attribute per RDN SET, as manufacturers do.
	name, err := asn1.Marshal(seqOfSets(rdn))
	if err != nil {
		return nil, err
	}
	dirName, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name})
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: dirName})
}

// attr is an AttributeTypeAndValue with a UTF8String value.
type attr struct {
	Type  asn1.ObjectIdentifier
	Value string `asn1:"utf8"`
}

// seqOfSets builds a Name: SEQUENCE OF SET OF AttributeTypeAndValue.
func seqOfSets(attrs []attr) []asn1.RawValue {
	var out []asn1.RawValue
	for _, a := range attrs {
		b, err := asn1.Marshal(a)
		if err != nil {
			panic(err)
		}
		out = append(out, asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: b})
	}
	return out
}

// negateSerial flips the sign bit of the serial number in place and signs
// the certificate again: a negative serial, as some TPM manufacturers
// issued, which Go's x509 parser refuses since Go 1.23.
func (ca *CA) negateSerial(der []byte) ([]byte, error) {
	var c struct {
		TBS    asn1.RawValue
		SigAlg pkix.AlgorithmIdentifier
		Sig    asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &c); err != nil {
		return nil, err
	}
	tbs := append([]byte(nil), c.TBS.FullBytes...)
	// TBS: 30 len [A0 03 02 01 02] 02 slen serial...
	i := 2
	if tbs[1]&0x80 != 0 {
		i += int(tbs[1] & 0x7f)
	}
	i += 5 // explicit version
	if tbs[i] != 0x02 {
		return nil, errors.New("serial not found")
	}
	tbs[i+2] |= 0x80
	h := crypto.SHA256.New()
	h.Write(tbs)
	sig, err := ca.Key.Sign(rand.Reader, h.Sum(nil), crypto.SHA256)
	if err != nil {
		return nil, err
	}
	c.TBS = asn1.RawValue{FullBytes: tbs}
	c.Sig = asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}
	return asn1.Marshal(c)
}
