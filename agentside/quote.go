package agentside

import (
	"crypto"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
)

// Quote is one TPM2_Quote by the attestation key, in TPM wire formats.
type Quote struct {
	AKPublic  []byte // the AK's TPMT_PUBLIC
	Message   []byte // the signed TPMS_ATTEST
	Signature []byte // TPMT_SIGNATURE
	Bank      crypto.Hash
	PCRs      map[int][]byte // the quoted PCRs' values, read with the quote
	Nonce     []byte
}

// Quote quotes every PCR (0-23) of the bank of hash with the attestation key
// (client.AttestationKeyECC), with nonce as qualifying data. It is the raw
// form of what [Agent.Evidence] sends, for interoperability with other tools
// (vouch-agent quote --export-tpm2-tools).
func (t *TPM) Quote(nonce []byte, hash crypto.Hash) (*Quote, error) {
	if len(nonce) == 0 || len(nonce) > 64 {
		return nil, errors.New("quote: the nonce must be 1 to 64 bytes")
	}
	alg, err := tpm2.HashToAlgorithm(hash)
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	allocated := false
	for _, b := range t.banks {
		allocated = allocated || (b.Hash == alg && len(b.PCRs) > 0)
	}
	if !allocated {
		return nil, fmt.Errorf("quote: the TPM has no %v PCR bank", hash)
	}
	var q Quote
	err = t.do(func(rw io.ReadWriter) error {
		ak, err := client.AttestationKeyECC(rw)
		if err != nil {
			return fmt.Errorf("loading the attestation key: %w", err)
		}
		defer ak.Close()
		if q.AKPublic, err = ak.PublicArea().Encode(); err != nil {
			return err
		}
		pq, err := ak.Quote(client.FullPcrSel(alg), nonce)
		if err != nil {
			return fmt.Errorf("quoting the %v PCRs: %w", hash, err)
		}
		q.Message, q.Signature = pq.GetQuote(), pq.GetRawSig()
		q.PCRs = map[int][]byte{}
		for i, v := range pq.GetPcrs().GetPcrs() {
			q.PCRs[int(i)] = v
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	q.Bank, q.Nonce = hash, append([]byte(nil), nonce...)
	return &q, nil
}
