package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/wgbore/wgbore/protocol"
)

// bigCount A records answer big.tunnel.test: more than fit in 512 bytes.
const bigCount = 60

// siteDNS is a tiny authoritative DNS server for tunnel.test, running in
// the wireguard-go peer's netstack on theirV4:53, over UDP and TCP.
type siteDNS struct {
	udpQueries, tcpQueries atomic.Int32
	mu                     sync.Mutex
	asked                  []string // question names, in arrival order
}

// records are the zone: name to A and AAAA addresses.
var records = map[string][]netip.Addr{
	"web.tunnel.test.":    {theirV4, theirV6},
	"v4only.tunnel.test.": {theirV4},
	// slow6 has an IPv6 address that routes to the peer but is not
	// served there, so an IPv6 dial hangs until Happy Eyeballs falls
	// back to IPv4.
	"slow6.tunnel.test.": {netip.MustParseAddr("fd00::99"), theirV4},
	// gone6 has an IPv6 address no peer routes: the IPv6 dial fails at
	// once and IPv4 must start without waiting.
	"gone6.tunnel.test.": {netip.MustParseAddr("fd99::1"), theirV4},
}

func init() {
	var big []netip.Addr
	for i := range bigCount {
		big = append(big, netip.AddrFrom4([4]byte{10, 0, 1, byte(i + 1)}))
	}
	records["big.tunnel.test."] = big
}

func startSiteDNS(t *testing.T, site *peerSite) *siteDNS {
	t.Helper()
	d := &siteDNS{}
	uc, err := site.tnet.ListenUDPAddrPort(netip.AddrPortFrom(theirV4, 53))
	if err != nil {
		t.Fatal(err)
	}
	tl, err := site.tnet.ListenTCPAddrPort(netip.AddrPortFrom(theirV4, 53))
	if err != nil {
		t.Fatal(err)
	}
	site.track(uc)
	site.track(tl)
	site.serve(func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			d.udpQueries.Add(1)
			if resp := d.answer(buf[:n], false); resp != nil {
				uc.WriteTo(resp, from)
			}
		}
	})
	site.serve(func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			site.track(c)
			site.serve(func() {
				defer c.Close()
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				req := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, req); err != nil {
					return
				}
				d.tcpQueries.Add(1)
				resp := d.answer(req, true)
				if resp == nil {
					return
				}
				c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...))
			})
		}
	})
	return d
}

// answer builds the response to req. Over UDP, big.tunnel.test gets an
// empty answer with TC set, so only TCP can resolve it.
func (d *siteDNS) answer(req []byte, overTCP bool) []byte {
	var m dnsmessage.Message
	if err := m.Unpack(req); err != nil || len(m.Questions) != 1 {
		return nil
	}
	q := m.Questions[0]
	name := strings.ToLower(q.Name.String())
	d.mu.Lock()
	d.asked = append(d.asked, name)
	d.mu.Unlock()
	resp := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: m.ID, Response: true, Authoritative: true, RecursionDesired: m.RecursionDesired},
		Questions: m.Questions,
	}
	addrs, ok := records[name]
	switch {
	case !ok:
		resp.RCode = dnsmessage.RCodeNameError
	case name == "big.tunnel.test." && !overTCP:
		resp.Truncated = true
	default:
		for _, a := range addrs {
			h := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
			switch {
			case a.Is4() && q.Type == dnsmessage.TypeA:
				h.Type = dnsmessage.TypeA
				resp.Answers = append(resp.Answers, dnsmessage.Resource{Header: h, Body: &dnsmessage.AResource{A: a.As4()}})
			case a.Is6() && q.Type == dnsmessage.TypeAAAA:
				h.Type = dnsmessage.TypeAAAA
				resp.Answers = append(resp.Answers, dnsmessage.Resource{Header: h, Body: &dnsmessage.AAAAResource{AAAA: a.As16()}})
			}
		}
	}
	out, err := resp.Pack()
	if err != nil {
		return nil
	}
	return out
}

func (d *siteDNS) askedNames() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.asked)
}

// openOursWith opens our Net with the peer site as its one peer and the
// site's DNS server, giving change a chance to alter the Config first.
func openOursWith(t testing.TB, key protocol.PrivateKey, site *peerSite, change func(*Config)) *Net {
	t.Helper()
	cfg := Config{
		PrivateKey:  key,
		Addresses:   []netip.Prefix{netip.PrefixFrom(ourV4, 32), netip.PrefixFrom(ourV6, 128)},
		ListenAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Peers: []protocol.PeerConfig{{
			PublicKey:  site.key.PublicKey(),
			Endpoint:   fmt.Sprintf("127.0.0.1:%d", site.port),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(theirV4, 32), netip.PrefixFrom(theirV6, 128)},
		}},
		DNS: []netip.Addr{theirV4},
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
	site := startPeerSite(t, key.PublicKey())
	dns := startSiteDNS(t, site)
	n := openOursWith(t, key, site, func(c *Config) { c.DNSSearch = []string{"tunnel.test"} })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("host", func(t *testing.T) {
		got, err := n.LookupHost(ctx, "web.tunnel.test")
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"10.0.0.2", "fd00::2"}; !slices.Equal(got, want) {
			t.Fatalf("LookupHost = %v, want %v", got, want)
		}
	})
	t.Run("families", func(t *testing.T) {
		for _, c := range []struct {
			network, host string
			want          []netip.Addr
		}{
			{"ip4", "web.tunnel.test", []netip.Addr{theirV4}},
			{"ip6", "web.tunnel.test", []netip.Addr{theirV6}},
			{"ip", "v4only.tunnel.test", []netip.Addr{theirV4}},
			{"ip", "WEB.Tunnel.Test.", []netip.Addr{theirV4, theirV6}},
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
		before := dns.tcpQueries.Load()
		got, err := n.LookupNetIP(ctx, "ip4", "big.tunnel.test")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != bigCount || !slices.Equal(got, records["big.tunnel.test."]) {
			t.Fatalf("got %d addresses %v, want the %d of big.tunnel.test", len(got), got, bigCount)
		}
		if dns.tcpQueries.Load() == before {
			t.Fatal("the truncated UDP answer did not lead to a TCP query")
		}
	})
	t.Run("search", func(t *testing.T) {
		got, err := n.LookupNetIP(ctx, "ip", "web")
		if err != nil {
			t.Fatal(err)
		}
		if want := []netip.Addr{theirV4, theirV6}; !slices.Equal(got, want) {
			t.Fatalf("web = %v, want %v", got, want)
		}
		// A name without dots tries the search list before itself, so a
		// hit there asks for nothing else.
		asked := dns.askedNames()
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
		if asked := dns.askedNames(); !slices.Contains(asked, "localhost.tunnel.test.") || !slices.Contains(asked, "localhost.") {
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
	site := startPeerSite(t, key.PublicKey())
	startSiteDNS(t, site)

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
		n := openOursWith(t, key, site, func(c *Config) { c.DNS = []netip.Addr{netip.MustParseAddr("10.9.9.9"), theirV4} })
		if _, err := n.LookupHost(context.Background(), "web.tunnel.test"); err != nil {
			t.Fatal(err)
		}
	})
}
