package agentside

import (
	"crypto"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/protobuf/proto"

	"github.com/vouch-dev/vouch/attest"
)

// AgentKeyTemplate is the template of an agent key: ECC P-256, ECDSA with
// SHA-256, created inside the TPM and bound to it (fixedTPM, fixedParent,
// sensitiveDataOrigin), usable with an empty password (userWithAuth), for
// signing arbitrary digests (sign, not restricted, not decrypt), name
// algorithm SHA-256. The verifier checks these attributes in the certified
// public area.
func AgentKeyTemplate() tpm2.Public {
	return tpm2.Public{
		Type:    tpm2.AlgECC,
		NameAlg: tpm2.AlgSHA256,
		Attributes: tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin |
			tpm2.FlagUserWithAuth | tpm2.FlagSign,
		ECCParameters: &tpm2.ECCParams{
			Sign:    &tpm2.SigScheme{Alg: tpm2.AlgECDSA, Hash: tpm2.AlgSHA256},
			CurveID: tpm2.CurveNISTP256,
		},
	}
}

// certifyScheme is the signature scheme of TPM2_Certify by the ECC AK.
var certifyScheme = tpm2.SigScheme{Alg: tpm2.AlgECDSA, Hash: tpm2.AlgSHA256}

// Agent is one agent instance on a TPM: the TPM's attestation key and a fresh
// agent key that exists only as long as the Agent. Its methods are safe for
// concurrent use (they serialise on the TPM).
type Agent struct {
	tpm       *TPM
	ak        *client.Key
	key       *client.Key
	keyPublic []byte // TPMT_PUBLIC of the agent key
	akPub     crypto.PublicKey
	pub       crypto.PublicKey
	signer    crypto.Signer
	closed    bool // guarded by tpm.mu
}

// NewAgent loads the TPM's attestation key (client.AttestationKeyECC) and
// creates a new agent key from [AgentKeyTemplate] under the storage root key
// (client.StorageRootKeyECC). The agent key is an ordinary, randomly generated
// key, so every Agent has its own, even on the same TPM. Close the Agent to
// flush both from the TPM.
func NewAgent(t *TPM) (*Agent, error) {
	a := &Agent{tpm: t}
	err := t.do(func(rw io.ReadWriter) (err error) {
		defer func() {
			if err != nil {
				a.closeKeys()
			}
		}()
		if a.ak, err = client.AttestationKeyECC(rw); err != nil {
			return fmt.Errorf("loading the attestation key: %w", err)
		}
		srk, err := client.StorageRootKeyECC(rw)
		if err != nil {
			return fmt.Errorf("loading the storage root key: %w", err)
		}
		defer srk.Close()
		priv, pub, _, _, _, err := tpm2.CreateKey(rw, srk.Handle(), tpm2.PCRSelection{}, "", "", AgentKeyTemplate())
		if err != nil {
			return fmt.Errorf("creating the agent key: %w", err)
		}
		h, _, err := tpm2.Load(rw, srk.Handle(), "", pub, priv)
		if err != nil {
			return fmt.Errorf("loading the agent key: %w", err)
		}
		if a.key, err = client.LoadCachedKey(rw, h, client.NullSession{}); err != nil {
			_ = tpm2.FlushContext(rw, h)
			return fmt.Errorf("reading the agent key: %w", err)
		}
		if a.keyPublic, err = a.key.PublicArea().Encode(); err != nil {
			return fmt.Errorf("encoding the agent key: %w", err)
		}
		s, err := a.key.GetSigner()
		if err != nil {
			return fmt.Errorf("agent key signer: %w", err)
		}
		a.signer = &tpmSigner{agent: a, s: s}
		a.akPub, a.pub = a.ak.PublicKey(), a.key.PublicKey()
		if t.agents == nil {
			t.agents = map[*Agent]struct{}{}
		}
		t.agents[a] = struct{}{}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// closeKeys flushes the keys; the caller holds the TPM mutex.
func (a *Agent) closeKeys() {
	if a.key != nil {
		a.key.Close()
		a.key = nil
	}
	if a.ak != nil {
		a.ak.Close()
		a.ak = nil
	}
}

// Close flushes the agent key and the attestation key from the TPM. The
// agent key is gone for good: credentials bound to it become unusable.
func (a *Agent) Close() error {
	a.tpm.mu.Lock()
	defer a.tpm.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	delete(a.tpm.agents, a)
	a.closeKeys()
	return nil
}

// do runs f under the TPM mutex, refusing once the agent is closed.
func (a *Agent) do(f func(rw io.ReadWriter) error) error {
	return a.tpm.do(func(rw io.ReadWriter) error {
		if a.closed {
			return errors.New("agent: closed")
		}
		return f(rw)
	})
}

// AKPublic returns the attestation key's public key.
func (a *Agent) AKPublic() crypto.PublicKey { return a.akPub }

// PublicKey returns the agent key's public key (an *ecdsa.PublicKey).
func (a *Agent) PublicKey() crypto.PublicKey { return a.pub }

// KeyPublicArea returns the agent key's TPMT_PUBLIC, as sent in evidence.
func (a *Agent) KeyPublicArea() []byte { return append([]byte(nil), a.keyPublic...) }

// Signer returns the agent key as a crypto.Signer (ECDSA P-256; Sign takes a
// SHA-256 digest and returns an ASN.1 signature). It is the
// proof-of-possession key for [attest.SignPoP] and [Transport].
func (a *Agent) Signer() crypto.Signer { return a.signer }

// tpmSigner serialises go-tpm-tools' signer with every other TPM use.
type tpmSigner struct {
	agent *Agent
	s     crypto.Signer
}

func (s *tpmSigner) Public() crypto.PublicKey { return s.s.Public() }

func (s *tpmSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var sig []byte
	err := s.agent.do(func(io.ReadWriter) error {
		var err error
		sig, err = s.s.Sign(r, digest, opts)
		return err
	})
	return sig, err
}

// Evidence assembles the evidence for one attestation: it encodes req,
// computes the binding of nonce, agent key and request ([attest.Binding]),
// quotes every PCR bank with the attestation key over the binding
// (go-tpm-tools Key.Attest, carrying the firmware event log and the canonical
// event log), and certifies the agent key with the attestation key
// (TPM2_Certify, qualifyingData = binding, ECDSA/SHA-256).
//
// It needs a non-empty firmware event log ([TPM.Boot] on the simulator) and a
// measured workload ([TPM.MeasureWorkload]).
func (a *Agent) Evidence(nonce []byte, req *attest.Request) (*attest.Evidence, error) {
	if len(nonce) != attest.NonceSize {
		return nil, fmt.Errorf("evidence: the nonce is %d bytes; a verifier nonce is %d", len(nonce), attest.NonceSize)
	}
	if req == nil {
		return nil, errors.New("evidence: no attestation request")
	}
	reqBytes, err := attest.EncodeRequest(req)
	if err != nil {
		return nil, fmt.Errorf("evidence: %w", err)
	}
	binding := attest.Binding(nonce, a.keyPublic, reqBytes)
	ev := &attest.Evidence{
		Version:  attest.EvidenceVersion,
		Nonce:    append([]byte(nil), nonce...),
		Request:  reqBytes,
		AgentKey: a.KeyPublicArea(),
	}
	err = a.do(func(rw io.ReadWriter) error {
		t := a.tpm
		if len(t.firmwareLog) == 0 {
			if t.Firmwareless() {
				return errors.New("evidence: the TPM has no firmware, so no firmware event log; boot it with a recorded log first (--boot-log)")
			}
			return errors.New("evidence: the TPM has no firmware event log")
		}
		if len(t.celBytes) == 0 {
			return errors.New("evidence: the workload was not measured; measure it first (--image-ref, --image-digest)")
		}
		att, err := a.ak.Attest(client.AttestOpts{
			Nonce:              binding,
			TCGEventLog:        t.firmwareLog,
			CanonicalEventLog:  t.celBytes,
			SkipTeeAttestation: true,
		})
		if err != nil {
			return fmt.Errorf("evidence: quoting the PCRs: %w", err)
		}
		if ev.TPM, err = proto.Marshal(att); err != nil {
			return fmt.Errorf("evidence: encoding the attestation: %w", err)
		}
		ev.CertifyInfo, ev.CertifySig, err = tpm2.CertifyEx(rw, "", "", a.key.Handle(), a.ak.Handle(), binding, certifyScheme)
		if err != nil {
			return fmt.Errorf("evidence: certifying the agent key: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ev, nil
}
