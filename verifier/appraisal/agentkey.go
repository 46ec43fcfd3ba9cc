package appraisal

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/subtle"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/veraison/go-cose"

	vattest "github.com/vouch-dev/vouch/attest"
)

// AgentKeyResult is the agent's proof-of-possession key, proven to live in
// the same TPM as the AK and bound to this attestation.
type AgentKeyResult struct {
	Public  *ecdsa.PublicKey
	COSE    *cose.Key // with kid = RFC 9679 thumbprint
	Subject string    // credential sub: RFC 9679 thumbprint URI
}

// agentKeyRequired are the attributes an agent key must have: a signing key
// generated inside the TPM that can never leave it or move to another parent.
const agentKeyRequired = tpm2.FlagSign | tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin

// agentKeyForbidden: a restricted key only signs TPM-generated data (it could
// not sign proofs of possession); a decryption key must not double as one.
const agentKeyForbidden = tpm2.FlagRestricted | tpm2.FlagDecrypt

// verifyAgentKey checks TPM2_Certify of the agent key: signed by the trusted
// AK, over the agent key's name, with the binding as qualifyingData; and that
// the key is an ECC P-256 signing key that never leaves the TPM.
func verifyAgentKey(o *Outcome) error {
	ev := o.Evidence
	pub, err := tpm2.DecodePublic(ev.AgentKey)
	if err != nil {
		return vattest.Errorf(vattest.ReasonAgentKeyMalformed, "the agent key public area (evidence field 5) cannot be decoded: %w", err)
	}
	if pub.Type != tpm2.AlgECC || pub.ECCParameters == nil || pub.ECCParameters.CurveID != tpm2.CurveNISTP256 || pub.NameAlg != tpm2.AlgSHA256 {
		return vattest.Errorf(vattest.ReasonAgentKeyMalformed, "the agent key must be an ECC P-256 key with SHA-256 name algorithm (type %v, name alg %v)", pub.Type, pub.NameAlg)
	}
	if pub.Attributes&agentKeyRequired != agentKeyRequired || pub.Attributes&agentKeyForbidden != 0 {
		return vattest.Errorf(vattest.ReasonAgentKeyAttributes, "the agent key has attributes %#x; it must be a fixedTPM, fixedParent, sensitiveDataOrigin signing key (%#x), neither restricted nor decrypt", uint32(pub.Attributes), uint32(agentKeyRequired))
	}
	params := goattest.CertificationParameters{Public: ev.AgentKey, CreateAttestation: ev.CertifyInfo, CreateSignature: ev.CertifySig}
	if err := params.Verify(goattest.VerifyOpts{Public: o.AK.Public, Hash: crypto.SHA256}); err != nil {
		return vattest.Errorf(vattest.ReasonAgentKeyCertify, "TPM2_Certify of the agent key does not verify with the enrolled AK (the key may live in another TPM): %w", err)
	}
	// go-attestation does not check the qualifying data; the binding makes
	// the certification fresh and ties it to this request.
	att, err := tpm2.DecodeAttestationData(ev.CertifyInfo)
	if err != nil {
		return vattest.Errorf(vattest.ReasonAgentKeyCertify, "the certification cannot be decoded: %w", err)
	}
	if subtle.ConstantTimeCompare(att.ExtraData, o.Binding) != 1 {
		return vattest.Errorf(vattest.ReasonAgentKeyBinding, "the agent key certification's qualifyingData is not the binding of this nonce, agent key and request; it was made for another attestation")
	}
	key, err := pub.Key()
	if err != nil {
		return vattest.Errorf(vattest.ReasonAgentKeyMalformed, "the agent public key cannot be extracted: %w", err)
	}
	ec, ok := key.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return vattest.Errorf(vattest.ReasonAgentKeyMalformed, "the agent key is not an ECDSA P-256 key")
	}
	ck, err := vattest.PublicCOSEKey(ec)
	if err != nil {
		return vattest.Errorf(vattest.ReasonAgentKeyMalformed, "encoding the agent key: %w", err)
	}
	sub, err := vattest.SubjectOf(ck)
	if err != nil {
		return vattest.Errorf(vattest.ReasonAgentKeyMalformed, "deriving the agent id: %w", err)
	}
	o.AgentKey = &AgentKeyResult{Public: ec, COSE: ck, Subject: sub}
	return nil
}
