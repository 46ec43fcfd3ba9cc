package enroll

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/internal/ekca"
)

const realDir = "../../testdata/ekcerts/real"

func readPEMCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A time inside the validity of the real STMicroelectronics EK certificates
// (2018-07 .. 2028-07).
var stmTime = time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)

// TestRealEKCertificates verifies real EK certificates of STMicroelectronics
// TPMs (from Keylime's test data) against the real manufacturer CAs, with
// the quirks they need, and shows that Go's x509 alone refuses them.
func TestRealEKCertificates(t *testing.T) {
	cases := []struct {
		name         string
		file         string
		anchor       string // trust anchor
		intermediate string // sent as the TPM's chain ("" none)
		wantQuirks   []string
		goRefuses    string // why crypto/x509 refuses it as is
	}{
		{
			name: "ST33 RSA, NV padding", file: "stm-rsa-ek-nv.bin", anchor: "STM_RSA_RT.pem", intermediate: "STM_RSA_05I.pem",
			wantQuirks: []string{QuirkTrailingBytes, QuirkCriticalTPMSAN}, goRefuses: "trailing data",
		},
		{
			name: "ST33 ECC", file: "stm-ecc-ek.der", anchor: "STM_ECC_01RT.pem", intermediate: "STM_ECC_01I.pem",
			wantQuirks: []string{QuirkCriticalTPMSAN}, goRefuses: "unhandled critical extension",
		},
		{
			name: "ST33 ECC, intermediate as anchor", file: "stm-ecc-ek.der", anchor: "STM_ECC_01I.pem",
			wantQuirks: []string{QuirkCriticalTPMSAN},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			raw := readFile(t, filepath.Join(realDir, c.file))
			ek, err := ParseEKCert(raw)
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range c.wantQuirks {
				if !slices.Contains(ek.Quirks, q) {
					t.Errorf("quirks %v lack %s", ek.Quirks, q)
				}
			}
			if ek.TPM.Manufacturer != "id:53544D20" || ek.TPM.Model != "ST33HTPHAHB4" || ek.TPM.Version != "id:00490004" {
				t.Errorf("TPM info = %+v", ek.TPM)
			}
			if len(ek.IssuerURLs) != 1 || !strings.HasPrefix(ek.IssuerURLs[0], "http://secure.globalsign.com/") {
				t.Errorf("issuer URLs = %v", ek.IssuerURLs)
			}
			anchors := NewAnchors(readPEMCert(t, filepath.Join(realDir, c.anchor)))
			var inter []*x509.Certificate
			if c.intermediate != "" {
				inter = append(inter, readPEMCert(t, filepath.Join(realDir, c.intermediate)))
			}
			res, err := anchors.VerifyEK(context.Background(), ek, inter, stmTime, nil)
			if err != nil {
				t.Fatalf("VerifyEK: %v", err)
			}
			if !strings.Contains(res.Issuer.Subject.CommonName, "STM TPM") {
				t.Errorf("issuer = %s", res.Issuer.Subject)
			}
			// Later than the certificate's notAfter: expired.
			if _, err := anchors.VerifyEK(context.Background(), ek, inter, time.Date(2029, 1, 1, 0, 0, 0, 0, time.UTC), nil); attest.ReasonOf(err) != attest.ReasonEKCertExpired {
				t.Errorf("in 2029: %v", err)
			}
			// Another manufacturer's root: untrusted.
			other := NewAnchors(readPEMCert(t, filepath.Join(realDir, "NUVO_2110.pem")))
			if _, err := other.VerifyEK(context.Background(), ek, nil, stmTime, nil); attest.ReasonOf(err) != attest.ReasonEKCertUntrusted {
				t.Errorf("with the Nuvoton root: %v", err)
			}
			if c.goRefuses == "" {
				return
			}
			// Why the lenient path exists: crypto/x509 alone refuses it.
			gc, err := x509.ParseCertificate(raw)
			if err == nil {
				pool := x509.NewCertPool()
				pool.AddCert(readPEMCert(t, filepath.Join(realDir, c.anchor)))
				ip := x509.NewCertPool()
				for _, i := range inter {
					ip.AddCert(i)
				}
				_, err = gc.Verify(x509.VerifyOptions{Roots: pool, Intermediates: ip, CurrentTime: stmTime})
			}
			if err == nil || !strings.Contains(err.Error(), c.goRefuses) {
				t.Errorf("crypto/x509 = %v, want %q (if Go now accepts it, the quirk handling may be simplified)", err, c.goRefuses)
			}
		})
	}
}

// TestLoadRealAnchors: the real manufacturer CAs in testdata load as EK
// roots (among them Nuvoton's, whose name is not DER-sorted).
func TestLoadRealAnchors(t *testing.T) {
	a, err := LoadAnchors(realDir)
	if err != nil {
		t.Fatal(err)
	}
	if a.Len() != 5 {
		t.Errorf("%d anchors from %v", a.Len(), a.Files)
	}
	if _, err := LoadAnchors(t.TempDir()); err == nil {
		t.Error("an empty roots directory loaded")
	}
}

func testCA(t testing.TB, name string) *ekca.CA {
	t.Helper()
	ca, err := ekca.Load("../../testdata/ekca", name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestEKCertQuirks: synthetic certificates from the test CA with each quirk
// real EK certificates have verify, and record the quirk.
func TestEKCertQuirks(t *testing.T) {
	root, inter := testCA(t, "root"), testCA(t, "intermediate")
	anchors := NewAnchors(root.Cert)
	eccKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		key   any
		opts  ekca.Options
		quirk string
		goErr string
	}{
		{"negative serial", &eccKey.PublicKey, ekca.Options{NegativeSerial: true}, QuirkNegativeSerial, "negative serial"},
		{"no AKI", &eccKey.PublicKey, ekca.Options{NoAKI: true}, QuirkNoAKI, ""},
		{"no EKU", &rsaKey.PublicKey, ekca.Options{NoEKU: true}, QuirkNoEKU, ""},
		{"NV header", &rsaKey.PublicKey, ekca.Options{NVHeader: true}, QuirkNVHeader, ""},
		{"NV padding", &eccKey.PublicKey, ekca.Options{TrailingFF: 300}, QuirkTrailingBytes, "trailing data"},
		{"critical TPM SAN", &eccKey.PublicKey, ekca.Options{}, QuirkCriticalTPMSAN, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			der, err := inter.IssueEK(c.key, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			ek, err := ParseEKCert(der)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(ek.Quirks, c.quirk) {
				t.Errorf("quirks %v lack %s", ek.Quirks, c.quirk)
			}
			if _, err := anchors.VerifyEK(context.Background(), ek, []*x509.Certificate{inter.Cert}, time.Now(), nil); err != nil {
				t.Fatalf("VerifyEK: %v", err)
			}
			if !equalKeys(ek.PublicKey, c.key) {
				t.Error("parsed key differs")
			}
			if c.goErr != "" {
				if _, err := x509.ParseCertificate(der); err == nil || !strings.Contains(err.Error(), c.goErr) {
					t.Errorf("crypto/x509 = %v, want %q", err, c.goErr)
				}
			}
		})
	}
}

// TestEKIssuerFromAIA: an EK certificate whose intermediate is neither an
// anchor nor in NV chains once the intermediate is fetched from its AIA URL
// (only when fetching is enabled).
func TestEKIssuerFromAIA(t *testing.T) {
	root, inter := testCA(t, "root"), testCA(t, "intermediate")
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(inter.Cert.Raw) }))
	defer hs.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := inter.IssueEK(&key.PublicKey, ekca.Options{IssuerURL: hs.URL + "/inter.crt"})
	if err != nil {
		t.Fatal(err)
	}
	anchors := NewAnchors(root.Cert)
	ek, err := ParseEKCert(der)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anchors.VerifyEK(context.Background(), ek, nil, time.Now(), nil); attest.ReasonOf(err) != attest.ReasonEKCertUntrusted {
		t.Fatalf("without fetching: %v", err)
	}
	if _, err := anchors.VerifyEK(context.Background(), ek, nil, time.Now(), HTTPFetcher(hs.Client())); err != nil {
		t.Fatalf("with fetching: %v", err)
	}
	if !slices.Contains(ek.Quirks, QuirkFetchedIssuer) {
		t.Errorf("quirks = %v", ek.Quirks)
	}
}

// TestParseEKCertRefusals: malformed input is refused, never panics.
func TestParseEKCertRefusals(t *testing.T) {
	inter := testCA(t, "intermediate")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := inter.IssueEK(&key.PublicKey, ekca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"empty":            nil,
		"truncated":        der[:len(der)-20],
		"garbage":          []byte("certainly not a certificate"),
		"header too short": append([]byte{0x10, 0x01, 0x00, 0x10, 0x00}, der[:10]...),
		"too large":        make([]byte, MaxEKCertSize+1),
		"a CA certificate": inter.Cert.Raw,
	}
	for name, b := range cases {
		if _, err := ParseEKCert(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// FuzzParseEKCert: arbitrary bytes as an EK certificate never panic, and
// what parses has a key.
func FuzzParseEKCert(f *testing.F) {
	for _, n := range []string{"stm-rsa-ek-nv.bin", "stm-ecc-ek.der"} {
		if b, err := os.ReadFile(filepath.Join(realDir, n)); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte{0x10, 0x01, 0x00, 0x00, 0x02, 0x30, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		ek, err := ParseEKCert(b)
		if err == nil && ek.PublicKey == nil {
			t.Fatal("parsed without a key")
		}
	})
}

// TestRSAKeyQuirks: an RSA EK key under the id-RSAES-OAEP algorithm, with
// its modulus encoded without the leading zero (so negative in DER), reads
// as the right key.
func TestRSAKeyQuirks(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if key.N.BitLen() != 2048 {
		t.Skip("modulus shorter than 2048 bits")
	}
	neg := new(big.Int).Sub(key.N, new(big.Int).Lsh(big.NewInt(1), 2048))
	pk, err := asn1.Marshal(struct {
		N *big.Int
		E int
	}{neg, key.E})
	if err != nil {
		t.Fatal(err)
	}
	k := spki{Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidRSAOAEP}, PublicKey: asn1.BitString{Bytes: pk, BitLength: 8 * len(pk)}}
	var quirks []string
	got, err := parseEKPublicKey(k, &quirks)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(got) {
		t.Error("the key read differs")
	}
	if !slices.Contains(quirks, QuirkNegativeModulus) || !slices.Contains(quirks, QuirkRSAOAEPKey) {
		t.Errorf("quirks = %v", quirks)
	}
	// crypto/x509 refuses the same SubjectPublicKeyInfo.
	der, err := asn1.Marshal(struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}{pkix.AlgorithmIdentifier{Algorithm: oidRSA, Parameters: asn1.NullRawValue}, k.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x509.ParsePKIXPublicKey(der); err == nil {
		t.Error("crypto/x509 accepts a negative modulus now")
	}
}
