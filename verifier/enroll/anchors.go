package enroll

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// maxAnchorFile bounds one PEM file of a roots directory.
const maxAnchorFile = 1 << 20

// Anchors is a set of trusted CA certificates: the EK manufacturer roots
// (--ek-roots) or the AK certificate roots of a cloud (--ak-roots). Every
// certificate in the directory is a trust anchor, root or intermediate, as
// manufacturers publish both (the model of Keylime's tpm_cert_store).
type Anchors struct {
	pool  *x509.CertPool
	certs []*x509.Certificate
	Files []string // the files loaded, for logs
}

// LoadAnchors reads every *.pem, *.crt and *.cer file of dir (PEM
// certificates, several per file allowed; DER for .cer/.crt files).
func LoadAnchors(dir string) (*Anchors, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("roots directory: %w", err)
	}
	a := &Anchors{pool: x509.NewCertPool()}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if !e.IsDir() && (ext == ".pem" || ext == ".crt" || ext == ".cer") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := readLimited(filepath.Join(dir, n), maxAnchorFile)
		if err != nil {
			return nil, err
		}
		certs, err := parseCerts(b)
		if err != nil {
			return nil, fmt.Errorf("roots directory: %s: %w", n, err)
		}
		for _, c := range certs {
			a.Add(c)
		}
		a.Files = append(a.Files, n)
	}
	if len(a.certs) == 0 {
		return nil, fmt.Errorf("roots directory %s holds no certificates (*.pem, *.crt, *.cer)", dir)
	}
	return a, nil
}

// NewAnchors returns a set of the given certificates.
func NewAnchors(certs ...*x509.Certificate) *Anchors {
	a := &Anchors{pool: x509.NewCertPool()}
	for _, c := range certs {
		a.Add(c)
	}
	return a
}

// Add adds a trust anchor.
func (a *Anchors) Add(c *x509.Certificate) {
	a.pool.AddCert(c)
	a.certs = append(a.certs, c)
}

// Len returns the number of anchors.
func (a *Anchors) Len() int { return len(a.certs) }

// Pool returns the anchors as a pool (for go-tpm-tools TrustedRootCerts).
func (a *Anchors) Pool() *x509.CertPool { return a.pool }

// Certs returns the anchors.
func (a *Anchors) Certs() []*x509.Certificate { return a.certs }

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}

// parseCerts parses PEM certificates, or one DER certificate.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	if !bytes.Contains(b, []byte("-----BEGIN")) {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, err
		}
		return []*x509.Certificate{c}, nil
	}
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Fetcher fetches an issuer certificate from an AIA caIssuers URL.
type Fetcher func(ctx context.Context, url string) ([]byte, error)

// HTTPFetcher fetches over http(s) with a 5 s timeout and a 64 KiB limit.
// The URL comes from a certificate the TPM presented: only enable it
// (--ek-fetch-issuers) where the verifier may reach the manufacturers'
// sites, and never for internal addresses.
func HTTPFetcher(hc *http.Client) Fetcher {
	if hc == nil {
		hc = &http.Client{Timeout: 5 * time.Second}
	}
	return func(ctx context.Context, url string) ([]byte, error) {
		if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
			return nil, fmt.Errorf("issuer URL %q is not http(s)", url)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("issuer URL %s: HTTP %d", url, resp.StatusCode)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10+1))
		if err != nil {
			return nil, err
		}
		if len(b) > 64<<10 {
			return nil, fmt.Errorf("issuer URL %s: larger than 64 KiB", url)
		}
		return b, nil
	}
}

// ChainResult is a verified EK certificate chain.
type ChainResult struct {
	Issuer *x509.Certificate   // the EK certificate's issuer
	Chain  []*x509.Certificate // issuer up to a trust anchor
}

// VerifyEK checks that ek chains to an anchor at time now: its signature by
// an issuer found among the intermediates (from the TPM's NV) and the
// anchors (by name, and by key identifier where the certificate has one),
// the issuer's own chain to an anchor with Go's x509, and the certificate's
// validity period. fetch, if not nil, is tried for the AIA issuer URL when
// no issuer is known.
func (a *Anchors) VerifyEK(ctx context.Context, ek *EKCert, intermediates []*x509.Certificate, now time.Time, fetch Fetcher) (*ChainResult, error) {
	if now.Before(ek.NotBefore) {
		return nil, attest.Errorf(attest.ReasonEKCertExpired, "the EK certificate is not valid before %s", ek.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(ek.NotAfter) {
		return nil, attest.Errorf(attest.ReasonEKCertExpired, "the EK certificate expired at %s", ek.NotAfter.UTC().Format(time.RFC3339))
	}
	inter := x509.NewCertPool()
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	candidates := append(append([]*x509.Certificate(nil), intermediates...), a.certs...)
	res, err := a.verifyWith(ek, candidates, inter, now)
	if err == nil || fetch == nil || len(ek.IssuerURLs) == 0 {
		return res, err
	}
	var fetched []*x509.Certificate
	for _, u := range ek.IssuerURLs {
		b, ferr := fetch(ctx, u)
		if ferr != nil {
			continue
		}
		if certs, perr := parseCerts(b); perr == nil {
			fetched = append(fetched, certs...)
		}
	}
	for _, c := range fetched {
		inter.AddCert(c)
	}
	res, err2 := a.verifyWith(ek, append(fetched, candidates...), inter, now)
	if err2 != nil {
		return nil, err
	}
	ek.Quirks = append(ek.Quirks, QuirkFetchedIssuer)
	return res, nil
}

func (a *Anchors) verifyWith(ek *EKCert, candidates []*x509.Certificate, inter *x509.CertPool, now time.Time) (*ChainResult, error) {
	var lastErr error
	for _, issuer := range candidates {
		if !bytes.Equal(issuer.RawSubject, ek.RawIssuer) {
			continue
		}
		if len(ek.AuthorityKeyID) > 0 && len(issuer.SubjectKeyId) > 0 && !bytes.Equal(ek.AuthorityKeyID, issuer.SubjectKeyId) {
			continue
		}
		if err := ek.checkSignedBy(issuer); err != nil {
			lastErr = fmt.Errorf("signature by %q: %w", issuer.Subject.CommonName, err)
			continue
		}
		if !issuer.IsCA || (issuer.KeyUsage != 0 && issuer.KeyUsage&x509.KeyUsageCertSign == 0) {
			lastErr = fmt.Errorf("issuer %q is not a CA", issuer.Subject.CommonName)
			continue
		}
		chains, err := issuer.Verify(x509.VerifyOptions{
			Roots: a.pool, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		})
		if err != nil {
			lastErr = fmt.Errorf("issuer %q: %w", issuer.Subject.CommonName, err)
			continue
		}
		if ek.usesSHA1() {
			ek.Quirks = append(ek.Quirks, QuirkSHA1Signature)
		}
		return &ChainResult{Issuer: issuer, Chain: chains[0]}, nil
	}
	if lastErr == nil {
		return nil, attest.Errorf(attest.ReasonEKCertUntrusted, "the EK certificate's issuer %q is not among the configured EK roots (--ek-roots) nor the intermediates the TPM holds", ek.Issuer.String())
	}
	return nil, attest.Errorf(attest.ReasonEKCertUntrusted, "the EK certificate does not chain to a configured EK root: %v", lastErr)
}

// LoadAllowlist reads an EK allowlist: one hex SHA-256 digest of an EK
// SubjectPublicKeyInfo per line (as vouch-agent enroll --print-ek prints);
// blank lines and # comments are ignored.
func LoadAllowlist(path string) (map[[32]byte]bool, error) {
	b, err := readLimited(path, maxAnchorFile)
	if err != nil {
		return nil, err
	}
	out := map[[32]byte]bool{}
	for i, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		d, err := hex.DecodeString(line)
		if err != nil || len(d) != 32 {
			return nil, fmt.Errorf("%s:%d: want 64 hex digits (SHA-256 of an EK public key)", path, i+1)
		}
		out[[32]byte(d)] = true
	}
	return out, nil
}
