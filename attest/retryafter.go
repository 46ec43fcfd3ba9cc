package attest

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RetryAfter is how long a refused client should wait before asking again,
// from the response's Retry-After header (delay-seconds or an HTTP date):
// 1 s when the header is missing or unreadable, never negative, at most
// limit. The verifier sends it with 429 rate-limited refusals.
func RetryAfter(resp *http.Response, now time.Time, limit time.Duration) time.Duration {
	v := strings.TrimSpace(resp.Header.Get("Retry-After"))
	d := time.Second
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		d = time.Duration(s) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = max(t.Sub(now), 0)
	}
	return min(d, limit)
}
