package demo

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/access"
	"github.com/vouch-dev/vouch/verifier/store"
)

// The demo's delegation: alice lets agents running Image summarize
// customer A's documents for an hour.
const (
	Intent   = "summarize-documents"
	Report   = `Document::"customer-A/report-7"`
	docsPath = "/documents/customer-A/report-7"
)

// Delegated are the resources of the demo's delegation and request.
var Delegated = []string{`Document::"customer-A/*"`, `Summary::"customer-A/*"`}

// delegate registers alice as the first admin (as `vouch users add --data`
// does on the verifier host) and has her delegate through the signed admin
// API.
func (r *run) delegate(ctx context.Context, srv *verifier.Server, vURL string) (*access.Client, string, error) {
	start := time.Now()
	key, err := access.GenerateUserKey("ed25519")
	if err != nil {
		return nil, "", err
	}
	spki, err := x509.MarshalPKIXPublicKey(key.(crypto.Signer).Public())
	if err != nil {
		return nil, "", err
	}
	if err := srv.Store().AddUser(ctx, store.User{ID: "alice", PublicKey: spki, Admin: true, CreatedAt: time.Now(), CreatedBy: "vouch demo"}); err != nil {
		return nil, "", err
	}
	alice, err := access.NewClient(vURL, "alice", key, nil)
	if err != nil {
		return nil, "", err
	}
	d, err := alice.CreateDelegation(ctx, &access.DelegationRequest{
		Intent: Intent, ImageDigests: []string{Image.ImageDigest}, Resources: Delegated,
		ExpiresAt: time.Now().Add(time.Hour),
	})
	if err != nil {
		r.step("delegate", false, attest.ReasonOf(err), start, "refused: %v", err)
		return nil, "", err
	}
	r.step("delegate", true, "", start, "alice (signed request) delegates %s on %s to image %.19s… for 1h: %s", Intent, strings.Join(Delegated, ", "), Image.ImageDigest, d.ID)
	return alice, d.ID, nil
}

// docsMapper maps the document store's requests to actions and resources.
func docsMapper(req *http.Request) (string, string, error) {
	verb, ok := map[string]string{http.MethodGet: "read", http.MethodPut: "write", http.MethodDelete: "delete"}[req.Method]
	if !ok {
		return "", "", attest.Errorf(attest.ReasonRequestMalformed, "method %s is not supported", req.Method)
	}
	id := strings.TrimPrefix(req.URL.Path, "/documents/")
	return "documents:" + verb, `Document::"` + id + `"`, nil
}

// authzSteps shows least privilege at work on the relying party, which asks
// the verifier for a decision on every request: a delete refused, a
// just-in-time single write, its reuse refused, and the delegation revoked.
func (r *run) authzSteps(ctx context.Context, client *agentside.Client, cred []byte, agent *agentside.Agent, rpURL string, alice *access.Client, dlgID string) error {
	hc := func(c []byte) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &agentside.Transport{Credential: func() []byte { return c }, Key: agent.Signer()}}
	}
	call := func(c []byte, method string, body []byte) (int, attest.Reason, error) {
		req, err := http.NewRequestWithContext(ctx, method, rpURL+docsPath, bytes.NewReader(body))
		if err != nil {
			return 0, "", err
		}
		resp, err := hc(c).Do(req)
		if err != nil {
			return 0, "", err
		}
		return resp.StatusCode, problemReason(resp), nil
	}

	start := time.Now()
	code, reason, err := call(cred, http.MethodDelete, nil)
	if err != nil {
		return err
	}
	r.step("delete", code == http.StatusForbidden && reason == attest.ReasonScopeInsufficient, reason, start, "DELETE %s → %d %s (the intent never includes delete)", docsPath, code, reason)

	start = time.Now()
	el, err := client.Elevate(ctx, cred, agent.Signer(), "documents:write", Report)
	if err != nil {
		r.step("elevate", false, attest.ReasonOf(err), start, "refused: %v", err)
		return nil
	}
	code, reason, err = call(el.Credential, http.MethodPut, []byte("summary: all good\n"))
	if err != nil {
		return err
	}
	r.step("elevate", code == http.StatusOK, reason, start, "POST /v1/elevate documents:write on %s → single-use credential (≤10 s); PUT → %d", Report, code)

	start = time.Now()
	code, reason, err = call(el.Credential, http.MethodPut, []byte("summary: again\n"))
	if err != nil {
		return err
	}
	r.step("reuse", code == http.StatusUnauthorized && reason == attest.ReasonCredentialReused, reason, start, "the same elevation used for a second PUT → %d %s", code, reason)

	start = time.Now()
	if _, err := alice.SetStatus(ctx, dlgID, "revoke", "task finished"); err != nil {
		return err
	}
	code, reason, err = call(cred, http.MethodGet, nil)
	if err != nil {
		return err
	}
	// Two paths refuse it, whichever is first: the revocation feed (the
	// delegation's live credentials were revoked with it) and the
	// verifier's own decision.
	ok := (code == http.StatusUnauthorized && reason == attest.ReasonCredentialRevoked) ||
		(code == http.StatusForbidden && reason == attest.ReasonDelegationRevoked)
	r.step("revoked", ok, reason, start, "alice revokes %s; the next GET with the still-unexpired credential → %d %s", dlgID, code, reason)
	return nil
}

// docsHandlers serves the document store behind the middleware.
func docsHandlers(mux *http.ServeMux) {
	mux.HandleFunc("PUT /documents/{tenant}/{doc}", func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(req.Body, 1<<16))
		fmt.Fprintf(w, "document %s/%s updated (%d bytes)\n", req.PathValue("tenant"), req.PathValue("doc"), len(b))
	})
	mux.HandleFunc("DELETE /documents/{tenant}/{doc}", func(w http.ResponseWriter, req *http.Request) {
		fmt.Fprintf(w, "document %s/%s deleted\n", req.PathValue("tenant"), req.PathValue("doc"))
	})
}
