package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	socks5 "github.com/things-go/go-socks5"
	"github.com/things-go/go-socks5/statute"
)

const (
	// socksUDPBufferSize fits any UDP datagram, so neither a client's
	// request nor a target's answer is ever cut short.
	socksUDPBufferSize = 64 << 10

	// socksUDPMaxHeader is the longest header the relay puts in front of
	// an answer (IPv6: RSV, FRAG, ATYP, 16 address bytes, port). Answers
	// are read this far into the buffer, so the header is written in
	// place in front of them instead of copying the payload.
	socksUDPMaxHeader = 3 + 1 + net.IPv6len + 2

	// socksUDPNameTTL is how long a name a client sent datagrams to stays
	// resolved. A DNS or game client sends many datagrams to one name in
	// a burst; asking the tunnel's resolver for each would double its
	// traffic, while a short lifetime still follows a name that moves.
	socksUDPNameTTL = 30 * time.Second

	// socksUDPNameCacheSize caps the names one association remembers, so
	// a client spraying datagrams at random names cannot grow it without
	// bound. When full, it is emptied: the cost is a lookup per name again.
	socksUDPNameCacheSize = 64

	// socksUDPResolveTimeout bounds a lookup for one datagram. Lookups
	// happen on the path that forwards the client's datagrams, so a slow
	// one delays the association's others; UDP clients retry anyway.
	socksUDPResolveTimeout = 5 * time.Second
)

// packetListener is what a Network needs for UDP ASSOCIATE: a way to send
// and receive datagrams on its side. Tunnel has it; a Network without it
// gets ASSOCIATE refused.
type packetListener interface {
	ListenPacket(network, address string) (net.PacketConn, error)
}

// The reasons a client datagram is dropped. They are values, not built
// per datagram, so a flood of bad datagrams costs no allocations.
var (
	errSOCKSUDPShort     = errors.New("datagram shorter than its header")
	errSOCKSUDPReserved  = errors.New("reserved bytes are not zero")
	errSOCKSUDPFragment  = errors.New("fragmented datagram")
	errSOCKSUDPAddrType  = errors.New("unknown address type")
	errSOCKSUDPEmptyName = errors.New("empty domain name")
	errSOCKSUDPPort      = errors.New("destination port 0")
)

// socksUDPTarget is the DST.ADDR and DST.PORT of a client datagram. Either
// addr or name is set; name aliases the datagram's buffer.
type socksUDPTarget struct {
	addr netip.Addr
	name []byte
	port uint16
}

// parseSOCKSUDPHeader splits a client datagram into its target and payload
// (RFC 1928, section 7):
//
//	+----+------+------+----------+----------+----------+
//	|RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
//	+----+------+------+----------+----------+----------+
//	| 2  |  1   |  1   | Variable |    2     | Variable |
//	+----+------+------+----------+----------+----------+
//
// Fragments are refused: RFC 1928 makes reassembly optional, and no client
// in use sends them. The payload aliases b.
func parseSOCKSUDPHeader(b []byte) (socksUDPTarget, []byte, error) {
	var t socksUDPTarget
	if len(b) < 4 {
		return t, nil, errSOCKSUDPShort
	}
	if b[0] != 0 || b[1] != 0 {
		return t, nil, errSOCKSUDPReserved
	}
	if b[2] != 0 {
		return t, nil, errSOCKSUDPFragment
	}
	rest := b[4:]
	switch b[3] {
	case statute.ATYPIPv4:
		if len(rest) < net.IPv4len+2 {
			return t, nil, errSOCKSUDPShort
		}
		t.addr = netip.AddrFrom4([4]byte(rest[:net.IPv4len]))
		rest = rest[net.IPv4len:]
	case statute.ATYPIPv6:
		if len(rest) < net.IPv6len+2 {
			return t, nil, errSOCKSUDPShort
		}
		t.addr = netip.AddrFrom16([16]byte(rest[:net.IPv6len])).Unmap()
		rest = rest[net.IPv6len:]
	case statute.ATYPDomain:
		if len(rest) < 1 {
			return t, nil, errSOCKSUDPShort
		}
		n := int(rest[0])
		if n == 0 {
			return t, nil, errSOCKSUDPEmptyName
		}
		if len(rest) < 1+n+2 {
			return t, nil, errSOCKSUDPShort
		}
		t.name = rest[1 : 1+n]
		rest = rest[1+n:]
	default:
		return t, nil, errSOCKSUDPAddrType
	}
	t.port = binary.BigEndian.Uint16(rest)
	if t.port == 0 {
		return t, nil, errSOCKSUDPPort
	}
	return t, rest[2:], nil
}

// putSOCKSUDPHeader writes the header for an answer from src into buf
// just before off, where the answer's payload starts, and returns the
// index the header starts at. off must be at least socksUDPMaxHeader.
func putSOCKSUDPHeader(buf []byte, off int, src netip.AddrPort) int {
	ip := src.Addr().Unmap()
	binary.BigEndian.PutUint16(buf[off-2:], src.Port())
	var start int
	if ip.Is4() {
		a := ip.As4()
		start = off - 2 - net.IPv4len - 4
		copy(buf[start+4:], a[:])
		buf[start+3] = statute.ATYPIPv4
	} else {
		a := ip.As16()
		start = off - 2 - net.IPv6len - 4
		copy(buf[start+4:], a[:])
		buf[start+3] = statute.ATYPIPv6
	}
	buf[start], buf[start+1], buf[start+2] = 0, 0, 0
	return start
}

// socksUDPName is a name a client sent datagrams to, as the Network
// resolved it.
type socksUDPName struct {
	addr    netip.Addr
	expires time.Time
}

// socksAssociation relays one client's datagrams (RFC 1928, section 7)
// between a host UDP socket, which only that client may use, and one
// datagram socket on the Network, which every target of the association
// shares. Sharing one keeps the association's source port stable, which
// protocols that answer to the port they saw (DNS, STUN, QUIC) need.
type socksAssociation struct {
	s       *SOCKS5
	control net.Conn
	relay   *net.UDPConn
	tunnel  net.PacketConn
	now     func() time.Time

	// clientIP is the control connection's remote address, without a
	// zone so that it compares equal however the kernel reports it: only
	// it may send datagrams. clientReplyIP is the same with its zone, to
	// answer a link-local client. clientPort is the port it sends from:
	// named in the ASSOCIATE request, or else taken from the first valid
	// datagram; 0 until then. Only the goroutine reading the relay
	// stores it.
	clientIP      netip.Addr
	clientReplyIP netip.Addr
	clientPort    atomic.Uint32

	dropped atomic.Uint64

	// Owned by the goroutine reading the relay.
	names       map[string]socksUDPName
	lastDst     netip.AddrPort
	lastDstAddr net.Addr

	closeOnce sync.Once
}

// associate serves UDP ASSOCIATE. It answers with the relay's host
// address, relays until the client closes the control connection (or the
// server closes), and returns once both relay goroutines are gone.
func (s *SOCKS5) associate(control net.Conn, req *socks5.Request) error {
	fail := func(rep uint8, err error) error {
		if werr := socks5.SendReply(control, rep, nil); werr != nil {
			return fmt.Errorf("udp associate: %w (and replying: %w)", err, werr)
		}
		return fmt.Errorf("udp associate: %w", err)
	}
	// The handshake is over; an association lives as long as its client
	// keeps the control connection.
	if err := s.endHandshake(control); err != nil {
		return fmt.Errorf("udp associate: %w", err)
	}

	local, remote := socksAddrPort(req.LocalAddr), socksAddrPort(req.RemoteAddr)
	if !local.IsValid() || !remote.IsValid() {
		return fail(statute.RepServerFailure, fmt.Errorf("control connection has no IP addresses (%v, %v)", req.LocalAddr, req.RemoteAddr))
	}
	clientIP := remote.Addr().Unmap().WithZone("")

	// DST.ADDR and DST.PORT name where the client will send from. A name
	// there means nothing to the host's side (serveRequest does not look it
	// up), so only its port is used.
	var clientPort uint16
	if dst := req.RawDestAddr; dst != nil {
		if dst.FQDN == "" && dst.IP != nil && !dst.IP.IsUnspecified() {
			ip, _ := netip.AddrFromSlice(dst.IP)
			// Datagrams must come from the control connection's host,
			// so a client announcing another could never be served:
			// say so now rather than drop everything it sends.
			if ip.Unmap() != clientIP {
				return fail(statute.RepRuleFailure, fmt.Errorf("client %v announced datagrams from %v", remote, ip))
			}
		}
		clientPort = uint16(dst.Port)
	}

	pl, ok := s.nw.(packetListener)
	if !ok {
		return fail(statute.RepCommandNotSupported, errors.New("the network carries no datagrams"))
	}
	// The relay listens on the address the client reached us at, never
	// on every address: a proxy on loopback must not take datagrams from
	// the LAN.
	relay, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local.Addr().Unmap(), 0)))
	if err != nil {
		return fail(statute.RepServerFailure, fmt.Errorf("relay socket: %w", err))
	}
	tunnel, err := pl.ListenPacket("udp", ":0")
	if err != nil {
		relay.Close()
		return fail(statute.RepServerFailure, fmt.Errorf("network socket: %w", err))
	}
	a := &socksAssociation{
		s:             s,
		control:       control,
		relay:         relay,
		tunnel:        tunnel,
		now:           time.Now,
		clientIP:      clientIP,
		clientReplyIP: clientIP.WithZone(remote.Addr().Zone()),
		names:         make(map[string]socksUDPName),
	}
	a.clientPort.Store(uint32(clientPort))
	defer a.close()

	if err := socks5.SendReply(control, statute.RepSuccess, relay.LocalAddr()); err != nil {
		return fmt.Errorf("udp associate: replying: %w", err)
	}
	s.log.Debug("socks5: udp association", "client", remote, "relay", relay.LocalAddr())

	// This handler runs on a goroutine s.wg counts, so it may grow it.
	var relays sync.WaitGroup
	relays.Add(2)
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		defer relays.Done()
		a.fromClient()
	}()
	go func() {
		defer s.wg.Done()
		defer relays.Done()
		a.fromNetwork()
	}()

	// RFC 1928: the association ends when the control connection does.
	// Anything the client sends on it is meaningless and discarded.
	_, err = io.Copy(io.Discard, req.Reader)
	a.close()
	relays.Wait()
	s.log.Debug("socks5: udp association ended", "client", remote, "dropped", a.dropped.Load())
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("udp associate: control connection: %w", err)
	}
	return nil
}

// close ends the association: both datagram sockets, which stops the
// relay goroutines, and the control connection, which stops associate.
func (a *socksAssociation) close() {
	a.closeOnce.Do(func() {
		a.relay.Close()
		a.tunnel.Close()
		a.control.Close()
	})
}

// isClient reports whether a datagram from src is the associated client's.
func (a *socksAssociation) isClient(src netip.AddrPort) bool {
	if src.Addr().Unmap().WithZone("") != a.clientIP {
		return false
	}
	port := a.clientPort.Load()
	return port == 0 || port == uint32(src.Port())
}

func (a *socksAssociation) drop(reason string, src netip.AddrPort, err error) {
	a.dropped.Add(1)
	a.s.log.Debug("socks5: udp datagram dropped", "client", a.clientIP, "from", src, "reason", reason, "err", err)
}

// fromClient forwards the client's datagrams to their targets through the
// Network's socket.
func (a *socksAssociation) fromClient() {
	buf := make([]byte, socksUDPBufferSize)
	for {
		n, src, err := a.relay.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				a.s.log.Debug("socks5: udp relay read", "client", a.clientIP, "err", err)
			}
			a.close()
			return
		}
		if !a.isClient(src) {
			a.drop("not the associated client", src, nil)
			continue
		}
		target, payload, err := parseSOCKSUDPHeader(buf[:n])
		if err != nil {
			a.drop("bad header", src, err)
			continue
		}
		// A client that did not name its port gets the first one it
		// sends a well-formed datagram from; no other port is accepted
		// after that.
		if a.clientPort.Load() == 0 {
			a.clientPort.Store(uint32(src.Port()))
		}
		dst, err := a.resolve(target)
		if err != nil {
			a.drop("cannot resolve target", src, err)
			continue
		}
		if _, err := a.tunnel.WriteTo(payload, a.netAddr(dst)); err != nil {
			if errors.Is(err, net.ErrClosed) {
				a.close()
				return
			}
			a.drop("cannot send to target", src, err)
		}
	}
}

// fromNetwork sends the targets' answers back to the client, each behind
// a header naming the target that sent it.
func (a *socksAssociation) fromNetwork() {
	buf := make([]byte, socksUDPBufferSize)
	for {
		n, from, err := a.tunnel.ReadFrom(buf[socksUDPMaxHeader:])
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				a.s.log.Debug("socks5: udp network read", "client", a.clientIP, "err", err)
			}
			a.close()
			return
		}
		port := a.clientPort.Load()
		src := socksAddrPort(from)
		if port == 0 || !src.IsValid() {
			// Nobody to answer yet, or an answer from nowhere a
			// header can name.
			a.drop("answer with no client or no source", src, nil)
			continue
		}
		start := putSOCKSUDPHeader(buf, socksUDPMaxHeader, src)
		client := netip.AddrPortFrom(a.clientReplyIP, uint16(port))
		if _, err := a.relay.WriteToUDPAddrPort(buf[start:socksUDPMaxHeader+n], client); err != nil {
			if errors.Is(err, net.ErrClosed) {
				a.close()
				return
			}
			a.drop("cannot send to client", src, err)
		}
	}
}

// resolve turns a datagram's target into an address, asking the Network
// for names it has not resolved within socksUDPNameTTL.
func (a *socksAssociation) resolve(t socksUDPTarget) (netip.AddrPort, error) {
	if t.name == nil {
		return netip.AddrPortFrom(t.addr, t.port), nil
	}
	now := a.now()
	if n, ok := a.names[string(t.name)]; ok && now.Before(n.expires) {
		return netip.AddrPortFrom(n.addr, t.port), nil
	}
	name := string(t.name)
	ctx, cancel := a.s.bound(context.Background(), socksUDPResolveTimeout)
	addrs, err := a.s.nw.LookupNetIP(ctx, "ip", name)
	cancel()
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(addrs) == 0 {
		return netip.AddrPort{}, &net.DNSError{Err: "no addresses", Name: name, IsNotFound: true}
	}
	if len(a.names) >= socksUDPNameCacheSize {
		clear(a.names)
	}
	addr := addrs[0].Unmap()
	a.names[name] = socksUDPName{addr: addr, expires: now.Add(socksUDPNameTTL)}
	return netip.AddrPortFrom(addr, t.port), nil
}

// netAddr returns dst as a net.Addr for WriteTo, reusing the last one: a
// client mostly talks to one target at a time, so this keeps the hot path
// free of an allocation per datagram.
func (a *socksAssociation) netAddr(dst netip.AddrPort) net.Addr {
	if a.lastDstAddr == nil || dst != a.lastDst {
		a.lastDst = dst
		a.lastDstAddr = net.UDPAddrFromAddrPort(dst)
	}
	return a.lastDstAddr
}

// socksAddrPort returns the IP address and port of addr, or the zero
// AddrPort when addr has none.
func socksAddrPort(addr net.Addr) netip.AddrPort {
	switch a := addr.(type) {
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case nil:
		return netip.AddrPort{}
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
