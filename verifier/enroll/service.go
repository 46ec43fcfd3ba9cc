// Package enroll makes an attestation key trusted on the strength of the
// TPM manufacturer's certificate chain instead of an operator's word:
// POST /v1/enroll checks the TPM's EK certificate against the configured
// manufacturer roots and the AK's creation attestation, and answers with a
// credential-activation challenge (TPM2_MakeCredential, go-attestation);
// POST /v1/enroll/activate takes the secret that only the TPM holding both
// the EK and the AK can recover, and records the enrollment.
//
// Modes, strongest first:
//
//   - activation: the EK certificate chains to an EK root (--ek-roots);
//   - ek-allowlist: no certificate, but the EK public key's SHA-256 is on
//     the allowlist (--ek-allowlist); activation as above;
//   - ak-cert: the AK carries a certificate chaining to an AK root
//     (--ak-roots), as cloud vTPMs provide; enrolled without activation.
//
// Real EK certificates are often not what Go's x509 (made for TLS)
// accepts; ParseEKCert and Anchors.VerifyEK handle the known quirks and
// record which ones an enrollment needed.
package enroll

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"time"

	gattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/store"
)

// DefaultChallengeTTL is how long an activation challenge can be answered.
const DefaultChallengeTTL = 2 * time.Minute

// Options configure a Service. Without EKRoots, EKAllowlist and AKRoots
// every enrollment is refused (enroll-mode-disabled): AKs are then trusted
// only by operator enrollment.
type Options struct {
	Store *store.Store
	// EKRoots are the TPM manufacturers' CAs (--ek-roots DIR).
	EKRoots *Anchors
	// EKAllowlist holds SHA-256 digests of EK SubjectPublicKeyInfos of TPMs
	// without certificates (--ek-allowlist FILE).
	EKAllowlist map[[32]byte]bool
	// AKRoots are cloud providers' AK certificate CAs (--ak-roots DIR).
	AKRoots *Anchors
	// FetchIssuer, if set, fetches a missing EK issuer from the
	// certificate's AIA URL (--ek-fetch-issuers).
	FetchIssuer Fetcher
	// ChallengeTTL defaults to DefaultChallengeTTL.
	ChallengeTTL time.Duration
	// Audit receives a record per enrollment decision; nil = not recorded.
	Audit audit.Log
	Build string
	Log   *slog.Logger
	Now   func() time.Time
}

// Service implements the enrollment API.
type Service struct{ o Options }

// New returns a Service.
func New(o Options) (*Service, error) {
	if o.Store == nil {
		return nil, errors.New("enroll: Store is required")
	}
	if o.ChallengeTTL == 0 {
		o.ChallengeTTL = DefaultChallengeTTL
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Service{o: o}, nil
}

// Register adds the routes to mux, each wrapped by wrap (the verifier's
// error-to-problem instrumentation).
func (s *Service) Register(mux *http.ServeMux, wrap func(route string, h func(http.ResponseWriter, *http.Request) error) http.Handler) {
	mux.Handle("POST "+attest.EnrollPath, wrap("enroll", s.handleEnroll))
	mux.Handle("POST "+attest.ActivatePath, wrap("enroll-activate", s.handleActivate))
}

// akAttributes are required of an AK (as in the appraisal).
const akAttributes = tpm2.FlagSign | tpm2.FlagRestricted | tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin

// detail is what an enrollment rested on (Enrollment.Detail, JSON).
type detail struct {
	EKIssuer  string   `json:"ek_issuer,omitempty"`
	EKSerial  string   `json:"ek_serial,omitempty"`
	EKRoot    string   `json:"ek_root,omitempty"`
	TPM       *TPMInfo `json:"tpm,omitempty"`
	Quirks    []string `json:"quirks,omitempty"`
	AKIssuer  string   `json:"ak_issuer,omitempty"`
	AKSerial  string   `json:"ak_serial,omitempty"`
	RequestIP string   `json:"from,omitempty"`
}

func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return attest.Errorf(attest.ReasonUnsupportedMediaType, "send the enrollment request as application/json, not %q", r.Header.Get("Content-Type"))
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, attest.MaxEnrollRequestSize))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return attest.Errorf(attest.ReasonRequestTooLarge, "the enrollment request is larger than %d bytes", attest.MaxEnrollRequestSize)
		}
		return attest.Errorf(attest.ReasonRequestMalformed, "reading the request: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return attest.Errorf(attest.ReasonRequestMalformed, "the request is not the enrollment JSON: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusCreated)
	return json.NewEncoder(w).Encode(v)
}

func (s *Service) handleEnroll(w http.ResponseWriter, r *http.Request) error {
	var req attest.EnrollRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	resp, err := s.Begin(r.Context(), &req, r.RemoteAddr)
	if err != nil {
		s.record(r.Context(), "refused", err, nil, "")
		return err
	}
	return writeJSON(w, resp)
}

func (s *Service) handleActivate(w http.ResponseWriter, r *http.Request) error {
	var req attest.ActivateRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	res, err := s.Activate(r.Context(), &req)
	if err != nil {
		s.record(r.Context(), "refused", err, nil, "")
		return err
	}
	return writeJSON(w, res)
}

// akFromParams checks an AK's public area and creation attestation.
func akFromParams(p attest.AKParameters) (spki []byte, err error) {
	pub, err := tpm2.DecodePublic(p.Public)
	if err != nil {
		return nil, attest.Errorf(attest.ReasonAKMalformed, "the AK public area cannot be decoded: %w", err)
	}
	if pub.Attributes&akAttributes != akAttributes || pub.Attributes&tpm2.FlagDecrypt != 0 {
		return nil, attest.Errorf(attest.ReasonAKAttributes, "the AK has attributes %#x; an AK must be a restricted, fixedTPM, fixedParent, sensitiveDataOrigin signing key (%#x) and not a decryption key", uint32(pub.Attributes), uint32(akAttributes))
	}
	ap := gattest.ActivationParameters{AK: gattest.AttestationParameters{
		Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature,
	}}
	if err := ap.CheckAKParameters(); err != nil {
		return nil, attest.Errorf(attest.ReasonAKAttributes, "the AK's creation attestation does not show a TPM-created attestation key: %w", err)
	}
	key, err := pub.Key()
	if err != nil {
		return nil, attest.Errorf(attest.ReasonAKMalformed, "the AK public key: %w", err)
	}
	return x509.MarshalPKIXPublicKey(key)
}

// Begin validates an enrollment request and returns its challenge (or,
// with a trusted AK certificate, the enrollment).
func (s *Service) Begin(ctx context.Context, req *attest.EnrollRequest, from string) (*attest.EnrollResponse, error) {
	akSPKI, err := akFromParams(req.AK)
	if err != nil {
		return nil, err
	}
	if len(req.Name) > 256 {
		return nil, attest.Errorf(attest.ReasonRequestMalformed, "the name is longer than 256 bytes")
	}
	now := s.o.Now()
	d := detail{RequestIP: from}
	if len(req.AKCert) > 0 && s.o.AKRoots != nil {
		return s.enrollAKCert(ctx, req, akSPKI, d, now)
	}
	var ekPub, agentEK crypto.PublicKey
	var method string
	if len(req.EKPublic) > 0 {
		if agentEK, err = x509.ParsePKIXPublicKey(req.EKPublic); err != nil {
			return nil, attest.Errorf(attest.ReasonRequestMalformed, "ek_public is not a DER SubjectPublicKeyInfo: %w", err)
		}
	}
	switch {
	case len(req.EKCert) > 0:
		if s.o.EKRoots == nil {
			return nil, attest.Errorf(attest.ReasonEnrollModeDisabled, "this verifier has no EK roots (--ek-roots): enrollment by EK certificate is off; ask the operator to configure the TPM manufacturers' CAs, or to enroll the AK by hand")
		}
		ek, err := ParseEKCert(req.EKCert)
		if err != nil {
			return nil, attest.Errorf(attest.ReasonEKCertMalformed, "%w", err)
		}
		var inter []*x509.Certificate
		for i, c := range req.EKChain {
			if len(c) > MaxEKCertSize || i >= 8 {
				return nil, attest.Errorf(attest.ReasonRequestMalformed, "ek_chain: at most 8 certificates of %d bytes", MaxEKCertSize)
			}
			ic, err := x509.ParseCertificate(c)
			if err != nil {
				return nil, attest.Errorf(attest.ReasonEKCertMalformed, "EK chain certificate %d: %w", i, err)
			}
			inter = append(inter, ic)
		}
		chain, err := s.o.EKRoots.VerifyEK(ctx, ek, inter, now, s.o.FetchIssuer)
		if err != nil {
			return nil, err
		}
		if agentEK != nil && !equalKeys(agentEK, ek.PublicKey) {
			return nil, attest.Errorf(attest.ReasonEKKeyMismatch, "the EK certificate certifies another key than the TPM's EK the agent sent; the agent must use the EK of the certificate's type (RSA or ECC) and the default EK template")
		}
		ekPub, method = ek.PublicKey, attest.EnrollMethodActivation
		root := chain.Chain[len(chain.Chain)-1]
		d.EKIssuer, d.EKSerial, d.EKRoot, d.Quirks = ek.Issuer.String(), ek.Serial.Text(16), root.Subject.String(), ek.Quirks
		d.TPM = &ek.TPM
	case agentEK != nil:
		digest, err := EKDigest(agentEK)
		if err != nil {
			return nil, attest.Errorf(attest.ReasonRequestMalformed, "ek_public: %w", err)
		}
		if len(s.o.EKAllowlist) == 0 {
			return nil, attest.Errorf(attest.ReasonEKCertMissing, "the TPM sent no EK certificate and this verifier has no EK allowlist (--ek-allowlist); EK %x cannot be trusted", digest[:8])
		}
		if !s.o.EKAllowlist[[32]byte(digest)] {
			return nil, attest.Errorf(attest.ReasonEKCertMissing, "the TPM sent no EK certificate and its EK %x is not on the allowlist; add the digest (vouch-agent enroll --print-ek) to --ek-allowlist", digest)
		}
		ekPub, method = agentEK, attest.EnrollMethodEKAllowlist
	default:
		return nil, attest.Errorf(attest.ReasonEKCertMissing, "the request has neither an EK certificate nor an EK public key")
	}
	ekDigest, err := EKDigest(ekPub)
	if err != nil {
		return nil, attest.Errorf(attest.ReasonEKCertMalformed, "EK public key: %w", err)
	}
	ap := gattest.ActivationParameters{EK: ekPub, AK: gattest.AttestationParameters{
		Public: req.AK.Public, CreateData: req.AK.CreateData, CreateAttestation: req.AK.CreateAttestation, CreateSignature: req.AK.CreateSignature,
	}}
	secret, ec, err := ap.Generate()
	if err != nil {
		return nil, attest.Errorf(attest.ReasonAKAttributes, "making the activation challenge: %w", err)
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	sd := sha256.Sum256(secret)
	dj, _ := json.Marshal(d)
	c := store.EnrollChallenge{
		ID: id, SecretDigest: sd[:], AKPublic: akSPKI, EKDigest: ekDigest, Method: method, Name: req.Name,
		Detail: string(dj), IssuedAt: now, ExpiresAt: now.Add(s.o.ChallengeTTL),
	}
	if err := s.o.Store.PutEnrollChallenge(ctx, c); err != nil {
		return nil, unavailable(err)
	}
	return &attest.EnrollResponse{Challenge: &attest.ActivationChallenge{
		ID: id, Credential: ec.Credential, Secret: ec.Secret, Method: method, ExpiresAt: c.ExpiresAt.UTC(),
	}}, nil
}

// Activate checks the answer to a challenge and enrolls the AK.
func (s *Service) Activate(ctx context.Context, req *attest.ActivateRequest) (*attest.EnrollmentResult, error) {
	if len(req.ID) != 16 || len(req.Secret) == 0 || len(req.Secret) > 64 {
		return nil, attest.Errorf(attest.ReasonRequestMalformed, "an activation needs the 16-byte challenge id and the secret")
	}
	now := s.o.Now()
	c, err := s.o.Store.ConsumeEnrollChallenge(ctx, req.ID, now)
	if err != nil {
		var ae *attest.Error
		if errors.As(err, &ae) {
			return nil, err
		}
		return nil, unavailable(err)
	}
	sd := sha256.Sum256(req.Secret)
	if subtle.ConstantTimeCompare(sd[:], c.SecretDigest) != 1 {
		return nil, attest.Errorf(attest.ReasonActivationFailed, "the answer is not the activation secret: the AK does not live in the TPM of EK %x (or the challenge was answered by another TPM)", c.EKDigest[:8])
	}
	akDigest := sha256.Sum256(c.AKPublic)
	e := store.Enrollment{
		AKDigest: akDigest[:], AKPublic: c.AKPublic, Method: c.Method, Name: c.Name,
		EnrolledBy: fmt.Sprintf("ek:%x", c.EKDigest[:8]), EnrolledAt: now, EKDigest: c.EKDigest, Detail: c.Detail,
	}
	revoked, already, err := s.o.Store.EnrollByEK(ctx, e)
	if err != nil {
		var ae *attest.Error
		if errors.As(err, &ae) {
			return nil, err
		}
		if errors.Is(err, store.ErrExists) {
			return nil, attest.Errorf(attest.ReasonAKRevoked, "%v", err)
		}
		return nil, unavailable(err)
	}
	res := &attest.EnrollmentResult{
		AKDigest: hex.EncodeToString(akDigest[:]), EKDigest: hex.EncodeToString(c.EKDigest), Method: c.Method,
		EnrolledAt: now.UTC(), Already: already, Detail: c.Detail,
	}
	for _, r := range revoked {
		res.Superseded = append(res.Superseded, hex.EncodeToString(r))
	}
	s.o.Log.InfoContext(ctx, "AK enrolled", "ak", res.AKDigest[:16], "ek", res.EKDigest[:16], "method", res.Method, "already", already, "superseded", len(revoked))
	s.record(ctx, "enrolled", nil, res, c.Detail)
	return res, nil
}

// enrollAKCert enrolls an AK whose certificate chains to an AK root.
func (s *Service) enrollAKCert(ctx context.Context, req *attest.EnrollRequest, akSPKI []byte, d detail, now time.Time) (*attest.EnrollResponse, error) {
	cert, err := x509.ParseCertificate(req.AKCert)
	if err != nil {
		return nil, attest.Errorf(attest.ReasonAKCertUntrusted, "the AK certificate cannot be parsed: %w", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: s.o.AKRoots.Pool(), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, attest.Errorf(attest.ReasonAKCertUntrusted, "the AK certificate does not chain to a configured AK root (--ak-roots): %w", err)
	}
	certSPKI, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil || subtle.ConstantTimeCompare(certSPKI, akSPKI) != 1 {
		return nil, attest.Errorf(attest.ReasonAKCertUntrusted, "the AK certificate certifies another key than the AK")
	}
	d.AKIssuer, d.AKSerial = cert.Issuer.String(), cert.SerialNumber.Text(16)
	dj, _ := json.Marshal(d)
	akDigest := sha256.Sum256(akSPKI)
	e := store.Enrollment{
		AKDigest: akDigest[:], AKPublic: akSPKI, Method: attest.EnrollMethodAKCert, Name: req.Name,
		EnrolledBy: "ak-cert:" + cert.Issuer.CommonName, EnrolledAt: now, Detail: string(dj),
	}
	already := false
	if err := s.o.Store.Enroll(ctx, e); err != nil {
		if !errors.Is(err, store.ErrExists) {
			return nil, unavailable(err)
		}
		prev, perr := s.o.Store.Enrollment(ctx, akDigest[:])
		if perr != nil || prev.Method != attest.EnrollMethodAKCert {
			return nil, attest.Errorf(attest.ReasonAKRevoked, "%v", err)
		}
		already = true
	}
	res := &attest.EnrollmentResult{AKDigest: hex.EncodeToString(akDigest[:]), Method: attest.EnrollMethodAKCert, EnrolledAt: now.UTC(), Already: already, Detail: string(dj)}
	s.record(ctx, "enrolled", nil, res, string(dj))
	return &attest.EnrollResponse{Enrolled: res}, nil
}

// record appends an audit record of an enrollment decision.
func (s *Service) record(ctx context.Context, outcome string, err error, res *attest.EnrollmentResult, det string) {
	if s.o.Audit == nil {
		return
	}
	rec := &audit.Record{Kind: audit.KindEnrollment, TimeMillis: s.o.Now().UnixMilli(), Outcome: outcome, Build: s.o.Build}
	if err != nil {
		rec.Reasons = []attest.Reason{attest.ReasonOf(err)}
		rec.Detail = map[string]string{"error": err.Error()}
	}
	if res != nil {
		ak, _ := hex.DecodeString(res.AKDigest)
		rec.Agent = &audit.Agent{AKDigest: ak}
		rec.Detail = map[string]string{"method": res.Method, "ek_digest": res.EKDigest, "enrollment": det}
	}
	if _, aerr := s.o.Audit.Append(ctx, rec); aerr != nil {
		s.o.Log.ErrorContext(ctx, "audit append failed", "kind", rec.Kind, "err", aerr)
	}
}

func equalKeys(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

func unavailable(err error) error {
	return &attest.Error{Reason: attest.ReasonUnavailable, Detail: "the verifier's database is unavailable; retry shortly", Err: err}
}
