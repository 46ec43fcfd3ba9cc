package ratelimit

import (
	"net/netip"
	"strings"
)

// ClientKey returns the bucket key of an address: the address itself for
// IPv4 (IPv4-mapped IPv6 addresses count as IPv4), its /64 for IPv6. The
// zone is dropped. An invalid address gives the zero Prefix, the key shared
// by every client whose address is unknown.
func ClientKey(a netip.Addr) netip.Prefix {
	if !a.IsValid() {
		return netip.Prefix{}
	}
	a = a.Unmap().WithZone("")
	bits := 64
	if a.Is4() {
		bits = 32
	}
	p, _ := a.Prefix(bits)
	return p
}

// maxForwardedHops bounds how many X-Forwarded-For entries ClientAddr walks
// through: a request does not cross more trusted proxies than that.
const maxForwardedHops = 32

// Proxies are the networks of trusted reverse proxies, whose
// X-Forwarded-For header names the client. The zero value trusts none.
type Proxies struct {
	nets []netip.Prefix
}

// NewProxies returns the trusted proxies in nets (masked; IPv4-mapped IPv6
// prefixes are taken as IPv4).
func NewProxies(nets []netip.Prefix) Proxies {
	p := Proxies{nets: make([]netip.Prefix, 0, len(nets))}
	for _, n := range nets {
		if !n.IsValid() {
			continue
		}
		if a := n.Addr(); a.Is4In6() && n.Bits() >= 96 {
			n = netip.PrefixFrom(a.Unmap(), n.Bits()-96)
		}
		p.nets = append(p.nets, n.Masked())
	}
	return p
}

// Trusted reports whether a is the address of a trusted proxy.
func (p Proxies) Trusted(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, n := range p.nets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// ClientAddr returns the address of the client that made a request, given
// the request's peer address (http.Request.RemoteAddr, "ip:port") and its
// X-Forwarded-For header values in order.
//
// The header is used only when the peer is a trusted proxy, and then only as
// far as it was written by trusted proxies: walking from the right (the
// entry the peer appended), the first address that is not a trusted proxy
// is the client. Entries left of it were written by the client and are
// ignored, whatever they say. When every entry is a trusted proxy the
// leftmost is the client. An entry that is not an address stops the walk at
// the last trusted hop, so a broken header never gives a client a bucket of
// its choosing. ClientAddr returns the invalid Addr when remoteAddr is not
// an address.
func (p Proxies) ClientAddr(remoteAddr string, forwardedFor []string) netip.Addr {
	client := parseHost(remoteAddr)
	if !client.IsValid() || len(p.nets) == 0 || len(forwardedFor) == 0 || !p.Trusted(client) {
		return client
	}
	hops := 0
	for i := len(forwardedFor) - 1; i >= 0; i-- {
		list := forwardedFor[i]
		for list != "" {
			var item string
			if j := strings.LastIndexByte(list, ','); j >= 0 {
				list, item = list[:j], list[j+1:]
			} else {
				list, item = "", list
			}
			item = strings.TrimSpace(item)
			if item == "" {
				continue // "a,,b" or a trailing comma
			}
			if hops++; hops > maxForwardedHops {
				return client
			}
			a := parseHost(item)
			if !a.IsValid() {
				return client
			}
			client = a
			if !p.Trusted(a) {
				return client
			}
		}
	}
	return client
}

// parseHost parses "ip", "ip:port" or "[ipv6]:port" and drops the zone and
// any IPv4 mapping.
func parseHost(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone("")
	}
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone("")
	}
	return netip.Addr{}
}

// Empty reports whether no proxy is trusted (X-Forwarded-For is never read).
func (p Proxies) Empty() bool { return len(p.nets) == 0 }
