package main

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// socksUDPClient speaks RFC 1928's UDP ASSOCIATE from the client side,
// written from the RFC rather than taken from a library, so the test does
// not share assumptions with the server's code.
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
	// Greeting: version 5, one method, no authentication.
	ctrl.Write([]byte{5, 1, 0})
	var choice [2]byte
	if _, err := io.ReadFull(ctrl, choice[:]); err != nil || choice != [2]byte{5, 0} {
		t.Fatalf("greeting: %v %v", choice, err)
	}
	// UDP ASSOCIATE with DST 0.0.0.0:0: "I will send from an address I
	// do not know yet".
	ctrl.Write([]byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0})
	var head [4]byte
	if _, err := io.ReadFull(ctrl, head[:]); err != nil {
		t.Fatal(err)
	}
	if head[1] != 0 {
		t.Fatalf("UDP ASSOCIATE refused with reply code %d", head[1])
	}
	var ip []byte
	switch head[3] {
	case 1:
		ip = make([]byte, 4)
	case 4:
		ip = make([]byte, 16)
	default:
		t.Fatalf("reply address type %d", head[3])
	}
	var port [2]byte
	io.ReadFull(ctrl, ip)
	if _, err := io.ReadFull(ctrl, port[:]); err != nil {
		t.Fatal(err)
	}
	ctrl.SetDeadline(time.Time{})
	a, _ := netip.AddrFromSlice(ip)
	c := &socksUDPClient{ctrl: ctrl, relay: netip.AddrPortFrom(a, binary.BigEndian.Uint16(port[:]))}
	c.sock, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.sock.Close() })
	return c
}

// datagram wraps payload in the RFC 1928 UDP request header.
func socksDatagram(dst netip.AddrPort, payload []byte) []byte {
	b := []byte{0, 0, 0} // RSV, FRAG 0
	if dst.Addr().Is4() {
		b = append(b, 1)
	} else {
		b = append(b, 4)
	}
	b = append(b, dst.Addr().AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	return append(b, payload...)
}

func (c *socksUDPClient) send(t *testing.T, from *net.UDPConn, dst netip.AddrPort, payload []byte) {
	t.Helper()
	if _, err := from.WriteToUDPAddrPort(socksDatagram(dst, payload), c.relay); err != nil {
		t.Fatal(err)
	}
}

// recv reads one datagram on sock and strips its header; ok is false on
// timeout.
func socksRecv(sock *net.UDPConn, wait time.Duration) (src netip.AddrPort, payload []byte, ok bool) {
	buf := make([]byte, 65536)
	sock.SetReadDeadline(time.Now().Add(wait))
	n, err := sock.Read(buf)
	if err != nil || n < 10 {
		return netip.AddrPort{}, nil, false
	}
	var alen int
	switch buf[3] {
	case 1:
		alen = 4
	case 4:
		alen = 16
	default:
		return netip.AddrPort{}, nil, false
	}
	if n < 4+alen+2 {
		return netip.AddrPort{}, nil, false
	}
	a, _ := netip.AddrFromSlice(buf[4 : 4+alen])
	port := binary.BigEndian.Uint16(buf[4+alen:])
	return netip.AddrPortFrom(a, port), buf[4+alen+2 : n], true
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
