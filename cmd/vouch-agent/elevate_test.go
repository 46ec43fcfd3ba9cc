package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/access"
	"github.com/vouch-dev/vouch/verifier/store"
)

// An application in any language elevates one request through the sidecar
// with a header: the sidecar obtains a single-use credential for exactly
// that action and resource and sends the request with it; the verifier
// refuses what the intent never allows, and the header never reaches the
// relying party.
func TestSidecarElevation(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	vhs, srv := startRealVerifier(t, time.Minute, state)
	key, err := access.GenerateUserKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(key.(crypto.Signer).Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Store().AddUser(ctx, store.User{ID: "alice", PublicKey: spki, Admin: true, CreatedAt: time.Now(), CreatedBy: "test"}); err != nil {
		t.Fatal(err)
	}
	alice, err := access.NewClient(vhs.URL, "alice", key, nil)
	if err != nil {
		t.Fatal(err)
	}
	dlg, err := alice.CreateDelegation(ctx, &access.DelegationRequest{Intent: "summarize-documents", ImageDigests: []string{demoDigest},
		Resources: []string{`Document::"customer-A/*"`, `Summary::"customer-A/*"`}, ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	rp := startRelyingParty(t, vhs.URL)
	base := startSidecar(t, "--state", state, "--verifier", vhs.URL, "--upstream", rp.URL,
		"--boot-log", bootLog, "--image-ref", demoRef, "--image-digest", demoDigest,
		"--intent", "summarize-documents", "--delegation", dlg.ID, "--resource", `Document::"customer-A/*"`)
	waitFor(t, "readiness", func() bool { resp, _ := do(t, "GET", base+"/.vouch/readyz", nil, nil); return resp.StatusCode == 200 })
	standing := rp.count()
	resp, b := do(t, "GET", base+"/documents/customer-A/report-7", nil, nil)
	if resp.StatusCode != http.StatusOK || rp.count() != standing+1 {
		t.Fatalf("standing credential: %s %s", resp.Status, b)
	}
	standingAuth := rp.last().Authorization

	for _, tc := range []struct {
		name   string
		header string
		status int
		reason attest.Reason
	}{
		{"granted", `documents:write Document::"customer-A/report-7"`, http.StatusOK, ""},
		{"outside the intent", `documents:delete Document::"customer-A/report-7"`, http.StatusForbidden, attest.ReasonIntentAction},
		{"outside the delegation", `documents:write Document::"customer-B/report-1"`, http.StatusForbidden, attest.ReasonResourceNotDelegated},
		{"malformed", `documents:write`, http.StatusBadRequest, attest.ReasonRequestMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := rp.count()
			resp, b := do(t, "PUT", base+"/documents/customer-A/report-7", strings.NewReader("summary"), http.Header{ElevateHeader: {tc.header}})
			if resp.StatusCode != tc.status {
				t.Fatalf("%s: %s %s", tc.header, resp.Status, b)
			}
			if tc.status != http.StatusOK {
				p := problemOf(t, resp, b)
				if rp.count() != n || p.Reason != tc.reason {
					t.Errorf("refused elevation: problem %+v, relying party saw %d requests", p, rp.count()-n)
				}
				t.Logf("refused: %s %s", p.Reason, p.Detail)
				return
			}
			got := rp.last()
			if rp.count() != n+1 || got.Method != "PUT" || got.Body != "summary" || got.Authorization == standingAuth {
				t.Errorf("the relying party saw %+v; want the PUT with the single-use credential", got)
			}
		})
	}
	// The next plain request goes with the standing credential again.
	if resp, b := do(t, "GET", base+"/documents/customer-A/report-7", nil, nil); resp.StatusCode != http.StatusOK || rp.last().Authorization != standingAuth {
		t.Errorf("after an elevation: %s %s", resp.Status, b)
	}
	st, err := http.Get(base + "/.vouch/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Body.Close()
	var sb strings.Builder
	_, _ = io.Copy(&sb, st.Body)
	for _, want := range []string{`vouch_sidecar_elevations_total{outcome="granted"} 1`, `vouch_sidecar_elevations_total{outcome="refused"} 3`} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
