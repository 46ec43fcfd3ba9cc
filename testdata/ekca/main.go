// Command ekca generates the project's test EK certificate authority, once:
// a root CA, an intermediate CA it signs (the issuer of test EK
// certificates), and an unrelated "untrusted" root for negative tests, each
// an ECDSA P-256 key (PEM, PKCS#8) and certificate (PEM) in this directory.
//
//	go run ./testdata/ekca -out testdata/ekca
//
// TEST ONLY: the private keys are committed on purpose so that tests can
// issue EK certificates for the simulator's and swtpm's EKs. Never configure
// these certificates as EK roots of a verifier that enrolls real machines.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"log"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

func main() {
	out := flag.String("out", "testdata/ekca", "directory to write to")
	flag.Parse()
	notBefore := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	notAfter := time.Date(2099, 12, 31, 23, 59, 59, 0, time.UTC)
	root, rootKey := ca(*out, "root", "Vouch TEST ONLY EK Root CA", nil, nil, notBefore, notAfter, 1)
	ca(*out, "intermediate", "Vouch TEST ONLY EK Intermediate CA", root, rootKey, notBefore, notAfter, 0)
	ca(*out, "untrusted-root", "Vouch TEST ONLY Untrusted EK Root CA", nil, nil, notBefore, notAfter, 1)
}

func ca(dir, name, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, nb, na time.Time, pathLen int) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		log.Fatal(err)
	}
	ski := sha1.Sum(spki)
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		log.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Country: []string{"XX"}, Organization: []string{"Vouch test data"}, CommonName: cn},
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            pathLen,
		MaxPathLenZero:        pathLen == 0,
		SubjectKeyId:          ski[:],
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		log.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		log.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		log.Fatal(err)
	}
	write(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	write(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}))
	return cert, key
}

func write(path string, b []byte) {
	if err := os.WriteFile(path, b, 0o644); err != nil {
		log.Fatal(err)
	}
}
