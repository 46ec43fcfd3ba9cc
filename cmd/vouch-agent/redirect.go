package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/vouch-dev/vouch/attest"
)

// inboundKey carries the Host the local client addressed the sidecar by, from
// the rewritten request to the response.
type inboundKey struct{}

// localLocation maps a redirect of the relying party back onto the sidecar,
// so that a client following it comes through the sidecar again (with a
// credential and a proof) instead of going to the relying party directly
// without one. loc is resolved against the upstream request's URL; a
// Location elsewhere than the upstream (another host, or outside its path
// prefix) is left as it is: the sidecar only speaks for this one relying
// party. It returns "" when loc is not to be changed.
func localLocation(loc string, out *http.Request, up *url.URL) string {
	host, _ := out.Context().Value(inboundKey{}).(string)
	if host == "" || loc == "" {
		return ""
	}
	u, err := url.Parse(loc)
	if err != nil {
		return ""
	}
	abs := out.URL.ResolveReference(u)
	if !strings.EqualFold(abs.Scheme, up.Scheme) || !strings.EqualFold(abs.Host, up.Host) {
		return ""
	}
	prefix := strings.TrimSuffix(up.Path, "/")
	p := abs.Path
	if prefix != "" {
		if p != prefix && !strings.HasPrefix(p, prefix+"/") {
			return ""
		}
		p = strings.TrimPrefix(p, prefix)
	}
	if p == "" {
		p = "/"
	}
	local := url.URL{Scheme: "http", Host: host, Path: p, RawQuery: abs.RawQuery, Fragment: abs.Fragment}
	return local.String()
}

// modifyResponse is the proxy's ModifyResponse: redirects of the relying
// party point back at the sidecar, and a refusal of the credential as
// revoked triggers a renewal.
func modifyResponse(up *url.URL, renewNow func()) func(*http.Response) error {
	return func(resp *http.Response) error {
		if l := localLocation(resp.Header.Get("Location"), resp.Request, up); l != "" {
			resp.Header.Set("Location", l)
		}
		renewOnRevoked(resp, renewNow)
		return nil
	}
}

// withInbound records the inbound Host on the outbound request.
func withInbound(out *http.Request, host string) *http.Request {
	return out.WithContext(context.WithValue(out.Context(), inboundKey{}, host))
}

// maxProblemPeek bounds the refusal body the sidecar reads to learn its
// reason; the body is passed on to the client either way.
const maxProblemPeek = 64 << 10

// renewOnRevoked asks for a fresh credential at once when the relying party
// refuses the current one as revoked or expired (401 with that reason),
// rather than leaving the agent refused until the planned renewal.
func renewOnRevoked(resp *http.Response, renewNow func()) {
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("Content-Type"), attest.ProblemMediaType) {
		return
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxProblemPeek))
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(b), resp.Body), resp.Body}
	if err != nil {
		return
	}
	var p attest.Problem
	if json.Unmarshal(b, &p) != nil {
		return
	}
	if p.Reason == attest.ReasonCredentialRevoked || p.Reason == attest.ReasonCredentialExpired {
		renewNow()
	}
}
