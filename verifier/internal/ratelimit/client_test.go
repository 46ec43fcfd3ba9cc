package ratelimit

import (
	"net/netip"
	"strings"
	"testing"
)

func TestClientAddr(t *testing.T) {
	proxies := NewProxies([]netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("2001:db8:ffff::/48"),
		netip.MustParsePrefix("::ffff:172.16.0.0/108"), // 172.16.0.0/12 in mapped form
	})
	for _, tc := range []struct {
		name    string
		proxies Proxies
		remote  string
		xff     []string
		want    string // "" for the invalid Addr
	}{
		{name: "no proxies configured: the peer, XFF ignored", remote: "198.51.100.7:4242", xff: []string{"203.0.113.9"}, want: "198.51.100.7"},
		{name: "untrusted peer spoofs XFF", proxies: proxies, remote: "198.51.100.7:4242", xff: []string{"203.0.113.9"}, want: "198.51.100.7"},
		{name: "untrusted peer claims to be behind a trusted proxy", proxies: proxies, remote: "198.51.100.7:4242", xff: []string{"203.0.113.9, 10.0.0.1"}, want: "198.51.100.7"},
		{name: "trusted proxy, no XFF", proxies: proxies, remote: "10.1.2.3:80", want: "10.1.2.3"},
		{name: "trusted proxy names the client", proxies: proxies, remote: "10.1.2.3:80", xff: []string{"203.0.113.9"}, want: "203.0.113.9"},
		{name: "client prepends a spoofed hop", proxies: proxies, remote: "10.1.2.3:80", xff: []string{"6.6.6.6, 203.0.113.9"}, want: "203.0.113.9"},
		{name: "client spoofs a trusted proxy hop on the left", proxies: proxies, remote: "10.1.2.3:80", xff: []string{"6.6.6.6, 10.9.9.9, 203.0.113.9"}, want: "203.0.113.9"},
		{name: "two trusted proxies", proxies: proxies, remote: "10.1.2.3:80", xff: []string{"6.6.6.6, 203.0.113.9, 10.4.5.6"}, want: "203.0.113.9"},
		{name: "several header lines, in order", proxies: proxies, remote: "10.1.2.3:80", xff: []string{"6.6.6.6", "203.0.113.9", "10.4.5.6"}, want: "203.0.113.9"},
		{name: "every hop trusted: the leftmost", proxies: proxies, remote: "10.1.2.3:80", xff: []string{"10.7.7.7, 10.4.5.6"}, want: "10.7.7.7"},
		{name: "garbage hop stops at the last trusted one", proxies: proxies, remote: "10.1.2.3:80", xff: []string{"203.0.113.9, not-an-ip, 10.4.5.6"}, want: "10.4.5.6"},
		{name: "garbage written by the client is never reached", proxies: proxies, remote: "10.1.2.3:80", xff: []string{"<script>, 203.0.113.9"}, want: "203.0.113.9"},
		{name: "empty entries skipped", proxies: proxies, remote: "10.1.2.3:80", xff: []string{" , 203.0.113.9 ,,"}, want: "203.0.113.9"},
		{name: "hop with a port", proxies: proxies, remote: "10.1.2.3:80", xff: []string{"203.0.113.9:5555"}, want: "203.0.113.9"},
		{name: "IPv6 hop, bracketed with port", proxies: proxies, remote: "10.1.2.3:80", xff: []string{"[2001:db8:1::7]:443"}, want: "2001:db8:1::7"},
		{name: "IPv6 hop, bare", proxies: proxies, remote: "10.1.2.3:80", xff: []string{"2001:db8:1::7"}, want: "2001:db8:1::7"},
		{name: "IPv6 trusted proxy", proxies: proxies, remote: "[2001:db8:ffff::1]:80", xff: []string{"198.51.100.20"}, want: "198.51.100.20"},
		{name: "mapped peer matches an IPv4 proxy range", proxies: proxies, remote: "[::ffff:10.1.2.3]:80", xff: []string{"198.51.100.20"}, want: "198.51.100.20"},
		{name: "mapped proxy range configured", proxies: proxies, remote: "172.16.5.5:80", xff: []string{"198.51.100.20"}, want: "198.51.100.20"},
		{name: "mapped client hop is IPv4", proxies: proxies, remote: "10.1.2.3:80", xff: []string{"::ffff:198.51.100.20"}, want: "198.51.100.20"},
		{name: "zone dropped", remote: "[fe80::1%eth0]:80", want: "fe80::1"},
		{name: "unparsable peer", proxies: proxies, remote: "pipe", xff: []string{"203.0.113.9"}, want: ""},
		{name: "empty peer", remote: "", want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.proxies.ClientAddr(tc.remote, tc.xff)
			if tc.want == "" {
				if got.IsValid() {
					t.Errorf("ClientAddr = %v, want the invalid Addr", got)
				}
				return
			}
			if got != netip.MustParseAddr(tc.want) {
				t.Errorf("ClientAddr = %v, want %s", got, tc.want)
			}
		})
	}
}

// TestClientAddrHopBound: a long chain of trusted-looking hops is not walked
// to its end.
func TestClientAddrHopBound(t *testing.T) {
	p := NewProxies([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	xff := "6.6.6.6"
	for range 1000 {
		xff += ", 10.0.0.9"
	}
	if got := p.ClientAddr("10.1.2.3:80", []string{xff}); got != netip.MustParseAddr("10.0.0.9") {
		t.Errorf("ClientAddr = %v, want the last trusted hop walked", got)
	}
}

// FuzzClientAddr: whatever the peer address and the header say, the client
// is the peer unless the peer is a trusted proxy, and otherwise an address
// that the header holds; nothing panics.
func FuzzClientAddr(f *testing.F) {
	f.Add("10.1.2.3:80", "6.6.6.6, 203.0.113.9")
	f.Add("198.51.100.7:1", "10.0.0.1")
	f.Add("[2001:db8::1]:443", "[2001:db8:1::7]:443,, ::ffff:10.9.9.9")
	f.Add("10.0.0.1:1", "10.0.0.2, not-an-ip, 10.0.0.3")
	p := NewProxies([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")})
	f.Fuzz(func(t *testing.T, remote, xff string) {
		got := p.ClientAddr(remote, []string{xff})
		peer := parseHost(remote)
		if !peer.IsValid() || !p.Trusted(peer) {
			if got != peer {
				t.Fatalf("peer %v is not a trusted proxy, yet the client is %v", peer, got)
			}
			return
		}
		if got == peer {
			return
		}
		for _, item := range strings.Split(xff, ",") {
			if parseHost(strings.TrimSpace(item)) == got {
				return
			}
		}
		t.Fatalf("client %v is neither the peer nor in the header %q", got, xff)
	})
}
