package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// openOursWith opens our Net with the peer site as its one peer and the
// site's DNS server, giving change a chance to alter the Config first.
func openOursWith(t testing.TB, key protocol.PrivateKey, site *peersite.Site, change func(*Config)) *Net {
	t.Helper()
	cfg := Config{
		PrivateKey:  key,
		Addresses:   []netip.Prefix{netip.PrefixFrom(peersite.OurV4, 32), netip.PrefixFrom(peersite.OurV6, 128)},
		ListenAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Peers: []protocol.PeerConfig{{
			PublicKey:  site.PublicKey,
			Endpoint:   site.Endpoint(),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(peersite.TheirV4, 32), netip.PrefixFrom(peersite.TheirV6, 128)},
		}},
		DNS: []netip.Addr{peersite.TheirV4},
	}
	if change != nil {
		change(&cfg)
	}
	n, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func TestLookupThroughTunnel(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	dns := site.DNS
	n := openOursWith(t, key, site, func(c *Config) { c.DNSSearch = []string{"tunnel.test"} })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("host", func(t *testing.T) {
		got, err := n.LookupHost(ctx, "web.tunnel.test")
		if err != nil {
			t.Fatal(err)
		}
		// IPv6 first: we have an IPv6 address (Config.Prefer's default).
		if want := []string{"fd00::2", "10.0.0.2"}; !slices.Equal(got, want) {
			t.Fatalf("LookupHost = %v, want %v", got, want)
		}
	})
	t.Run("families", func(t *testing.T) {
		for _, c := range []struct {
			network, host string
			want          []netip.Addr
		}{
			{"ip4", "web.tunnel.test", []netip.Addr{peersite.TheirV4}},
			{"ip6", "web.tunnel.test", []netip.Addr{peersite.TheirV6}},
			{"ip", "v4only.tunnel.test", []netip.Addr{peersite.TheirV4}},
			{"ip", "WEB.Tunnel.Test.", []netip.Addr{peersite.TheirV6, peersite.TheirV4}},
			{"ip", "10.1.2.3", []netip.Addr{netip.MustParseAddr("10.1.2.3")}},
			{"ip6", "fd00::7", []netip.Addr{netip.MustParseAddr("fd00::7")}},
		} {
			got, err := n.LookupNetIP(ctx, c.network, c.host)
			if err != nil || !slices.Equal(got, c.want) {
				t.Errorf("LookupNetIP(%s, %s) = %v, %v; want %v", c.network, c.host, got, err, c.want)
			}
		}
	})
	t.Run("tcp-fallback", func(t *testing.T) {
		before := dns.TCPQueries.Load()
		got, err := n.LookupNetIP(ctx, "ip4", "big.tunnel.test")
		if err != nil {
			t.Fatal(err)
		}
		if want := peersite.Records("big.tunnel.test"); !slices.Equal(got, want) {
			t.Fatalf("got %d addresses %v, want the %d of big.tunnel.test", len(got), got, len(want))
		}
		if dns.TCPQueries.Load() == before {
			t.Fatal("the truncated UDP answer did not lead to a TCP query")
		}
	})
	t.Run("search", func(t *testing.T) {
		got, err := n.LookupNetIP(ctx, "ip", "web")
		if err != nil {
			t.Fatal(err)
		}
		if want := []netip.Addr{peersite.TheirV6, peersite.TheirV4}; !slices.Equal(got, want) {
			t.Fatalf("web = %v, want %v", got, want)
		}
		// A name without dots tries the search list before itself, so a
		// hit there asks for nothing else.
		asked := dns.Asked()
		if last := asked[len(asked)-1]; last != "web.tunnel.test." || slices.Contains(asked, "web.") {
			t.Fatalf("asked %v; want web.tunnel.test. and never web.", asked)
		}
	})
	t.Run("nxdomain", func(t *testing.T) {
		for _, host := range []string{"nope.tunnel.test", "localhost"} {
			_, err := n.LookupHost(ctx, host)
			var de *net.DNSError
			if !errors.As(err, &de) || !de.IsNotFound || de.IsTimeout || de.Name != host {
				t.Errorf("LookupHost(%s) error = %#v, want a not-found *net.DNSError", host, err)
			}
		}
		// localhost is nobody's special case: the tunnel's server was
		// asked, with the search domain first.
		if asked := dns.Asked(); !slices.Contains(asked, "localhost.tunnel.test.") || !slices.Contains(asked, "localhost.") {
			t.Errorf("asked %v; want localhost.tunnel.test. and localhost.", asked)
		}
		_, err := n.LookupNetIP(ctx, "ip6", "v4only.tunnel.test")
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsNotFound {
			t.Errorf("AAAA of v4only = %v, want not found", err)
		}
	})
}

func TestLookupErrors(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})

	t.Run("no-servers", func(t *testing.T) {
		n := openOursWith(t, key, site, func(c *Config) { c.DNS = nil })
		_, err := n.LookupHost(context.Background(), "web.tunnel.test")
		var de *net.DNSError
		if !errors.As(err, &de) || !strings.Contains(de.Err, "no DNS servers") {
			t.Fatalf("err = %v, want no DNS servers configured", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		// 10.0.0.99 is routed to the peer, whose stack has no such
		// address and drops the queries without a word (a closed port
		// on a real address may draw an ICMP error instead, which
		// gVisor sometimes reports as "refused").
		blackhole := netip.MustParseAddr("10.0.0.99")
		n := openOursWith(t, key, site, func(c *Config) {
			c.DNS = []netip.Addr{blackhole}
			c.Peers[0].AllowedIPs = append(c.Peers[0].AllowedIPs, netip.PrefixFrom(blackhole, 32))
		})
		r := *n.dns
		r.timeout = 200 * time.Millisecond
		_, err := r.lookup(context.Background(), "ip4", "web.tunnel.test")
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsTimeout || de.IsNotFound {
			t.Fatalf("err = %#v, want a timeout *net.DNSError", err)
		}
	})
	t.Run("no-route-to-server", func(t *testing.T) {
		n := openOursWith(t, key, site, func(c *Config) { c.DNS = []netip.Addr{netip.MustParseAddr("10.9.9.9")} })
		_, err := n.LookupHost(context.Background(), "web.tunnel.test")
		var de *net.DNSError
		if !errors.As(err, &de) || de.IsNotFound || !strings.Contains(err.Error(), "not in any peer's AllowedIPs") {
			t.Fatalf("err = %v, want a DNS error saying the server has no route", err)
		}
	})
	t.Run("second-server-answers", func(t *testing.T) {
		n := openOursWith(t, key, site, func(c *Config) { c.DNS = []netip.Addr{netip.MustParseAddr("10.9.9.9"), peersite.TheirV4} })
		if _, err := n.LookupHost(context.Background(), "web.tunnel.test"); err != nil {
			t.Fatal(err)
		}
	})
}
