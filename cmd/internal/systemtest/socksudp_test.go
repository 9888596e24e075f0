package systemtest

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/wgbore/wgbore/proxy/socksclient"
)

// socksUDPClient is the client side of an RFC 1928 UDP association.
type socksUDPClient struct {
	ctrl  net.Conn
	relay netip.AddrPort // the server's relay socket, from its reply
	sock  *net.UDPConn
}

func socksAssociate(t *testing.T, proxyAddr string) *socksUDPClient {
	t.Helper()
	ctrl, err := net.DialTimeout("tcp", proxyAddr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctrl.Close() })
	ctrl.SetDeadline(time.Now().Add(20 * time.Second))
	// DST 0.0.0.0:0: "I will send from an address I do not know yet".
	relay, err := socksclient.Associate(ctrl, socksclient.Auth{}, netip.AddrPort{})
	if err != nil {
		t.Fatalf("UDP ASSOCIATE: %v", err)
	}
	ctrl.SetDeadline(time.Time{})
	c := &socksUDPClient{ctrl: ctrl, relay: relay}
	c.sock, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.sock.Close() })
	return c
}

func (c *socksUDPClient) send(t *testing.T, from *net.UDPConn, dst netip.AddrPort, payload []byte) {
	t.Helper()
	if _, err := from.WriteToUDPAddrPort(socksclient.AppendDatagram(nil, dst, payload), c.relay); err != nil {
		t.Fatal(err)
	}
}

// socksRecv reads one datagram on sock and strips its header; ok is
// false on timeout or a malformed datagram.
func socksRecv(sock *net.UDPConn, wait time.Duration) (src netip.AddrPort, payload []byte, ok bool) {
	buf := make([]byte, 65536)
	sock.SetReadDeadline(time.Now().Add(wait))
	n, err := sock.Read(buf)
	if err != nil {
		return netip.AddrPort{}, nil, false
	}
	src, payload, err = socksclient.ParseDatagram(buf[:n])
	return src, payload, err == nil && src.IsValid()
}

// exchange sends payload to dst through the relay and waits for one
// answer, retrying a few times: UDP may lose the first datagram while
// the tunnel's first handshake is in flight.
func (c *socksUDPClient) exchange(t *testing.T, dst netip.AddrPort, payload []byte) (netip.AddrPort, []byte) {
	t.Helper()
	for range 10 {
		c.send(t, c.sock, dst, payload)
		if src, got, ok := socksRecv(c.sock, 2*time.Second); ok {
			return src, got
		}
	}
	t.Fatalf("no answer from %v through the SOCKS5 UDP relay %v", dst, c.relay)
	return netip.AddrPort{}, nil
}

func dnsQuery(t *testing.T, name string) []byte {
	t.Helper()
	q := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x5eed, RecursionDesired: true})
	q.StartQuestions()
	q.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	b, err := q.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func dnsAnswerA(t *testing.T, resp []byte) []netip.Addr {
	t.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("DNS answer: %v", err)
	}
	var out []netip.Addr
	for _, rr := range m.Answers {
		if a, ok := rr.Body.(*dnsmessage.AResource); ok {
			out = append(out, netip.AddrFrom4(a.A))
		}
	}
	return out
}
