package dnsserver

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// These tests run the DNS server in our Net, asked by a wireguard-go
// client through the tunnel; dnsserver_test.go tests Answer alone.

// startTunnel opens our Net on 127.0.0.1, with OurV4 and OurV6, and a
// wireguard-go client of it as its one peer.
func startTunnel(t testing.TB) (*netstack.Net, *peersite.Client) {
	t.Helper()
	ours, _ := protocol.GeneratePrivateKey()
	theirs, _ := protocol.GeneratePrivateKey()
	loopback := netip.MustParseAddr("127.0.0.1")
	n, err := netstack.Open(context.Background(), netstack.Config{
		PrivateKey:  ours,
		Addresses:   []netip.Prefix{netip.PrefixFrom(peersite.OurV4, 32), netip.PrefixFrom(peersite.OurV6, 128)},
		ListenAddrs: []netip.Addr{loopback},
		Peers: []protocol.PeerConfig{{PublicKey: theirs.PublicKey(),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(peersite.TheirV4, 32), netip.PrefixFrom(peersite.TheirV6, 128)}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	client := peersite.StartClient(t, ours.PublicKey(), peersite.Options{
		PrivateKey: theirs, Endpoint: netip.AddrPortFrom(loopback, n.LocalPort()).String()})
	return n, client
}

var otherAddr = netip.MustParseAddr("198.51.100.9")

// countingUpstream is a DNS resolver on the host's 127.0.0.1, UDP and TCP on
// one port: it knows other.example. and says NXDOMAIN to the rest.
type countingUpstream struct {
	addr     netip.AddrPort
	udp, tcp atomic.Int32
}

func startCountingUpstream(t testing.TB) *countingUpstream {
	t.Helper()
	u := &countingUpstream{}
	var l net.Listener
	var pc net.PacketConn
	for try := 0; ; try++ {
		var err error
		if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if pc, err = net.ListenPacket("udp", l.Addr().String()); err == nil {
			break
		}
		l.Close()
		if try == 10 {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { l.Close(); pc.Close() })
	u.addr = netip.MustParseAddrPort(l.Addr().String())
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			u.udp.Add(1)
			if resp := countingAnswer(buf[:n]); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var n [2]byte
				if _, err := io.ReadFull(c, n[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(n[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				u.tcp.Add(1)
				if resp := countingAnswer(q); resp != nil {
					c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(resp))))
					c.Write(resp)
				}
			}()
		}
	}()
	return u
}

func countingAnswer(q []byte) []byte {
	var m dnsmessage.Message
	if err := m.Unpack(q); err != nil || len(m.Questions) != 1 {
		return nil
	}
	m.Response = true
	if strings.EqualFold(m.Questions[0].Name.String(), "other.example.") {
		if m.Questions[0].Type == dnsmessage.TypeA {
			m.Answers = []dnsmessage.Resource{{
				Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 30},
				Body:   &dnsmessage.AResource{A: otherAddr.As4()},
			}}
		}
	} else {
		m.RCode = dnsmessage.RCodeNameError
	}
	out, _ := m.Pack()
	return out
}

// exchange asks server over network ("udp" or "tcp") through dial.
func exchange(t testing.TB, dial func(ctx context.Context, network, address string) (net.Conn, error), network string, server netip.AddrPort, query []byte) *dnsmessage.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := dial(ctx, network, server.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var resp []byte
	if network == "tcp" {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(query))), query...))
		var n [2]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			t.Fatal(err)
		}
		resp = make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(c, resp); err != nil {
			t.Fatal(err)
		}
	} else {
		// The first datagram may wait for the handshake; ask again.
		buf := make([]byte, 65535)
		for try := 0; resp == nil; try++ {
			c.Write(query)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := c.Read(buf)
			if err == nil {
				resp = buf[:n]
			} else if try == 5 {
				t.Fatal(err)
			}
		}
	}
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		t.Fatal(err)
	}
	return &m
}

func answerAddrs(m *dnsmessage.Message) []netip.Addr {
	var out []netip.Addr
	for _, a := range m.Answers {
		switch b := a.Body.(type) {
		case *dnsmessage.AResource:
			out = append(out, netip.AddrFrom4(b.A))
		case *dnsmessage.AAAAResource:
			out = append(out, netip.AddrFrom16(b.AAAA))
		}
	}
	return out
}

// TestDNSServerThroughTunnel: a wireguard-go client asks our tunnel
// address, over UDP and TCP, for a local record and for a name the server
// forwards to a resolver on the host's 127.0.0.1.
func TestDNSServerThroughTunnel(t *testing.T) {
	n, client := startTunnel(t)
	up := startCountingUpstream(t)
	demoV6 := netip.MustParseAddr("fd00::1")
	d, err := Serve(n, Config{
		Records:  map[string][]netip.Addr{"Demo.WG": {peersite.OurV4, demoV6}},
		Upstream: []netip.AddrPort{up.addr},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	server := netip.AddrPortFrom(peersite.OurV4, 53)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			m := exchange(t, client.DialContext, network, server, dnsQuestion(t, 1, "demo.wg.", dnsmessage.TypeA))
			if m.ID != 1 || !m.Response || !m.Authoritative || m.RCode != dnsmessage.RCodeSuccess || !slices.Equal(answerAddrs(m), []netip.Addr{peersite.OurV4}) {
				t.Errorf("demo.wg A: %+v", m)
			}
			m = exchange(t, client.DialContext, network, server, dnsQuestion(t, 2, "DEMO.wg.", dnsmessage.TypeAAAA))
			if m.ID != 2 || !slices.Equal(answerAddrs(m), []netip.Addr{demoV6}) {
				t.Errorf("demo.wg AAAA: %+v", m)
			}
			m = exchange(t, client.DialContext, network, server, dnsQuestion(t, 3, "other.example.", dnsmessage.TypeA))
			if m.ID != 3 || m.RCode != dnsmessage.RCodeSuccess || !slices.Equal(answerAddrs(m), []netip.Addr{otherAddr}) {
				t.Errorf("other.example A, forwarded: %+v", m)
			}
			m = exchange(t, client.DialContext, network, server, dnsQuestion(t, 4, "nowhere.example.", dnsmessage.TypeA))
			if m.ID != 4 || m.RCode != dnsmessage.RCodeNameError {
				t.Errorf("nowhere.example, forwarded: %+v", m)
			}
		})
	}
	if up.udp.Load() == 0 || up.tcp.Load() == 0 {
		t.Errorf("upstream asked %d times over UDP and %d over TCP; want both", up.udp.Load(), up.tcp.Load())
	}
	// Over IPv6 too: the server listens on every tunnel address.
	m := exchange(t, client.DialContext, "udp", netip.AddrPortFrom(peersite.OurV6, 53), dnsQuestion(t, 5, "demo.wg.", dnsmessage.TypeA))
	if !slices.Equal(answerAddrs(m), []netip.Addr{peersite.OurV4}) {
		t.Errorf("over IPv6: %+v", m)
	}
}

// TestDNSServerStopsWithNet: the Net's Close stops the DNS server and
// waits for it; the server's own Close afterwards is harmless.
func TestDNSServerStopsWithNet(t *testing.T) {
	n, _ := startTunnel(t)
	d, err := Serve(n, Config{Upstream: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	// Close waits for the server's goroutines to say they are done; the
	// last of them may still be returning from its deferred Done, so a
	// moment is allowed for it to vanish.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var alive []string
		for _, g := range peersite.Goroutines() {
			if strings.Contains(g, "dnsserver.(*Server)") {
				alive = append(alive, g)
			}
		}
		if len(alive) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("DNS server goroutines alive 5 s after Net.Close:\n%s", strings.Join(alive, "\n\n"))
		}
	}
	d.Close()
	if _, err := Serve(n, Config{}); err == nil {
		t.Error("Serve on a closed Net succeeded")
	}
}

func TestDNSServerOpcodes(t *testing.T) {
	d := newServer(Config{Upstream: []netip.AddrPort{closedLoopbackPort(t)}})
	defer d.Close()
	q := dnsQuestion(t, 3, "demo.wg.", dnsmessage.TypeA)
	q[2] |= 2 << 3 // opcode 2, STATUS
	h, _ := parseDNSAnswer(t, d.Answer(context.Background(), q, false))
	if h.RCode != dnsmessage.RCodeNotImplemented || h.ID != 3 {
		t.Fatalf("%+v, want NOTIMP", h)
	}
}
