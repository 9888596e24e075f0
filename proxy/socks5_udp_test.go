package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/wgbore/wgbore/proxy/socksclient"
)

// socksUDPNetwork is socksNetwork with datagrams: its ListenPacket gives a
// real UDP socket on a loopback address, standing in for the tunnel's.
type socksUDPNetwork struct {
	*socksNetwork
	listenAddr string // where the "tunnel" socket binds: 127.0.0.1:0 or [::1]:0

	mu      sync.Mutex
	sockets []net.PacketConn
}

func newSOCKSUDPNetwork(listenAddr string) *socksUDPNetwork {
	return &socksUDPNetwork{socksNetwork: newSOCKSNetwork(), listenAddr: listenAddr}
}

func (n *socksUDPNetwork) ListenPacket(network, address string) (net.PacketConn, error) {
	if network != "udp" || address != ":0" {
		return nil, fmt.Errorf("socksUDPNetwork: ListenPacket(%q, %q), want (udp, :0)", network, address)
	}
	c, err := net.ListenPacket("udp", n.listenAddr)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.sockets = append(n.sockets, c)
	n.mu.Unlock()
	return c, nil
}

// socksUDPServer is a loopback UDP server that remembers every payload it
// got. handle returns the answer, or nil for none.
type socksUDPServer struct {
	conn net.PacketConn

	mu   sync.Mutex
	seen [][]byte
}

func startSOCKSUDPServer(t *testing.T, addr string, handle func([]byte) []byte) *socksUDPServer {
	t.Helper()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	s := &socksUDPServer{conn: c}
	done := make(chan struct{})
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			p := bytes.Clone(buf[:n]) // not nil when empty: an empty datagram is echoed too
			s.mu.Lock()
			s.seen = append(s.seen, p)
			s.mu.Unlock()
			if answer := handle(p); answer != nil {
				c.WriteTo(answer, from)
			}
		}
	}()
	return s
}

func (s *socksUDPServer) addrPort() netip.AddrPort {
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (s *socksUDPServer) saw(payload []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.seen {
		if bytes.Equal(p, payload) {
			return true
		}
	}
	return false
}

func startSOCKSUDPEcho(t *testing.T, addr string) *socksUDPServer {
	return startSOCKSUDPServer(t, addr, func(p []byte) []byte { return p })
}

// socksDNSAnswer is the address the test DNS server gives for any A query.
var socksDNSAnswer = [4]byte{127, 0, 0, 53}

// startSOCKSDNS answers every A question with socksDNSAnswer.
func startSOCKSDNS(t *testing.T) *socksUDPServer {
	return startSOCKSUDPServer(t, "127.0.0.1:0", func(p []byte) []byte {
		var parser dnsmessage.Parser
		hdr, err := parser.Start(p)
		if err != nil {
			return nil
		}
		q, err := parser.Question()
		if err != nil {
			return nil
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: hdr.ID, Response: true, Authoritative: true})
		b.StartQuestions()
		b.Question(q)
		b.StartAnswers()
		b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: socksDNSAnswer})
		out, err := b.Finish()
		if err != nil {
			return nil
		}
		return out
	})
}

// socksUDPClient is a hand-written RFC 1928 UDP client: a control
// connection that did ASSOCIATE, and the UDP socket it sends from.
type socksUDPClient struct {
	control net.Conn
	udp     *net.UDPConn
	relay   netip.AddrPort
}

type socksUDPClientOptions struct {
	user, pass string
	// announce puts the UDP socket's address in the ASSOCIATE request;
	// otherwise DST.ADDR and DST.PORT are zeros.
	announce bool
}

// socksAssociate connects to the proxy from localIP, binds a UDP socket on
// localIP and associates it. It returns the reply code too, with 0xff
// for a refused method and 0xfe for a refused login; the client is only
// usable when that is 0.
func socksAssociate(t *testing.T, proxyAddr, localIP string, opts socksUDPClientOptions) (*socksUDPClient, byte) {
	t.Helper()
	udp, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(localIP), 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	control, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { control.Close() })
	control.SetDeadline(time.Now().Add(5 * time.Second))

	var from netip.AddrPort
	if opts.announce {
		from = udp.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	relay, err := socksclient.Associate(control, socksclient.Auth{User: opts.user, Pass: opts.pass}, from)
	var refused *socksclient.ReplyError
	switch {
	case errors.Is(err, socksclient.ErrNoAcceptableMethod):
		return nil, 0xff
	case errors.Is(err, socksclient.ErrLoginRefused):
		return nil, 0xfe
	case errors.As(err, &refused):
		return nil, refused.Code
	case err != nil:
		t.Fatalf("ASSOCIATE: %v", err)
	}
	control.SetDeadline(time.Time{})
	return &socksUDPClient{control: control, udp: udp, relay: relay}, 0
}

func mustSOCKSAssociate(t *testing.T, proxyAddr, localIP string, opts socksUDPClientOptions) *socksUDPClient {
	t.Helper()
	c, rep := socksAssociate(t, proxyAddr, localIP, opts)
	if rep != 0 {
		t.Fatalf("ASSOCIATE failed with reply %d", rep)
	}
	return c
}

func mustWrite(t *testing.T, w io.Writer, b []byte) {
	t.Helper()
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
}

// socksUDPDatagram builds a client datagram for target.
func socksUDPDatagram(target netip.AddrPort, payload []byte) []byte {
	return socksclient.AppendDatagram(nil, target, payload)
}

func socksUDPDatagramToName(name string, port uint16, payload []byte) []byte {
	b := append([]byte{0, 0, 0, 3, byte(len(name))}, name...)
	return append(binary.BigEndian.AppendUint16(b, port), payload...)
}

func (c *socksUDPClient) send(t *testing.T, datagram []byte) {
	t.Helper()
	if _, err := c.udp.WriteToUDPAddrPort(datagram, c.relay); err != nil {
		t.Fatal(err)
	}
}

// receive waits up to wait for a datagram from the relay and returns its
// source as the header names it and its payload; ok is false on timeout.
func (c *socksUDPClient) receive(t *testing.T, wait time.Duration) (netip.AddrPort, []byte, bool) {
	t.Helper()
	buf := make([]byte, 64<<10)
	c.udp.SetReadDeadline(time.Now().Add(wait))
	for {
		n, from, err := c.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return netip.AddrPort{}, nil, false
			}
			t.Fatal(err)
		}
		if from != c.relay {
			t.Fatalf("datagram from %v, not the relay %v", from, c.relay)
		}
		target, payload, err := parseSOCKSUDPHeader(buf[:n])
		if err != nil {
			t.Fatalf("relay sent a bad header: %v", err)
		}
		if target.name != nil {
			t.Fatalf("relay named the source %q, want an address", target.name)
		}
		return netip.AddrPortFrom(target.addr, target.port), payload, true
	}
}

// exchange sends payload to target and waits for the answer.
func (c *socksUDPClient) exchange(t *testing.T, datagram []byte) (netip.AddrPort, []byte) {
	t.Helper()
	// UDP on loopback does not lose datagrams in practice, but a retry
	// keeps a loaded CI machine from making this flaky.
	for range 3 {
		c.send(t, datagram)
		if src, payload, ok := c.receive(t, 2*time.Second); ok {
			return src, payload
		}
	}
	t.Fatal("no answer through the relay")
	return netip.AddrPort{}, nil
}

func TestSOCKS5UDPAssociateDNS(t *testing.T) {
	dns := startSOCKSDNS(t)
	_, proxyAddr, _ := startSOCKS5(t, newSOCKSUDPNetwork("127.0.0.1:0"), SOCKS5Config{})
	c := mustSOCKSAssociate(t, proxyAddr, "127.0.0.1", socksUDPClientOptions{})

	name := dnsmessage.MustNewName("svc.tunnel.test.")
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x2a, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	query, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	src, answer := c.exchange(t, socksUDPDatagram(dns.addrPort(), query))
	if src != dns.addrPort() {
		t.Errorf("answer's header names %v, want the DNS server %v", src, dns.addrPort())
	}
	var msg dnsmessage.Message
	if err := msg.Unpack(answer); err != nil {
		t.Fatalf("answer does not parse: %v", err)
	}
	if msg.ID != 0x2a || len(msg.Answers) != 1 {
		t.Fatalf("answer: id %#x, %d answers", msg.ID, len(msg.Answers))
	}
	if a, ok := msg.Answers[0].Body.(*dnsmessage.AResource); !ok || a.A != socksDNSAnswer {
		t.Fatalf("answer = %v, want A %v", msg.Answers[0].Body, socksDNSAnswer)
	}
}

func TestSOCKS5UDPAssociateEcho(t *testing.T) {
	echo := startSOCKSUDPEcho(t, "127.0.0.1:0")
	nw := newSOCKSUDPNetwork("127.0.0.1:0")
	_, proxyAddr, _ := startSOCKS5(t, nw, SOCKS5Config{})
	c := mustSOCKSAssociate(t, proxyAddr, "127.0.0.1", socksUDPClientOptions{})

	if c.relay.Addr() != netip.MustParseAddr("127.0.0.1") || c.relay.Port() == 0 {
		t.Fatalf("relay address %v, want 127.0.0.1 and a port: the relay must listen where the client reached the proxy", c.relay)
	}

	big := bytes.Repeat([]byte("0123456789abcdef"), 4000) // 64000 bytes
	for _, payload := range [][]byte{[]byte("ping"), {}, big} {
		src, got := c.exchange(t, socksUDPDatagram(echo.addrPort(), payload))
		if src != echo.addrPort() {
			t.Errorf("echo's header names %v, want %v", src, echo.addrPort())
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("echo of %d bytes came back as %d bytes", len(payload), len(got))
		}
	}

	// A name is resolved on the Network, once per association while
	// it is fresh.
	for range 2 {
		_, got := c.exchange(t, socksUDPDatagramToName("tunnel.test", echo.addrPort().Port(), []byte("by name")))
		if string(got) != "by name" {
			t.Fatalf("echo by name = %q", got)
		}
	}
	if got := nw.lookedUp(); strings.Join(got, ",") != "tunnel.test" {
		t.Errorf("Network lookups = %q, want one for tunnel.test", got)
	}

	// One Network socket serves the whole association.
	nw.mu.Lock()
	sockets := len(nw.sockets)
	nw.mu.Unlock()
	if sockets != 1 {
		t.Errorf("%d Network sockets for one association, want 1", sockets)
	}
}

func TestSOCKS5UDPAssociateIPv6(t *testing.T) {
	echo := startSOCKSUDPEcho(t, "[::1]:0") // skips without ::1
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("cannot listen on ::1: %v", err)
	}
	s := NewSOCKS5(newSOCKSUDPNetwork("[::1]:0"), SOCKS5Config{})
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })

	c := mustSOCKSAssociate(t, l.Addr().String(), "::1", socksUDPClientOptions{announce: true})
	if c.relay.Addr() != netip.IPv6Loopback() {
		t.Fatalf("relay address %v, want ::1", c.relay)
	}
	src, got := c.exchange(t, socksUDPDatagram(echo.addrPort(), []byte("six")))
	if string(got) != "six" || src != echo.addrPort() {
		t.Fatalf("echo over IPv6 = %q from %v", got, src)
	}
	_, got = c.exchange(t, socksUDPDatagramToName("tunnel6.test", echo.addrPort().Port(), []byte("six by name")))
	if string(got) != "six by name" {
		t.Fatalf("echo over IPv6 by name = %q", got)
	}
}

// socksSpoof sends a datagram to the relay from a socket of its own on
// the relay's address, as another local process could, and reports
// whether anything came back.
func socksSpoof(t *testing.T, relay, target netip.AddrPort, payload []byte) (answered bool) {
	t.Helper()
	return spoofFrom(t, relay.Addr(), relay, target, payload)
}

func TestSOCKS5UDPDropsOtherSenders(t *testing.T) {
	echo := startSOCKSUDPEcho(t, "127.0.0.1:0")
	var logs socksLogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	_, proxyAddr, _ := startSOCKS5(t, newSOCKSUDPNetwork("127.0.0.1:0"), SOCKS5Config{Logger: logger})

	t.Run("port locked by the first datagram", func(t *testing.T) {
		c := mustSOCKSAssociate(t, proxyAddr, "127.0.0.1", socksUDPClientOptions{})
		c.exchange(t, socksUDPDatagram(echo.addrPort(), []byte("mine")))
		spoof := []byte("spoofed after lock")
		if socksSpoof(t, c.relay, echo.addrPort(), spoof) {
			t.Error("the relay answered a datagram from another port")
		}
		if echo.saw(spoof) {
			t.Error("the target got a datagram the relay should have dropped")
		}
		if _, got := c.exchange(t, socksUDPDatagram(echo.addrPort(), []byte("still mine"))); string(got) != "still mine" {
			t.Fatalf("echo after the spoof = %q", got)
		}
	})
	t.Run("port announced in the request", func(t *testing.T) {
		c := mustSOCKSAssociate(t, proxyAddr, "127.0.0.1", socksUDPClientOptions{announce: true})
		// The spoofer comes first: with the port announced, it must not
		// be able to take the association.
		spoof := []byte("spoofed before the client")
		if socksSpoof(t, c.relay, echo.addrPort(), spoof) {
			t.Error("the relay answered a datagram from another port")
		}
		if echo.saw(spoof) {
			t.Error("the target got a datagram the relay should have dropped")
		}
		if _, got := c.exchange(t, socksUDPDatagram(echo.addrPort(), []byte("announced"))); string(got) != "announced" {
			t.Fatalf("echo = %q", got)
		}
	})
	if !strings.Contains(logs.String(), "not the associated client") {
		t.Errorf("no debug log for the dropped datagrams:\n%s", logs.String())
	}
}

func TestSOCKS5UDPAssociateRefusesAnotherHost(t *testing.T) {
	_, proxyAddr, _ := startSOCKS5(t, newSOCKSUDPNetwork("127.0.0.1:0"), SOCKS5Config{})
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	mustWrite(t, c, []byte{5, 1, 0})
	io.ReadFull(c, make([]byte, 2))
	// Datagrams announced from 127.0.0.9 could never pass the check that
	// they come from the control connection's 127.0.0.1.
	mustWrite(t, c, []byte{5, 3, 0, 1, 127, 0, 0, 9, 0x30, 0x39})
	reply := make([]byte, 10)
	if _, err := io.ReadFull(c, reply); err != nil {
		t.Fatal(err)
	}
	if reply[1] != 2 {
		t.Fatalf("reply %d, want 2 (not allowed by ruleset)", reply[1])
	}
}

func TestSOCKS5UDPMalformedDatagramsDropped(t *testing.T) {
	echo := startSOCKSUDPEcho(t, "127.0.0.1:0")
	var logs socksLogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	_, proxyAddr, _ := startSOCKS5(t, newSOCKSUDPNetwork("127.0.0.1:0"), SOCKS5Config{Logger: logger})
	c := mustSOCKSAssociate(t, proxyAddr, "127.0.0.1", socksUDPClientOptions{})

	valid := socksUDPDatagram(echo.addrPort(), []byte("x"))
	port := binary.BigEndian.AppendUint16(nil, echo.addrPort().Port())
	for _, tc := range []struct {
		name     string
		datagram []byte
	}{
		{"empty", nil},
		{"short", []byte{0, 0}},
		{"header only", []byte{0, 0, 0}},
		{"reserved set", append([]byte{0, 1}, valid[2:]...)},
		{"fragment", append([]byte{0, 0, 1}, valid[3:]...)},
		{"bad ATYP", append([]byte{0, 0, 0, 9}, valid[4:]...)},
		{"IPv4 cut short", []byte{0, 0, 0, 1, 127, 0}},
		{"IPv6 cut short", []byte{0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
		{"empty name", append([]byte{0, 0, 0, 3, 0}, port...)},
		{"name longer than datagram", []byte{0, 0, 0, 3, 200, 'a', 'b'}},
		{"port zero", []byte{0, 0, 0, 1, 127, 0, 0, 1, 0, 0, 'x'}},
		{"unknown name", socksUDPDatagramToName("nowhere.test", echo.addrPort().Port(), []byte("x"))},
	} {
		c.send(t, tc.datagram)
		if _, p, ok := c.receive(t, 100*time.Millisecond); ok {
			t.Errorf("%s: got an answer %q", tc.name, p)
		}
	}
	// The association survived all of them.
	if _, got := c.exchange(t, socksUDPDatagram(echo.addrPort(), []byte("after"))); string(got) != "after" {
		t.Fatalf("echo after malformed datagrams = %q", got)
	}
	echo.mu.Lock()
	seen := len(echo.seen)
	echo.mu.Unlock()
	if seen != 1 {
		t.Errorf("the target saw %d datagrams, want only the valid one", seen)
	}
	c.control.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "dropped=12") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "dropped=12") {
		t.Errorf("the association's end did not count 12 drops:\n%s", logs.String())
	}
}

func TestSOCKS5UDPControlCloseEndsAssociation(t *testing.T) {
	echo := startSOCKSUDPEcho(t, "127.0.0.1:0")
	nw := newSOCKSUDPNetwork("127.0.0.1:0")
	_, proxyAddr, _ := startSOCKS5(t, nw, SOCKS5Config{})
	c := mustSOCKSAssociate(t, proxyAddr, "127.0.0.1", socksUDPClientOptions{})
	c.exchange(t, socksUDPDatagram(echo.addrPort(), []byte("before")))
	mustHaveGoroutines(t, socksAssociationCode...)

	c.control.Close()
	waitNoGoroutines(t, "closing the control connection", socksAssociationCode...)

	c.send(t, socksUDPDatagram(echo.addrPort(), []byte("after")))
	if _, p, ok := c.receive(t, 300*time.Millisecond); ok {
		t.Fatalf("an ended association answered %q", p)
	}
	if echo.saw([]byte("after")) {
		t.Error("an ended association forwarded a datagram")
	}
	// Both sockets are closed: their ports can be bound again.
	relay, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(c.relay))
	if err != nil {
		t.Fatalf("the relay's port is still taken: %v", err)
	}
	relay.Close()
	nw.mu.Lock()
	tunnelSocket := nw.sockets[0]
	nw.mu.Unlock()
	if _, err := tunnelSocket.WriteTo([]byte("x"), echo.conn.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the Network socket is still open: WriteTo = %v", err)
	}
}

func TestSOCKS5UDPAuth(t *testing.T) {
	echo := startSOCKSUDPEcho(t, "127.0.0.1:0")
	_, proxyAddr, _ := startSOCKS5(t, newSOCKSUDPNetwork("127.0.0.1:0"), SOCKS5Config{Username: "u", Password: "p"})

	if _, rep := socksAssociate(t, proxyAddr, "127.0.0.1", socksUDPClientOptions{}); rep != 0xff {
		t.Errorf("ASSOCIATE without credentials: reply %#x, want the method refused", rep)
	}
	if _, rep := socksAssociate(t, proxyAddr, "127.0.0.1", socksUDPClientOptions{user: "u", pass: "wrong"}); rep != 0xfe {
		t.Errorf("ASSOCIATE with a wrong password: reply %#x, want authentication failure", rep)
	}
	c := mustSOCKSAssociate(t, proxyAddr, "127.0.0.1", socksUDPClientOptions{user: "u", pass: "p"})
	if _, got := c.exchange(t, socksUDPDatagram(echo.addrPort(), []byte("authed"))); string(got) != "authed" {
		t.Fatalf("echo = %q", got)
	}
}

func TestSOCKS5UDPCloseEndsAssociations(t *testing.T) {
	echo := startSOCKSUDPEcho(t, "127.0.0.1:0")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewSOCKS5(newSOCKSUDPNetwork("127.0.0.1:0"), SOCKS5Config{})
	served := serveInBackground(t, func() error { return s.Serve(l) }, s.Close)

	var clients []*socksUDPClient
	for range 3 {
		c := mustSOCKSAssociate(t, l.Addr().String(), "127.0.0.1", socksUDPClientOptions{})
		c.exchange(t, socksUDPDatagram(echo.addrPort(), []byte("hi")))
		clients = append(clients, c)
	}
	mustHaveGoroutines(t, socksAssociationCode...)
	closeWithin(t, s.Close, socksCode...)
	waitServed(t, served)
	// Close waited for them; one may still be returning past its Done.
	waitNoGoroutines(t, "Close", socksCode...)
	for _, c := range clients {
		c.control.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.control.Read(make([]byte, 1)); err == nil {
			t.Error("control connection still open after Close")
		}
	}
}

func TestSOCKSUDPHeaderRoundTrip(t *testing.T) {
	for _, src := range []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:53"),
		netip.MustParseAddrPort("[::1]:65535"),
		netip.MustParseAddrPort("[::ffff:127.0.0.1]:1"),
	} {
		buf := make([]byte, socksUDPMaxHeader+3)
		copy(buf[socksUDPMaxHeader:], "abc")
		start := putSOCKSUDPHeader(buf, socksUDPMaxHeader, src)
		target, payload, err := parseSOCKSUDPHeader(buf[start:])
		if err != nil {
			t.Fatalf("%v: %v", src, err)
		}
		if got := netip.AddrPortFrom(target.addr, target.port); got != netip.AddrPortFrom(src.Addr().Unmap(), src.Port()) || string(payload) != "abc" {
			t.Errorf("%v: parsed back as %v, %q", src, got, payload)
		}
	}
}

// TestSOCKSUDPHotPathAllocations guards the per-datagram work: parsing a
// header, resolving a name seen before, reusing the target's net.Addr and
// writing an answer's header must not allocate.
func TestSOCKSUDPHotPathAllocations(t *testing.T) {
	a := &socksAssociation{
		s:     NewSOCKS5(newSOCKSNetwork(), SOCKS5Config{}),
		now:   time.Now,
		names: make(map[string]socksUDPName),
	}
	defer a.s.Close()
	byName := socksUDPDatagramToName("tunnel.test", 53, []byte("q"))
	byAddr := socksUDPDatagram(netip.MustParseAddrPort("127.0.0.1:53"), []byte("q"))
	if _, err := a.resolve(socksUDPTarget{name: []byte("tunnel.test"), port: 53}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, socksUDPMaxHeader+1)
	src := netip.MustParseAddrPort("[::1]:53")
	allocs := testing.AllocsPerRun(100, func() {
		for _, d := range [][]byte{byName, byAddr} {
			target, _, err := parseSOCKSUDPHeader(d)
			if err != nil {
				t.Fatal(err)
			}
			dst, err := a.resolve(target)
			if err != nil {
				t.Fatal(err)
			}
			a.netAddr(dst)
		}
		putSOCKSUDPHeader(buf, socksUDPMaxHeader, src)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per datagram, want 0", allocs)
	}
}
