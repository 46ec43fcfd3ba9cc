package attest

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// ServiceURL parses the URL of a service that answers with security
// decisions or material (the verifier's keys, decisions and revocation feed,
// a monitoring webhook). It must be absolute http(s), and https unless the
// host is loopback: over plain http a network attacker could forge a permit,
// a key set or a silent feed. what names the setting in errors.
func ServiceURL(what, raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("%s: URL %q is not an absolute http(s) URL", what, raw)
	}
	if u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
		return nil, fmt.Errorf("%s: URL %q must use https (plain http is allowed for loopback only)", what, raw)
	}
	return u, nil
}

// isLoopbackHost reports whether h is "localhost" or a loopback address
// (127.0.0.0/8, ::1).
func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
