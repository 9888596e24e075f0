package dnsserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/wgbore/wgbore/protocol"
)

func dnsQuestion(t testing.TB, id uint16, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET})
	out, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func parseDNSAnswer(t testing.TB, resp []byte) (dnsmessage.Header, []netip.Addr) {
	t.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("answer does not parse: %v", err)
	}
	return m.Header, answerAddrs(&m)
}

// fakeUpstream is a resolver on 127.0.0.1 that answers every query with
// the documentation address 198.51.100.53, over UDP and TCP, standing for
// the host's resolver.
func fakeUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	// The TCP port must equal the UDP one, which the kernel picked
	// without regard to TCP: when another test holds that TCP port, try
	// another UDP port.
	var (
		pc  net.PacketConn
		l   net.Listener
		ap  netip.AddrPort
		err error
	)
	for try := 0; ; try++ {
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ap = pc.LocalAddr().(*net.UDPAddr).AddrPort()
		if l, err = net.Listen("tcp", ap.String()); err == nil {
			break
		}
		pc.Close()
		if try == 20 {
			t.Fatal(err)
		}
	}
	answer := func(q []byte) []byte {
		var p dnsmessage.Parser
		h, err := p.Start(q)
		if err != nil {
			return nil
		}
		question, _ := p.Question()
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true})
		b.StartQuestions()
		b.Question(question)
		b.StartAnswers()
		b.AResource(dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: 1},
			dnsmessage.AResource{A: [4]byte{198, 51, 100, 53}})
		out, _ := b.Finish()
		return out
	}
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(answer(buf[:n]), from)
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			var n [2]byte
			io.ReadFull(c, n[:])
			q := make([]byte, binary.BigEndian.Uint16(n[:]))
			io.ReadFull(c, q)
			resp := answer(q)
			c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...))
			c.Close()
		}
	}()
	t.Cleanup(func() { pc.Close(); l.Close(); <-done; <-done })
	return ap
}

func TestDNSServerAnswer(t *testing.T) {
	up := fakeUpstream(t)
	d := &Server{
		records:  map[string][]netip.Addr{"demo.wg.": {netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}},
		upstream: []netip.AddrPort{up},
		dial:     (&net.Dialer{}).DialContext,
	}
	d.log = slog.New(slog.DiscardHandler)
	ctx := context.Background()
	for _, overTCP := range []bool{false, true} {
		h, got := parseDNSAnswer(t, d.Answer(ctx, dnsQuestion(t, 7, "Demo.WG.", dnsmessage.TypeA), overTCP))
		if h.ID != 7 || !h.Authoritative || h.RCode != dnsmessage.RCodeSuccess || len(got) != 1 || got[0] != netip.MustParseAddr("10.0.0.1") {
			t.Fatalf("local A (tcp %v): %+v %v", overTCP, h, got)
		}
		_, got = parseDNSAnswer(t, d.Answer(ctx, dnsQuestion(t, 8, "demo.wg.", dnsmessage.TypeAAAA), overTCP))
		if len(got) != 1 || got[0] != netip.MustParseAddr("fd00::1") {
			t.Fatalf("local AAAA (tcp %v): %v", overTCP, got)
		}
		// Another name goes to the upstream, over the same transport.
		h, got = parseDNSAnswer(t, d.Answer(ctx, dnsQuestion(t, 9, "elsewhere.example.", dnsmessage.TypeA), overTCP))
		if h.ID != 9 || len(got) != 1 || got[0] != netip.MustParseAddr("198.51.100.53") {
			t.Fatalf("forwarded (tcp %v): %+v %v", overTCP, h, got)
		}
	}

	// An upstream that sends back anything but a response to the query
	// (here, the query itself) is not believed.
	echo, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], from)
		}
	}()
	d.upstream = []netip.AddrPort{echo.LocalAddr().(*net.UDPAddr).AddrPort()}
	h, _ := parseDNSAnswer(t, d.Answer(ctx, dnsQuestion(t, 11, "elsewhere.example.", dnsmessage.TypeA), false))
	if !h.Response || h.RCode != dnsmessage.RCodeServerFailure {
		t.Fatalf("echoing upstream: %+v, want a SERVFAIL response", h)
	}

	// An upstream that refuses gives SERVFAIL, not silence.
	d.upstream = []netip.AddrPort{closedLoopbackPort(t)}
	h, _ = parseDNSAnswer(t, d.Answer(ctx, dnsQuestion(t, 10, "elsewhere.example.", dnsmessage.TypeA), true))
	if h.RCode != dnsmessage.RCodeServerFailure {
		t.Fatalf("dead upstream: rcode %v, want SERVFAIL", h.RCode)
	}
	// Garbage and responses get nothing; a query without a question
	// gets FORMERR.
	for _, bad := range [][]byte{nil, {1}, {0, 1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0}} {
		if resp := d.Answer(ctx, bad, false); resp != nil {
			t.Fatalf("answered %x", bad)
		}
	}
	h, _ = parseDNSAnswer(t, d.Answer(ctx, []byte{0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false))
	if h.RCode != dnsmessage.RCodeFormatError {
		t.Fatalf("no question: rcode %v, want FORMERR", h.RCode)
	}
}

// closedLoopbackPort is a TCP and UDP port on 127.0.0.1 with nothing
// behind it.
func closedLoopbackPort(t testing.TB) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()
	return ap
}

func FuzzDNSServer(f *testing.F) {
	f.Add(dnsQuestion(f, 1, "demo.wg.", dnsmessage.TypeA), false)
	f.Add(dnsQuestion(f, 2, "demo.wg.", dnsmessage.TypeALL), true)
	f.Add([]byte{0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false)
	// No network in fuzzing: every forwarded query meets a resolver that
	// cannot be reached, so the fuzzer explores our parsing, not a port
	// some other test may be using.
	d := &Server{
		records:  map[string][]netip.Addr{"demo.wg.": {netip.MustParseAddr("10.0.0.1")}},
		upstream: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")},
		dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, errors.New("no upstream while fuzzing")
		},
		log: slog.New(slog.DiscardHandler),
	}
	f.Fuzz(func(t *testing.T, query []byte, overTCP bool) {
		resp := d.Answer(context.Background(), query, overTCP)
		if resp == nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(resp)
		if err != nil || !h.Response || len(query) < 2 || h.ID != binary.BigEndian.Uint16(query) {
			t.Fatalf("bad response %x to %x: %v", resp, query, err)
		}
	})
}

// peerByIP stands for cryptokey routing in tests of the server alone:
// each loopback address is another peer.
func peerByIP(a netip.Addr) (protocol.PublicKey, bool) {
	var k protocol.PublicKey
	copy(k[:], a.AsSlice())
	return k, true
}

// dialFrom dials a TCP address from the host's loopback address src.
func dialFrom(t *testing.T, src string, to net.Addr) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", to.String())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tcpQuery asks one query over c and reads the answer's length.
func tcpQuery(t *testing.T, c net.Conn) error {
	t.Helper()
	q := dnsQuestion(t, 7, "example.com.", dnsmessage.TypeA)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)); err != nil {
		return err
	}
	var lb [2]byte
	_, err := io.ReadFull(c, lb[:])
	return err
}

// closedAtOnce fails unless the server closed c without serving it.
func closedAtOnce(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("%s: read %v, want it closed", what, err)
	}
}

// TestDNSServerTCPConnLimit: past maxDNSTCPConnsPerPeer connections from
// one peer, or maxDNSTCPConns in all, a new one is closed at once instead
// of costing another goroutine; another peer's still gets served while
// the first holds its share.
func TestDNSServerTCPConnLimit(t *testing.T) {
	d := newServer(Config{Upstream: []netip.AddrPort{closedLoopbackPort(t)}})
	d.peerOf = peerByIP
	defer d.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if !d.track(l, 1) {
		t.Fatal("track failed")
	}
	go d.serveTCP(l)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range maxDNSTCPConnsPerPeer {
		conns = append(conns, dialFrom(t, "127.0.0.2", l.Addr()))
	}
	// The held connections are being served: one answers a query.
	if err := tcpQuery(t, conns[0]); err != nil {
		t.Fatal(err)
	}
	over := dialFrom(t, "127.0.0.2", l.Addr())
	defer over.Close()
	closedAtOnce(t, over, "a connection over the peer's share")
	other := dialFrom(t, "127.0.0.3", l.Addr())
	conns = append(conns, other)
	if err := tcpQuery(t, other); err != nil {
		t.Fatalf("another peer, while the first holds its share: %v", err)
	}

	// Fill the rest from other peers, a share each, up to the server's
	// limit.
	for i := 0; len(conns) < maxDNSTCPConns; i++ {
		src := fmt.Sprintf("127.0.%d.%d", 1+i/maxDNSTCPConnsPerPeer/200, 10+i/maxDNSTCPConnsPerPeer%200)
		conns = append(conns, dialFrom(t, src, l.Addr()))
	}
	if err := tcpQuery(t, conns[len(conns)-1]); err != nil {
		t.Fatalf("the last connection within the limit: %v", err)
	}
	extra := dialFrom(t, "127.0.0.250", l.Addr())
	defer extra.Close()
	closedAtOnce(t, extra, "a connection over the server's limit")
}

// slowUpstream is a resolver on 127.0.0.1 that answers only queries for
// fast.example. and leaves the rest waiting, as a resolver does for a
// domain whose servers are down.
func slowUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var m dnsmessage.Message
			if m.Unpack(buf[:n]) != nil || len(m.Questions) != 1 || m.Questions[0].Name.String() != "fast.example." {
				continue
			}
			m.Response = true
			out, _ := m.Pack()
			pc.WriteTo(out, from)
		}
	}()
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// TestDNSServerUDPShares: a peer flooding queries at an upstream that
// does not answer holds at most its share of the query slots, so another
// peer's query is still answered.
func TestDNSServerUDPShares(t *testing.T) {
	d := newServer(Config{Upstream: []netip.AddrPort{slowUpstream(t)}})
	d.peerOf = peerByIP
	defer d.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if !d.track(pc, 1) {
		t.Fatal("track failed")
	}
	go d.serveUDP(pc)
	udpFrom := func(src string) net.Conn {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, pc.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	flood := udpFrom("127.0.0.2")
	for i := range 2 * maxDNSInFlight {
		flood.Write(dnsQuestion(t, uint16(i), "slow.example.", dnsmessage.TypeA))
	}
	// Wait until the flood holds its share; the server reads in order.
	deadline := time.Now().Add(10 * time.Second)
	for d.inFlight.heldBy(protocolKey(t, "127.0.0.2")) < maxDNSInFlightPerPeer && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	other := udpFrom("127.0.0.3")
	q := dnsQuestion(t, 4242, "fast.example.", dnsmessage.TypeA)
	buf := make([]byte, 65535)
	for try := 0; ; try++ {
		other.Write(q)
		other.SetReadDeadline(time.Now().Add(time.Second))
		n, err := other.Read(buf)
		if err == nil {
			if h, _ := parseDNSAnswer(t, buf[:n]); h.ID != 4242 || h.RCode != dnsmessage.RCodeSuccess {
				t.Fatalf("answer %+v", h)
			}
			break
		}
		if try == 3 {
			t.Fatalf("another peer's query went unanswered while one peer flooded: %v", err)
		}
	}
}

// protocolKey is peerByIP's key for a loopback address.
func protocolKey(t *testing.T, a string) protocol.PublicKey {
	t.Helper()
	k, _ := peerByIP(netip.MustParseAddr(a))
	return k
}
