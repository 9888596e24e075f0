package egress

import (
	"net"
	"net/netip"
)

// Policy is server mode's rule for where peers' flows may go on the
// host's network.
//
// The default is the one a shared exit node needs: public unicast
// destinations are allowed, and everything that reaches the host itself or
// the networks behind it (loopback, link-local, private, CGNAT) is denied,
// so a peer cannot use the server to reach services the operator never
// meant to publish. Allow opens such ranges one by one; Deny closes public
// ones.
type Policy struct {
	Allow, Deny []netip.Prefix
	// HostAddresses are addresses of the host itself that it cannot see
	// on its interfaces, such as a cloud's 1:1 NAT public address. A flow
	// to one, or to any address on the host's interfaces, is a flow to
	// the host itself: refused unless an Allow prefix names it.
	HostAddresses []netip.Addr
}

// defaultDeny is built once; DefaultDeny hands out copies.
var defaultDeny = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network", including 0.0.0.0
	netip.MustParsePrefix("10.0.0.0/8"),     // private (RFC 1918)
	netip.MustParsePrefix("100.64.0.0/10"),  // carrier-grade NAT (RFC 6598)
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback
	netip.MustParsePrefix("169.254.0.0/16"), // link-local, cloud metadata services
	netip.MustParsePrefix("172.16.0.0/12"),  // private
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments (RFC 6890)
	netip.MustParsePrefix("192.168.0.0/16"), // private
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking, often lab networks (RFC 2544)
	netip.MustParsePrefix("224.0.0.0/4"),    // multicast
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, with limited broadcast
	netip.MustParsePrefix("::/128"),         // unspecified
	netip.MustParsePrefix("::1/128"),        // loopback
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64 (RFC 8215)
	netip.MustParsePrefix("fc00::/7"),       // unique local
	netip.MustParsePrefix("fec0::/10"),      // site-local, deprecated but still routed in places
	netip.MustParsePrefix("fe80::/10"),      // link-local
	netip.MustParsePrefix("ff00::/8"),       // multicast
}

// DefaultDeny returns the ranges Permits denies unless Allow opens them.
// IPv4-mapped IPv6 addresses (::ffff:0:0/96) are not listed: Permits
// judges them as the IPv4 address they carry. NAT64 (64:ff9b::/96) and
// 6to4 (2002::/16) addresses are not listed either: they pass only where
// the IPv4 address they carry would.
func DefaultDeny() []netip.Prefix {
	return append([]netip.Prefix(nil), defaultDeny...)
}

// Permits reports whether a flow to a may leave through the host. The
// most specific prefix that contains a, among Allow, Deny and the default
// denies, decides. On a tie between Allow and Deny, Deny wins, so an
// operator's contradiction errs on the closed side; on a tie between Allow
// and a default deny, Allow wins, because the operator said so explicitly
// and ::1/128 or 10.0.0.0/8 could not be opened otherwise. Allow
// 127.0.0.1/32 thus opens exactly the host's 127.0.0.1 and nothing else
// of 127.0.0.0/8.
//
// An IPv4-mapped IPv6 address is judged as its IPv4 address: a host
// socket dialled to ::ffff:127.0.0.1 reaches 127.0.0.1, and the policy
// must not be dodged by spelling the address differently. A zone is
// ignored for the same reason.
func (e Policy) Permits(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap().WithZone("")
	// A NAT64 or 6to4 address is a way to an IPv4 address; it may lead
	// only where that IPv4 address may.
	if v4, ok := embeddedIPv4(a); ok && !e.Permits(v4) {
		return false
	}
	// Later lists win ties: defaults, then Allow, then Deny.
	bestBits, allowed := -1, true
	consider := func(prefixes []netip.Prefix, allow bool) {
		for _, p := range prefixes {
			p = unmapPrefix(p)
			if p.IsValid() && p.Contains(a) && p.Bits() >= bestBits {
				bestBits, allowed = p.Bits(), allow
			}
		}
	}
	consider(defaultDeny, false)
	consider(e.Allow, true)
	consider(e.Deny, false)
	return allowed
}

var (
	nat64Prefix = netip.MustParsePrefix("64:ff9b::/96") // well-known NAT64 (RFC 6052)
	sixToFour   = netip.MustParsePrefix("2002::/16")    // 6to4 (RFC 3056)
)

// embeddedIPv4 returns the IPv4 address a NAT64 or 6to4 address carries.
func embeddedIPv4(a netip.Addr) (netip.Addr, bool) {
	b := a.As16()
	switch {
	case !a.Is6():
		return netip.Addr{}, false
	case nat64Prefix.Contains(a):
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), true
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), true
	}
	return netip.Addr{}, false
}

// AllowsExplicitly reports whether one of the operator's Allow prefixes
// contains a. Server mode uses it for flows that turn out to reach the
// host itself through one of its own addresses, which no prefix list can
// know in advance: those go through only where the operator opened them.
func (e Policy) AllowsExplicitly(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, p := range e.Allow {
		if p = unmapPrefix(p); p.IsValid() && p.Contains(a) {
			return true
		}
	}
	return false
}

// reachesHostItself reports whether a connected socket's far end is this
// host: Linux (and the BSDs) take the destination itself as the source
// address of a socket to a local address, so equal ends mean a local
// service, whichever of the host's addresses was dialled.
func reachesHostItself(c net.Conn) bool {
	local, lok := addrOf(c.LocalAddr())
	remote, rok := addrOf(c.RemoteAddr())
	return lok && rok && local == remote
}

func addrOf(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), ok
	case *net.UDPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), ok
	}
	return netip.Addr{}, false
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix (::ffff:10.0.0.0/104) into
// the IPv4 prefix it means (10.0.0.0/8), so it matches the unmapped
// addresses Permits compares with. A mapped prefix shorter than /96 also
// covers non-mapped IPv6 and is left as it is.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked()
	}
	return p
}
