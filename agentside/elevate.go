package agentside

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/vouch-dev/vouch/attest"
)

// Elevate asks the verifier for a just-in-time elevation: a single-use
// credential, valid for seconds, for one action on one resource (e.g.
// "documents:write" on Document::"customer-A/report-7"). The agent
// authenticates with its current credential and a proof of possession of
// key, its cnf key, exactly as it does to a relying party:
//
//	POST {base}/v1/elevate  {"action": …, "resource": …}  → 200 application/cwt
//
// A refusal is an *attest.Error with the verifier's reason.
func (c *Client) Elevate(ctx context.Context, credential []byte, key crypto.Signer, action, resource string) (*Issued, error) {
	body, err := json.Marshal(map[string]string{"action": action, "resource": resource})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint(attest.ElevatePath), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", attest.CredentialMediaType+", "+attest.ProblemMediaType)
	hc := &http.Client{
		Transport:     &Transport{Base: c.hc.Transport, Credential: func() []byte { return credential }, Key: key},
		Timeout:       c.hc.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("elevate: %w", err)
	}
	defer drainClose(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, attest.ReadProblem(resp)
	}
	if err := checkMediaType(resp, attest.CredentialMediaType); err != nil {
		return nil, fmt.Errorf("elevate: %w", err)
	}
	cred, err := readBounded(resp.Body, attest.MaxCredentialSize)
	if err != nil {
		return nil, fmt.Errorf("elevate: credential: %w", err)
	}
	if len(cred) == 0 {
		return nil, errors.New("elevate: the verifier answered 200 with an empty credential")
	}
	return &Issued{Credential: cred}, nil
}
