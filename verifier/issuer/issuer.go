// Package issuer holds the verifier's credential-signing keys and mints
// credentials: COSE_Sign1 CWTs, ES256, short-lived, bound to the agent key.
//
// Keys live in the data directory as PKCS#8 PEM files readable only by the
// owner (0600). The first start creates one. Every key in the directory is
// published in the key set (so relying parties keep verifying credentials
// signed before a rotation); the newest signs.
package issuer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/veraison/go-cose"

	"github.com/vouch-dev/vouch/attest"
)

// KeyDirName is the data-directory subdirectory holding signing keys.
const KeyDirName = "keys"

// Keys are the issuing keys.
type Keys struct {
	signer *ecdsa.PrivateKey
	kid    []byte
	set    *attest.KeySet
}

// LoadOrCreate loads the signing keys from dataDir/keys, creating the
// directory (0700) and a first key (0600) if there is none. It refuses key
// files that other users can read.
func LoadOrCreate(dataDir string) (*Keys, error) {
	dir := filepath.Join(dataDir, KeyDirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating key directory: %w", err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "issuer-*.pem"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		f, err := create(dir, time.Now())
		if err != nil {
			return nil, err
		}
		files = []string{f}
	}
	// Names carry a UTC timestamp, so the lexically last file is the newest.
	sort.Strings(files)
	var keys []*cose.Key
	var newest *ecdsa.PrivateKey
	var newestKid []byte
	for _, f := range files {
		priv, err := load(f)
		if err != nil {
			return nil, err
		}
		ck, err := attest.PublicCOSEKey(&priv.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		ck.Algorithm = cose.AlgorithmES256
		keys = append(keys, ck)
		newest, newestKid = priv, ck.ID
	}
	set, err := attest.NewKeySet(keys...)
	if err != nil {
		return nil, err
	}
	return &Keys{signer: newest, kid: newestKid, set: set}, nil
}

func create(dir string, now time.Time) (string, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("generating signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", err
	}
	name := filepath.Join(dir, "issuer-"+now.UTC().Format("20060102T150405Z")+".pem")
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("creating signing key: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return "", fmt.Errorf("writing signing key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", err
	}
	return name, f.Close()
}

func load(path string) (*ecdsa.PrivateKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("signing key %s has mode %v; it must be readable by its owner only (chmod 600)", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("signing key %s is not a PEM PRIVATE KEY", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("signing key %s is not an ECDSA P-256 key", path)
	}
	return ec, nil
}

// KeySet returns the public keys to publish at /v1/keys.
func (k *Keys) KeySet() *attest.KeySet { return k.set }

// KID returns the kid of the current signing key.
func (k *Keys) KID() []byte { return k.kid }

// Sign signs a claims set with the current key.
func (k *Keys) Sign(c *attest.Claims) ([]byte, error) {
	return attest.SignCredential(k.signer, k.kid, c)
}

// NewID returns a fresh 16-byte credential id (cti).
func NewID() ([]byte, error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("credential id: %w", err)
	}
	return id, nil
}

// Rotate adds a new signing key to dataDir/keys; the next LoadOrCreate signs
// with it and still publishes the old ones.
func Rotate(dataDir string, now time.Time) (string, error) {
	dir := filepath.Join(dataDir, KeyDirName)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("no key directory at %s", dir)
	}
	name, err := create(dir, now)
	if err != nil {
		return "", err
	}
	return strings.TrimPrefix(name, dataDir+string(filepath.Separator)), nil
}
