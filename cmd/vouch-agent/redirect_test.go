package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/vouch-dev/vouch/attest"
)

func TestLocalLocation(t *testing.T) {
	for _, tc := range []struct {
		name, upstream, outURL, loc, want string
	}{
		{"relative path", "https://docs.example", "https://docs.example/docs/a", "/docs/b?x=1", "http://127.0.0.1:8479/docs/b?x=1"},
		{"relative to the current path", "https://docs.example", "https://docs.example/docs/a", "b", "http://127.0.0.1:8479/docs/b"},
		{"absolute on the upstream", "https://docs.example", "https://docs.example/docs/a", "https://DOCS.example/login#top", "http://127.0.0.1:8479/login#top"},
		{"under the upstream's prefix", "https://rp.example/api", "https://rp.example/api/docs/a", "/api/docs/b", "http://127.0.0.1:8479/docs/b"},
		{"the prefix itself", "https://rp.example/api/", "https://rp.example/api/docs/a", "/api", "http://127.0.0.1:8479/"},
		{"outside the prefix", "https://rp.example/api", "https://rp.example/api/docs/a", "/other", ""},
		{"another host", "https://docs.example", "https://docs.example/docs/a", "https://sso.example/login", ""},
		{"another scheme", "https://docs.example", "https://docs.example/docs/a", "http://docs.example/x", ""},
		{"no Location", "https://docs.example", "https://docs.example/docs/a", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, _ := url.Parse(tc.upstream)
			out, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, tc.outURL, nil)
			out = withInbound(out, "127.0.0.1:8479")
			if got := localLocation(tc.loc, out, up); got != tc.want {
				t.Errorf("localLocation(%q) = %q, want %q", tc.loc, got, tc.want)
			}
		})
	}
}

// A relying party's refusal of the credential as revoked (or expired) asks
// the renewer for a fresh one at once; other answers do not, and the body
// always reaches the client whole.
func TestRenewOnRevoked(t *testing.T) {
	problem := func(status int, r attest.Reason) *http.Response {
		rec := httptest.NewRecorder()
		attest.WriteProblem(rec, attest.ProblemFor(status, attest.Errorf(r, "refused")))
		return rec.Result()
	}
	plain := &http.Response{StatusCode: http.StatusUnauthorized, Header: http.Header{"Content-Type": {"text/plain"}}, Body: io.NopCloser(strings.NewReader("no"))}
	for _, tc := range []struct {
		name  string
		resp  *http.Response
		renew bool
	}{
		{"credential revoked", problem(http.StatusUnauthorized, attest.ReasonCredentialRevoked), true},
		{"credential expired", problem(http.StatusUnauthorized, attest.ReasonCredentialExpired), true},
		{"proof replayed", problem(http.StatusUnauthorized, attest.ReasonPoPReplayed), false},
		{"scope refused", problem(http.StatusForbidden, attest.ReasonScopeInsufficient), false},
		{"not a problem", plain, false},
		{"served", &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("ok"))}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before bytes.Buffer
			body, _ := io.ReadAll(tc.resp.Body)
			before.Write(body)
			tc.resp.Body = io.NopCloser(bytes.NewReader(body))
			renewed := false
			renewOnRevoked(tc.resp, func() { renewed = true })
			after, _ := io.ReadAll(tc.resp.Body)
			if renewed != tc.renew || !bytes.Equal(after, before.Bytes()) {
				t.Errorf("renewed %v (want %v); body %q, was %q", renewed, tc.renew, after, before.Bytes())
			}
		})
	}
}
