package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
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
	var out []netip.Addr
	for _, rr := range m.Answers {
		switch b := rr.Body.(type) {
		case *dnsmessage.AResource:
			out = append(out, netip.AddrFrom4(b.A))
		case *dnsmessage.AAAAResource:
			out = append(out, netip.AddrFrom16(b.AAAA))
		}
	}
	return m.Header, out
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
	d := &DNSServer{
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
	d := &DNSServer{
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

// TestDNSServerTCPConnLimit: past maxDNSTCPConns open connections, a new
// one is closed at once instead of costing another goroutine.
func TestDNSServerTCPConnLimit(t *testing.T) {
	d := newDNSServer(DNSServerConfig{Upstream: []netip.AddrPort{closedLoopbackPort(t)}})
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
	for range maxDNSTCPConns {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The held connections are being served: one answers a query.
	q := dnsQuestion(t, 7, "example.com.", dnsmessage.TypeA)
	conns[0].SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conns[0].Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)); err != nil {
		t.Fatal(err)
	}
	var lb [2]byte
	if _, err := io.ReadFull(conns[0], lb[:]); err != nil {
		t.Fatal(err)
	}
	extra, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection over the limit: read %v, want it closed", err)
	}
}
