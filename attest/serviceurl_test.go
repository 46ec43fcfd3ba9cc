package attest

import (
	"strings"
	"testing"
)

func TestServiceURL(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want string // substring of the error; "" for accepted
	}{
		{"https://verifier.example:8443", ""},
		{"https://verifier.example/base/", ""},
		{"http://127.0.0.1:8443", ""},
		{"http://127.8.9.10:8443", ""},
		{"http://[::1]:8443", ""},
		{"http://LocalHost:8443", ""},
		{"http://verifier.example", "must use https"},
		{"http://10.0.0.1:8443", "must use https"},
		{"http://127.0.0.1.attacker.example", "must use https"},
		{"ftp://verifier.example", "not an absolute http(s) URL"},
		{"verifier.example:8443", "not an absolute http(s) URL"},
		{"/v1/keys", "not an absolute http(s) URL"},
		{"https://", "not an absolute http(s) URL"},
		{"https://bad host", "not an absolute http(s) URL"},
	} {
		_, err := ServiceURL("test setting", tc.raw)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q refused: %v", tc.raw, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "test setting: ")):
			t.Errorf("%q: got %v, want an error naming the setting and saying %q", tc.raw, err, tc.want)
		}
	}
}

// Every client of a verifier service refuses plain http to another host.
func TestServiceClientsRefusePlainHTTP(t *testing.T) {
	const remote = "http://verifier.example"
	if _, err := NewRemoteKeys(RemoteKeysOptions{URL: remote}); err == nil {
		t.Error("remote keys accepted plain http")
	}
	if _, err := NewRevocationFeed(RevocationFeedOptions{URL: remote}); err == nil {
		t.Error("revocation feed accepted plain http")
	}
	if _, err := NewReporter(ReporterOptions{URL: remote, Token: "t"}); err == nil {
		t.Error("reporter accepted plain http")
	}
	if _, err := NewRemoteAuthorizer(RemoteAuthorizerOptions{Verifier: remote, Origin: "https://docs.example", Audience: "a", Map: docMapper}); err == nil {
		t.Error("remote authorizer accepted plain http")
	}
}
