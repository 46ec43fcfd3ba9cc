package agentside

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/vouch-dev/vouch/attest"
)

// maxEnrollResponse bounds an enrollment response body.
const maxEnrollResponse = 64 << 10

// postJSON posts v to path and decodes a 201 answer into out; refusals are
// *attest.Error with the verifier's reason.
func (c *Client) postJSON(ctx context.Context, path string, v, out any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	resp, err := c.do(ctx, func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint(path), bytes.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, "+attest.ProblemMediaType)
		}
		return req, err
	})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer drainClose(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return attest.ReadProblem(resp)
	}
	if err := checkMediaType(resp, "application/json"); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	b, err := readBounded(resp.Body, maxEnrollResponse)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s: the verifier's answer is not the expected JSON: %w", path, err)
	}
	return nil
}

// Enroll sends an enrollment request (POST /v1/enroll).
func (c *Client) Enroll(ctx context.Context, req *attest.EnrollRequest) (*attest.EnrollResponse, error) {
	var out attest.EnrollResponse
	if err := c.postJSON(ctx, attest.EnrollPath, req, &out); err != nil {
		return nil, err
	}
	if (out.Challenge == nil) == (out.Enrolled == nil) {
		return nil, errors.New("enroll: the verifier answered neither a challenge nor an enrollment")
	}
	return &out, nil
}

// Activate answers an activation challenge (POST /v1/enroll/activate).
func (c *Client) Activate(ctx context.Context, req *attest.ActivateRequest) (*attest.EnrollmentResult, error) {
	var out attest.EnrollmentResult
	if err := c.postJSON(ctx, attest.ActivatePath, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// EnrollOptions configure [TPM.Enroll].
type EnrollOptions struct {
	// Name is a label for the machine in the verifier's registry.
	Name string
	// AKCert is a certificate of the AK by a cloud CA, if the platform
	// provides one (cloud vTPMs).
	AKCert []byte
}

// EnrollmentRequest assembles what the verifier needs to enroll this TPM's
// attestation key: the EK certificate and chain from NV (or, without a
// certificate, the EK public key for an allowlist) and the AK parameters.
// It returns the EK too, whose type [TPM.ActivateCredential] needs.
func (t *TPM) EnrollmentRequest(o EnrollOptions) (*attest.EnrollRequest, *EK, error) {
	ek, err := t.EK()
	if err != nil {
		return nil, nil, err
	}
	ekDER, err := EKPublicDER(ek.Public)
	if err != nil {
		return nil, nil, err
	}
	ak, err := t.AKParameters()
	if err != nil {
		return nil, nil, err
	}
	return &attest.EnrollRequest{EKCert: ek.Cert, EKChain: ek.Chain, EKPublic: ekDER, AK: *ak, AKCert: o.AKCert, Name: o.Name}, ek, nil
}

// Enroll enrolls this TPM's attestation key with the verifier: it sends the
// EK certificate (or allowlisted EK) and AK parameters, recovers the
// secret of the verifier's credential-activation challenge with the TPM
// (which only the TPM holding both the EK and the AK can do), and sends it
// back. Enrolling an already enrolled AK succeeds (Already is set); after a
// TPM clear the new AK supersedes the old one.
func (t *TPM) Enroll(ctx context.Context, c *Client, o EnrollOptions) (*attest.EnrollmentResult, error) {
	req, ek, err := t.EnrollmentRequest(o)
	if err != nil {
		return nil, err
	}
	resp, err := c.Enroll(ctx, req)
	if err != nil {
		return nil, err
	}
	if resp.Enrolled != nil {
		return resp.Enrolled, nil
	}
	secret, err := t.ActivateCredential(ek.Type, resp.Challenge.Credential, resp.Challenge.Secret)
	if err != nil {
		return nil, err
	}
	return c.Activate(ctx, &attest.ActivateRequest{ID: resp.Challenge.ID, Secret: secret})
}
