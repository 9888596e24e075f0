package netstack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/wgbore/wgbore/netstack/inbound"
)

// Keepalive timing for intercepted TCP flows on the peer's side: after a
// minute of silence, probes every 15 s, and gVisor's default 9 unanswered
// probes end the flow, about 3 minutes after the peer went away.
const (
	flowKeepaliveIdle     = time.Minute
	flowKeepaliveInterval = 15 * time.Second
)

// interception is Intercept's state: the interceptor, gVisor's TCP
// forwarder, which runs HandleTCP for each new connection request, and
// the UDP flows the interceptor accepted.
type interception struct {
	i   inbound.Interceptor
	tcp *tcp.Forwarder
	udp *udpFlows
}

// stop has the interceptor refuse new flows and end its own before the
// stack closes, and closes the UDP flows it has not: those are the
// Net's, not the stack's, and would outlive it.
func (c *interception) stop() {
	c.i.Stop()
	c.udp.close()
}

// wait closes the interceptor once the stack has closed: every flow's
// connection has failed by then, and so has every handshake a HandleTCP
// was accepting, which nothing else could cut short.
func (c *interception) wait() { c.i.Close() }

// Intercept turns on server mode: the peers' flows to any destination are
// handed to i, which decides what becomes of them (relaying them to the
// host's network, under a policy, is proxy/egress's job).
//
// The design is gVisor's own: the NIC is put in promiscuous mode, so it
// accepts packets for addresses that are not ours, and spoofing, so it may
// answer from them; TCP and UDP packets that no endpoint of ours claims
// then reach the per-protocol handlers Open installed, which ask i. The
// alternative, rewriting packets and forwarding them to a host raw or TUN
// socket, needs privileges server mode exists to avoid; terminating TCP
// here also means the host's kernel, not ours, does congestion control
// towards the destination.
//
// A refused flow is refused at once, in the packet path: the handler
// declines the packet, and gVisor answers as for a port nobody listens
// on, with a TCP RST (tcp's HandleUnknownDestinationPacket) or an ICMP
// port unreachable (udp's, through the IP layer's DeliverTransportPacket
// result). ICMP errors go through gVisor's stack-wide rate limiter (1000/s,
// bursts of 50), so a flood of refused datagrams is partly answered with
// silence.
//
// A TCP flow's handshake with the peer completes only when HandleTCP
// accepts it: an interceptor that dials the destination first lets a
// closed or unreachable port reach the peer as an RST on its SYN, as if
// it had connected directly. The connections handed over have keepalives
// on the peer's side: a peer that vanishes (roams away, is removed) sends
// no FIN, and without them its flows would hold what the interceptor
// spent on them until the other side closed.
//
// An echo request to one of our tunnel addresses is answered by gVisor,
// so a peer can ping the server. One to any other address goes to
// HandleEcho; for IPv6 it is claimed even when HandleEcho does not take
// it, so that it is dropped: the gVisor we pin answers ICMPv6 echo to any
// address of promiscuous mode as if it were ours unless a handler claims
// it (for IPv4 it leaves a temporary address's echo to the handler). A
// request whose reply would not fit the tunnel, or with a bad checksum,
// is dropped before HandleEcho.
//
// A listener of ours on the unspecified address also catches flows to its
// port on every other destination, since gVisor matches it before these
// handlers: bind listeners to a tunnel address in server mode.
//
// Intercept may be called once. The Net's Close stops i before the stack
// closes, so that nothing is admitted while it does, and closes i once
// it has.
func (n *Net) Intercept(i inbound.Interceptor) error {
	c := &interception{i: i, udp: newUDPFlows(n.stack, int(n.link.MTU()))}
	// maxInFlight is unbounded here: the interceptor's own caps bound
	// the handshakes each peer can have pending, and gVisor's bound would
	// drop SYNs silently, which is what refusing at once avoids.
	c.tcp = tcp.NewForwarder(n.stack, 0, 1<<30, n.handleTCP)
	n.mu.Lock()
	if n.closing {
		n.mu.Unlock()
		return net.ErrClosed
	}
	if !n.intercept.CompareAndSwap(nil, c) {
		n.mu.Unlock()
		return errors.New("netstack: Intercept was already called")
	}
	n.services = append(n.services, c)
	n.mu.Unlock()
	if err := n.stack.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("netstack: spoofing: %s", err)
	}
	if err := n.stack.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("netstack: promiscuous mode: %s", err)
	}
	return nil
}

// flowOf describes a new flow, or reports false when no peer routes its
// source (which cryptokey routing rules out for a packet from the
// tunnel).
func (n *Net) flowOf(network string, id stack.TransportEndpointID) (inbound.Flow, bool) {
	src := netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort)
	peer, ok := n.PeerFor(src.Addr())
	if !ok {
		return inbound.Flow{}, false
	}
	dst := netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort)
	return inbound.Flow{Network: network, Peer: peer, Source: src, Destination: dst,
		ToUs: n.link.owns(id.LocalAddress), InTunnel: n.inTunnel(dst.Addr().Unmap())}, true
}

// inTunnel reports whether dst, unmapped, lives in the tunnel rather than
// on the host's network: one of our addresses or inside some peer's
// AllowedIPs. It is given dst unmapped because a peer may spell an IPv4
// destination as IPv4-mapped IPv6 (::ffff:10.7.0.1) in an IPv6 packet,
// which neither our addresses nor an IPv4 AllowedIPs prefix contain, but
// which a host socket reaches as the IPv4 address.
func (n *Net) inTunnel(dst netip.Addr) bool {
	if dst.Is4() && n.link.owns(tcpip.AddrFrom4(dst.As4())) {
		return true
	}
	_, ok := n.PeerFor(dst)
	return ok
}

func addrFrom(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

// tcpPacket is the stack's TCP handler for segments no endpoint claims.
// Returning false makes gVisor answer with an RST.
func (n *Net) tcpPacket(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	c, _, ok := n.admit("tcp", id)
	return ok && c.tcp.HandlePacket(id, pkt)
}

// admit asks the interceptor, if there is one, about a new flow's first
// packet.
func (n *Net) admit(network string, id stack.TransportEndpointID) (*interception, inbound.Flow, bool) {
	c := n.intercept.Load()
	if c == nil {
		return nil, inbound.Flow{}, false
	}
	f, ok := n.flowOf(network, id)
	return c, f, ok && c.i.AdmitFlow(f)
}

// handleTCP runs in a goroutine gVisor's forwarder starts for each new
// connection request. Every path ends the request with Complete: with an
// RST unless the interceptor accepted it.
func (n *Net) handleTCP(req *tcp.ForwarderRequest) {
	f, ok := n.flowOf("tcp", req.ID())
	if !ok {
		req.Complete(true)
		return
	}
	completed := false
	n.intercept.Load().i.HandleTCP(f, func() (net.Conn, error) {
		if completed {
			return nil, errors.New("netstack: a flow is accepted once")
		}
		completed = true
		var wq waiter.Queue
		ep, terr := req.CreateEndpoint(&wq)
		if terr != nil {
			// The peer gave up, or the handshake failed; it has its
			// answer.
			req.Complete(true)
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: net.TCPAddrFromAddrPort(f.Source), Err: goError("accept", terr)}
		}
		req.Complete(false)
		ep.SocketOptions().SetKeepAlive(true)
		idle, interval := tcpip.KeepaliveIdleOption(flowKeepaliveIdle), tcpip.KeepaliveIntervalOption(flowKeepaliveInterval)
		ep.SetSockOpt(&idle)
		ep.SetSockOpt(&interval)
		return newTCPConn(&wq, ep, n), nil
	})
	if !completed {
		req.Complete(true)
	}
}

// udpPacket is the stack's UDP handler for datagrams no endpoint claims.
// Returning false makes gVisor answer with ICMP port unreachable (or,
// for a malformed datagram, drop it).
//
// A datagram of a flow already open is queued to the flow's connection;
// any other asks the interceptor, as udp.Forwarder would but without
// its clone of every packet, which it never releases for a flow its
// handler declines. An accepted flow gets a flowConn (udpflow.go), not
// a gVisor endpoint.
func (n *Net) udpPacket(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	c := n.intercept.Load()
	if c == nil || !validUDP(id, pkt) {
		return false
	}
	// A flow closed meanwhile refuses the datagram, which then starts a
	// new one.
	if fc := c.udp.lookup(id); fc != nil && fc.deliver(pkt) {
		return true
	}
	c, f, ok := n.admit("udp", id)
	if !ok {
		return false
	}
	accepted := false
	c.i.HandleUDP(f, func() (net.Conn, error) {
		if accepted {
			return nil, errors.New("netstack: a flow is accepted once")
		}
		fc, err := c.udp.open(id, pkt)
		if err != nil {
			return nil, &net.OpError{Op: "accept", Net: "udp", Addr: net.UDPAddrFromAddrPort(f.Source), Err: err}
		}
		accepted = true
		return fc, nil
	})
	if !accepted {
		// Another datagram of the flow, on another goroutine, may have
		// opened it while this one asked.
		if fc := c.udp.lookup(id); fc != nil {
			return fc.deliver(pkt)
		}
	}
	return accepted
}

// icmpPacket is the stack's ICMPv4 and ICMPv6 handler for packets no
// endpoint of ours claims; gVisor passes it echo requests (and replies)
// to any address. Returning false leaves the packet to gVisor, which
// answers an echo request to one of our addresses itself; see Intercept
// for the rest.
//
// The echo header (type, code, checksum, identifier, sequence number) is
// laid out alike in ICMPv4 and ICMPv6.
func (n *Net) icmpPacket(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	c := n.intercept.Load()
	if c == nil {
		return false
	}
	v6 := pkt.NetworkProtocolNumber == header.IPv6ProtocolNumber
	echo, ipHeader := byte(header.ICMPv4Echo), header.IPv4MinimumSize
	if v6 {
		echo, ipHeader = byte(header.ICMPv6EchoRequest), header.IPv6MinimumSize
	} else if pkt.NetworkProtocolNumber != header.IPv4ProtocolNumber {
		return false
	}
	h := pkt.TransportHeader().Slice()
	if len(h) < header.ICMPv4MinimumSize || h[0] != echo || h[1] != 0 {
		return false
	}
	if n.link.owns(id.LocalAddress) {
		return false // gVisor answers
	}
	// What a request that is not taken returns: see Intercept.
	refused := v6
	src, dst := addrFrom(id.RemoteAddress), addrFrom(id.LocalAddress).Unmap()
	// gVisor hands ICMPv4 echo requests with a bad checksum on too, for
	// raw sockets; we pass on only those it would answer. (It drops ICMPv6
	// ones itself.)
	if !v6 && checksum.Checksum(h, pkt.Data().Checksum()) != 0xffff {
		return refused
	}
	// The reply has the request's size without IP options or extension
	// headers; one that would not fit the tunnel (a reassembled fragmented
	// request) is dropped.
	if ipHeader+len(h)+pkt.Data().Size() > int(n.link.MTU()) {
		n.log.Debug("ping dropped: larger than the tunnel MTU", "src", src, "dst", dst)
		return refused
	}
	peer, ok := n.PeerFor(src)
	if !ok {
		return refused
	}
	req := inbound.EchoRequest{Peer: peer, Source: src, Destination: dst, InTunnel: n.inTunnel(dst),
		ID: binary.BigEndian.Uint16(h[4:6]), Seq: binary.BigEndian.Uint16(h[6:8]),
		Payload: func() []byte { return pkt.Data().AsRange().ToSlice() }}
	return c.i.HandleEcho(req) || refused
}

// WriteEchoReply sends a peer an ICMP echo reply from, the address it
// pinged, to, its own address, with the identifier, sequence number and
// data of its request: how an inbound.Interceptor answers an
// inbound.EchoRequest it forwarded. Both addresses are of one IP version.
func (n *Net) WriteEchoReply(from, to netip.Addr, id, seq uint16, data []byte) {
	if to.Is4() {
		n.engine.WritePackets([][]byte{echoReply4(from, to, id, seq, data)})
	} else {
		n.engine.WritePackets([][]byte{echoReply6(from, to, id, seq, data)})
	}
}

// echoReply4 builds an IPv4 echo reply from src to dst.
func echoReply4(src, dst netip.Addr, id, seq uint16, data []byte) []byte {
	total := header.IPv4MinimumSize + header.ICMPv4MinimumSize + len(data)
	b := make([]byte, total)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(total),
		Flags:       header.IPv4FlagDontFragment,
		TTL:         64,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     tcpip.AddrFrom4(src.As4()),
		DstAddr:     tcpip.AddrFrom4(dst.As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	ic := header.ICMPv4(b[header.IPv4MinimumSize:])
	ic.SetType(header.ICMPv4EchoReply)
	ic.SetIdent(id)
	ic.SetSequence(seq)
	copy(ic[header.ICMPv4MinimumSize:], data)
	ic.SetChecksum(^checksum.Checksum(ic, 0))
	return b
}

// echoReply6 builds an IPv6 echo reply from src to dst.
func echoReply6(src, dst netip.Addr, id, seq uint16, data []byte) []byte {
	icmpLen := header.ICMPv6EchoMinimumSize + len(data)
	b := make([]byte, header.IPv6MinimumSize+icmpLen)
	srcA, dstA := tcpip.AddrFrom16(src.As16()), tcpip.AddrFrom16(dst.As16())
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(icmpLen),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          64,
		SrcAddr:           srcA,
		DstAddr:           dstA,
	})
	ic := header.ICMPv6(b[header.IPv6MinimumSize:])
	ic.SetType(header.ICMPv6EchoReply)
	ic.SetIdent(id)
	ic.SetSequence(seq)
	copy(ic[header.ICMPv6EchoMinimumSize:], data)
	ic.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: ic[:header.ICMPv6EchoMinimumSize], Src: srcA, Dst: dstA,
		PayloadCsum: checksum.Checksum(data, 0), PayloadLen: len(data),
	}))
	return b
}
