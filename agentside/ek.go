package agentside

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/vouch-dev/vouch/attest"
)

// NV indices of the TCG EK Credential Profile.
const (
	EKCertIndexRSA = 0x01c00002 // RSA 2048 EK certificate
	EKCertIndexECC = 0x01c0000a // ECC NIST P-256 EK certificate
	// EK certificate chain: intermediates, one per index, from the first.
	ekChainFirst = 0x01c00100
	ekChainLast  = 0x01c001ff
	// maxEKChain bounds how many chain indices are read.
	maxEKChain = 8
	// maxNVCert bounds a certificate read from NV.
	maxNVCert = 8 << 10
)

// KeyType names an EK's algorithm.
type KeyType string

// EK types.
const (
	EKRSA KeyType = "rsa"
	EKECC KeyType = "ecc"
)

// EK is the TPM's endorsement key (the default TCG EK template of its
// type) and what the TPM holds about it in NV.
type EK struct {
	Type   KeyType
	Public crypto.PublicKey
	// Cert is the EK certificate as stored in NV (DER, maybe with the
	// TCG NV header or padding); nil when the TPM has none.
	Cert []byte
	// Chain holds the intermediate certificates stored in NV.
	Chain [][]byte
}

func ekTemplate(kt KeyType) tpm2.Public {
	if kt == EKRSA {
		return client.DefaultEKTemplateRSA()
	}
	return client.DefaultEKTemplateECC()
}

func ekCertIndex(kt KeyType) uint32 {
	if kt == EKRSA {
		return EKCertIndexRSA
	}
	return EKCertIndexECC
}

// EK returns the EK the TPM has a certificate for, preferring ECC; without
// any certificate, the ECC EK (for an EK allowlist). It reads the EK
// certificate chain indices too.
func (t *TPM) EK() (*EK, error) {
	var ek *EK
	err := t.do(func(rw io.ReadWriter) error {
		for _, kt := range []KeyType{EKECC, EKRSA} {
			cert, err := readNV(rw, ekCertIndex(kt))
			if err != nil || len(cert) == 0 {
				continue
			}
			ek = &EK{Type: kt, Cert: cert}
			break
		}
		if ek == nil {
			ek = &EK{Type: EKECC}
		}
		pub, err := ekPublic(rw, ek.Type)
		if err != nil {
			return err
		}
		ek.Public = pub
		if ek.Cert != nil {
			hs, err := client.Handles(rw, tpm2.HandleTypeNVIndex)
			if err != nil {
				return fmt.Errorf("listing NV indices: %w", err)
			}
			for _, h := range hs {
				if h >= ekChainFirst && h <= ekChainLast && len(ek.Chain) < maxEKChain {
					if c, err := readNV(rw, uint32(h)); err == nil && len(c) > 0 {
						ek.Chain = append(ek.Chain, c)
					}
				}
			}
		}
		return nil
	})
	return ek, err
}

// ekPublic creates the EK of type kt from its default template (a primary
// key: the same every time for the same endorsement seed) and flushes it.
func ekPublic(rw io.ReadWriter, kt KeyType) (crypto.PublicKey, error) {
	h, pub, err := tpm2.CreatePrimary(rw, tpm2.HandleEndorsement, tpm2.PCRSelection{}, "", "", ekTemplate(kt))
	if err != nil {
		return nil, fmt.Errorf("creating the %s EK: %w", kt, err)
	}
	_ = tpm2.FlushContext(rw, h)
	return pub, nil
}

// readNV reads an NV index with owner authorization, or the index's own
// (empty) authorization when the owner may not read it.
func readNV(rw io.ReadWriter, index uint32) ([]byte, error) {
	pub, err := tpm2.NVReadPublic(rw, tpmutil.Handle(index))
	if err != nil {
		return nil, err
	}
	if pub.DataSize > maxNVCert {
		return nil, fmt.Errorf("NV index %#x holds %d bytes; at most %d are read", index, pub.DataSize, maxNVCert)
	}
	b, err := tpm2.NVReadEx(rw, tpmutil.Handle(index), tpm2.HandleOwner, "", 0)
	if err != nil {
		b, err = tpm2.NVReadEx(rw, tpmutil.Handle(index), tpmutil.Handle(index), "", 0)
	}
	return b, err
}

// WriteEKCert stores an EK certificate in the NV index of its type, as a
// TPM manufacturer does. For development TPMs (the simulator, swtpm), which
// have none: tests provision certificates from the project's test EK CA.
// An existing index is replaced.
func (t *TPM) WriteEKCert(kt KeyType, cert []byte) error {
	if !t.Firmwareless() {
		return fmt.Errorf("writing an EK certificate: %w for TPM %q; real TPMs come with theirs", ErrNotSupported, t.spec)
	}
	return t.do(func(rw io.ReadWriter) error { return writeNV(rw, ekCertIndex(kt), cert) })
}

// WriteEKChainCert stores an intermediate CA certificate in the n-th EK
// certificate chain index (development TPMs only).
func (t *TPM) WriteEKChainCert(n int, cert []byte) error {
	if !t.Firmwareless() || n < 0 || n >= maxEKChain {
		return fmt.Errorf("writing an EK chain certificate: %w", ErrNotSupported)
	}
	return t.do(func(rw io.ReadWriter) error { return writeNV(rw, uint32(ekChainFirst+n), cert) })
}

func writeNV(rw io.ReadWriter, index uint32, data []byte) error {
	if len(data) == 0 || len(data) > maxNVCert {
		return fmt.Errorf("NV data of %d bytes", len(data))
	}
	h := tpmutil.Handle(index)
	if _, err := tpm2.NVReadPublic(rw, h); err == nil {
		if err := tpm2.NVUndefineSpace(rw, "", tpm2.HandlePlatform, h); err != nil {
			if err := tpm2.NVUndefineSpace(rw, "", tpm2.HandleOwner, h); err != nil {
				return fmt.Errorf("removing NV index %#x: %w", index, err)
			}
		}
	}
	attrs := tpm2.AttrPPWrite | tpm2.AttrPPRead | tpm2.AttrOwnerRead | tpm2.AttrAuthRead | tpm2.AttrNoDA | tpm2.AttrPlatformCreate
	if err := tpm2.NVDefineSpace(rw, tpm2.HandlePlatform, h, "", "", nil, attrs, uint16(len(data))); err != nil {
		return fmt.Errorf("defining NV index %#x: %w", index, err)
	}
	for off := 0; off < len(data); off += 512 {
		end := min(len(data), off+512)
		if err := tpm2.NVWrite(rw, tpm2.HandlePlatform, h, "", data[off:end], uint16(off)); err != nil {
			return fmt.Errorf("writing NV index %#x: %w", index, err)
		}
	}
	return nil
}

// AKParameters returns the attestation key (client.AttestationKeyECC, a
// primary key of the owner hierarchy) with its creation data certified by
// itself (TPM2_CertifyCreation): what the verifier needs to check that the
// TPM created the AK as a restricted, fixedTPM signing key.
func (t *TPM) AKParameters() (*attest.AKParameters, error) {
	var p attest.AKParameters
	err := t.do(func(rw io.ReadWriter) error {
		h, pub, cd, ch, ticket, _, err := tpm2.CreatePrimaryEx(rw, tpm2.HandleOwner, tpm2.PCRSelection{}, "", "", client.AKTemplateECC())
		if err != nil {
			return fmt.Errorf("creating the attestation key: %w", err)
		}
		defer tpm2.FlushContext(rw, h)
		att, sig, err := tpm2.CertifyCreation(rw, "", h, h, nil, ch, certifyScheme, ticket)
		if err != nil {
			return fmt.Errorf("certifying the attestation key's creation: %w", err)
		}
		p = attest.AKParameters{Public: pub, CreateData: cd, CreateAttestation: att, CreateSignature: sig}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// ActivateCredential recovers the secret of a credential-activation
// challenge (TPM2_ActivateCredential) with the attestation key and the EK
// of type kt. It fails unless the challenge was made for this TPM's EK and
// this AK. credential and secret are as the verifier sent them
// (TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET, size-prefixed).
func (t *TPM) ActivateCredential(kt KeyType, credential, secret []byte) ([]byte, error) {
	if len(credential) < 2 || len(secret) < 2 {
		return nil, errors.New("activation: malformed challenge")
	}
	var out []byte
	err := t.do(func(rw io.ReadWriter) error {
		ak, _, err := tpm2.CreatePrimary(rw, tpm2.HandleOwner, tpm2.PCRSelection{}, "", "", client.AKTemplateECC())
		if err != nil {
			return fmt.Errorf("loading the attestation key: %w", err)
		}
		defer tpm2.FlushContext(rw, ak)
		ek, _, err := tpm2.CreatePrimary(rw, tpm2.HandleEndorsement, tpm2.PCRSelection{}, "", "", ekTemplate(kt))
		if err != nil {
			return fmt.Errorf("loading the EK: %w", err)
		}
		defer tpm2.FlushContext(rw, ek)
		sess, _, err := tpm2.StartAuthSession(rw, tpm2.HandleNull, tpm2.HandleNull, make([]byte, 16), nil, tpm2.SessionPolicy, tpm2.AlgNull, tpm2.AlgSHA256)
		if err != nil {
			return fmt.Errorf("starting the EK policy session: %w", err)
		}
		defer tpm2.FlushContext(rw, sess)
		if _, _, err := tpm2.PolicySecret(rw, tpm2.HandleEndorsement, tpm2.AuthCommand{Session: tpm2.HandlePasswordSession, Attributes: tpm2.AttrContinueSession}, sess, nil, nil, nil, 0); err != nil {
			return fmt.Errorf("EK policy: %w", err)
		}
		out, err = tpm2.ActivateCredentialUsingAuth(rw, []tpm2.AuthCommand{
			{Session: tpm2.HandlePasswordSession, Attributes: tpm2.AttrContinueSession},
			{Session: sess, Attributes: tpm2.AttrContinueSession},
		}, ak, ek, credential[2:], secret[2:])
		if err != nil {
			return fmt.Errorf("TPM2_ActivateCredential (the challenge is not for this TPM's EK and AK): %w", err)
		}
		return nil
	})
	return out, err
}

// EKPublicDER returns an EK public key as DER SubjectPublicKeyInfo.
func EKPublicDER(pub crypto.PublicKey) ([]byte, error) { return x509.MarshalPKIXPublicKey(pub) }
