package egress

import (
	"net/netip"
	"testing"
)

func TestPolicyPermits(t *testing.T) {
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	cases := []struct {
		name   string
		egress Policy
		addr   string
		want   bool
	}{
		{"public v4", Policy{}, "198.51.100.7", true},
		{"reserved 240/4", Policy{}, "240.1.2.3", false},
		{"benchmarking 198.18/15", Policy{}, "198.19.0.1", false},
		{"IETF 192.0.0/24", Policy{}, "192.0.0.8", false},
		{"site-local v6", Policy{}, "fec0::1", false},
		{"NAT64 to a private v4", Policy{}, "64:ff9b::a00:5", false},
		{"NAT64 to a public v4", Policy{}, "64:ff9b::c633:6407", true},
		{"NAT64 to loopback, v4 allowed", Policy{Allow: pfx("127.0.0.1/32")}, "64:ff9b::7f00:1", true},
		{"local-use NAT64", Policy{}, "64:ff9b:1::a00:5", false},
		{"6to4 to a private v4", Policy{}, "2002:a00:5::1", false},
		{"6to4 to a public v4", Policy{}, "2002:c633:6407::1", true},
		{"public v6", Policy{}, "2001:db8::1", true},
		{"loopback", Policy{}, "127.0.0.1", false},
		{"loopback other", Policy{}, "127.3.4.5", false},
		{"loopback v6", Policy{}, "::1", false},
		{"unspecified v4", Policy{}, "0.0.0.0", false},
		{"this network", Policy{}, "0.1.2.3", false},
		{"unspecified v6", Policy{}, "::", false},
		{"link-local v4", Policy{}, "169.254.169.254", false},
		{"link-local v6", Policy{}, "fe80::1", false},
		{"private 10", Policy{}, "10.9.9.9", false},
		{"private 172.16", Policy{}, "172.31.255.255", false},
		{"172.32 is public", Policy{}, "172.32.0.1", true},
		{"private 192.168", Policy{}, "192.168.1.1", false},
		{"unique local", Policy{}, "fd00::2", false},
		{"CGNAT", Policy{}, "100.64.0.1", false},
		{"CGNAT end", Policy{}, "100.127.255.255", false},
		{"100.128 is public", Policy{}, "100.128.0.1", true},
		{"multicast v4", Policy{}, "224.0.0.251", false},
		{"multicast v6", Policy{}, "ff02::fb", false},
		{"broadcast", Policy{}, "255.255.255.255", false},
		{"mapped loopback", Policy{}, "::ffff:127.0.0.1", false},
		{"mapped private", Policy{}, "::ffff:10.0.0.1", false},
		{"mapped public", Policy{}, "::ffff:198.51.100.7", true},
		{"zoned link-local", Policy{}, "fe80::1%eth0", false},

		{"allow one loopback address", Policy{Allow: pfx("127.0.0.1/32")}, "127.0.0.1", true},
		{"allow one: not its neighbour", Policy{Allow: pfx("127.0.0.1/32")}, "127.0.0.2", false},
		{"allow one: mapped too", Policy{Allow: pfx("127.0.0.1/32")}, "::ffff:127.0.0.1", true},
		{"allow mapped prefix", Policy{Allow: pfx("::ffff:127.0.0.1/128")}, "127.0.0.1", true},
		{"allow v6 loopback", Policy{Allow: pfx("::1/128")}, "::1", true},
		{"allow LAN", Policy{Allow: pfx("192.168.1.0/24")}, "192.168.1.20", true},
		{"allow LAN, not the next one", Policy{Allow: pfx("192.168.1.0/24")}, "192.168.2.20", false},
		{"deny public", Policy{Deny: pfx("198.51.100.0/24")}, "198.51.100.7", false},
		{"deny public, rest stays", Policy{Deny: pfx("198.51.100.0/24")}, "198.51.101.7", true},
		{"tie: deny wins", Policy{Allow: pfx("198.51.100.0/24"), Deny: pfx("198.51.100.0/24")}, "198.51.100.7", false},
		{"tie with a default: allow wins", Policy{Allow: pfx("10.0.0.0/8")}, "10.1.1.1", true},
		{"tie with a default and a deny: deny wins", Policy{Allow: pfx("10.0.0.0/8"), Deny: pfx("10.0.0.0/8")}, "10.1.1.1", false},
		{"allow broadcast explicitly", Policy{Allow: pfx("255.255.255.255/32")}, "255.255.255.255", true},
		{"more specific allow inside deny", Policy{Allow: pfx("198.51.100.7/32"), Deny: pfx("198.51.100.0/24")}, "198.51.100.7", true},
		{"more specific deny inside allow", Policy{Allow: pfx("10.0.0.0/16"), Deny: pfx("10.0.9.0/24")}, "10.0.9.9", false},
		{"allow everything still loses to defaults", Policy{Allow: pfx("0.0.0.0/0")}, "127.0.0.1", false},
		{"invalid address", Policy{Allow: pfx("0.0.0.0/0")}, "", false},
	}
	for _, c := range cases {
		var a netip.Addr
		if c.addr != "" {
			a = netip.MustParseAddr(c.addr)
		}
		if got := c.egress.Permits(a); got != c.want {
			t.Errorf("%s: Permits(%s) = %v, want %v", c.name, c.addr, got, c.want)
		}
	}
}

func TestDefaultDenyIsACopy(t *testing.T) {
	d := DefaultDeny()
	d[0] = netip.MustParsePrefix("1.2.3.4/32")
	if !(Policy{}).Permits(netip.MustParseAddr("1.2.3.4")) || (Policy{}).Permits(netip.MustParseAddr("0.0.0.1")) {
		t.Fatal("changing DefaultDeny's result changed the policy")
	}
}
