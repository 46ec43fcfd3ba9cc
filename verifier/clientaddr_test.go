package verifier

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/vouch-dev/vouch/verifier/internal/ratelimit"
)

// Behind a trusted proxy every handler sees the client X-Forwarded-For
// names as RemoteAddr; the header is consumed either way, so nothing after
// the middleware can read a spoofed one.
func TestClientAddress(t *testing.T) {
	proxies := ratelimit.NewProxies([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	for _, tc := range []struct {
		name       string
		proxies    ratelimit.Proxies
		remote     string
		xff        []string
		wantRemote string
		wantXFF    bool
	}{
		{"no proxy configured: untouched", ratelimit.Proxies{}, "10.0.0.1:443", []string{"198.51.100.7"}, "10.0.0.1:443", true},
		{"through a trusted proxy", proxies, "10.0.0.1:443", []string{"198.51.100.7"}, "198.51.100.7:0", false},
		{"spoofed hop left of the real client", proxies, "10.0.0.1:443", []string{"6.6.6.6, 198.51.100.7"}, "198.51.100.7:0", false},
		{"two trusted proxies", proxies, "10.0.0.1:443", []string{"198.51.100.7, 10.0.0.2"}, "198.51.100.7:0", false},
		{"IPv6 client", proxies, "10.0.0.1:443", []string{"2001:db8::7"}, "[2001:db8::7]:0", false},
		{"untrusted peer: header dropped unread", proxies, "192.0.2.50:1234", []string{"203.0.113.1"}, "192.0.2.50:1234", false},
		{"trusted peer, garbage header: the proxy itself", proxies, "10.0.0.1:443", []string{"not-an-ip"}, "10.0.0.1:443", false},
		{"no header", proxies, "10.0.0.1:443", nil, "10.0.0.1:443", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var gotRemote string
			var gotXFF bool
			h := clientAddress(tc.proxies, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				gotRemote, gotXFF = r.RemoteAddr, r.Header.Get("X-Forwarded-For") != ""
			}))
			req := httptest.NewRequest(http.MethodGet, "/v1/keys", nil)
			req.RemoteAddr = tc.remote
			for _, v := range tc.xff {
				req.Header.Add("X-Forwarded-For", v)
			}
			h.ServeHTTP(httptest.NewRecorder(), req)
			if gotRemote != tc.wantRemote || gotXFF != tc.wantXFF {
				t.Errorf("handler saw RemoteAddr %q, X-Forwarded-For present %v; want %q, %v", gotRemote, gotXFF, tc.wantRemote, tc.wantXFF)
			}
			if req.RemoteAddr != tc.remote {
				t.Errorf("the caller's request was modified: %q", req.RemoteAddr)
			}
		})
	}
}
