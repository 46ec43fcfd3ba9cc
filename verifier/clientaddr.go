package verifier

import (
	"net/http"
	"net/netip"

	"github.com/vouch-dev/vouch/verifier/internal/ratelimit"
)

// clientAddress makes a request that came through a trusted proxy look, to
// everything after it, like the client's own: RemoteAddr becomes the client
// X-Forwarded-For names (port 0), and the header, consumed, is dropped.
// Rate limits, a delegation's networks, elevation and the audit records
// then all see one address, decided once. Requests from anyone else pass
// with their X-Forwarded-For dropped unread.
func clientAddress(proxies ratelimit.Proxies, next http.Handler) http.Handler {
	if proxies.Empty() {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		xff := r.Header.Values("X-Forwarded-For")
		if len(xff) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		client := proxies.ClientAddr(r.RemoteAddr, xff)
		r2 := new(http.Request)
		*r2 = *r
		r2.Header = r.Header.Clone()
		r2.Header.Del("X-Forwarded-For")
		if peer, err := netip.ParseAddrPort(r.RemoteAddr); client.IsValid() && (err != nil || peer.Addr().Unmap() != client) {
			r2.RemoteAddr = netip.AddrPortFrom(client, 0).String()
		}
		next.ServeHTTP(w, r2)
	})
}
