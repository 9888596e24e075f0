// Package inbound names what a tunnel's stack hands over in server mode:
// the peers' new flows and echo requests to destinations that are not
// the stack's own, and the Interceptor that takes them over
// (netstack.Net.Intercept). It holds no part of the stack, so that what
// takes the flows over (proxy/egress) depends on these few types and not
// on gVisor.
package inbound

import (
	"net"
	"net/netip"

	"github.com/wgbore/wgbore/protocol"
)

// Flow is a peer's new TCP connection or UDP flow that no listener of
// ours claims, described by what only the stack knows, so that an
// Interceptor can judge it without knowing the stack.
type Flow struct {
	// Network is "tcp" or "udp".
	Network string
	// Peer sent the flow: the peer whose AllowedIPs hold Source, which
	// cryptokey routing guarantees for every packet from the tunnel.
	Peer protocol.PublicKey
	// Source is the peer's end of the flow.
	Source netip.AddrPort
	// Destination is where the peer addressed the flow, as it addressed
	// it: an IPv4 destination may come IPv4-mapped in an IPv6 packet.
	Destination netip.AddrPort
	// ToUs reports that Destination is one of our tunnel addresses, on a
	// port no listener of ours holds.
	ToUs bool
	// InTunnel reports that Destination, unmapped, is one of our
	// addresses or lies inside some peer's AllowedIPs: it lives in the
	// tunnel, not on the host's network.
	InTunnel bool
}

// EchoRequest is a peer's ICMP echo request (IPv4 or IPv6) to an address
// that is not ours, which gVisor would not answer.
type EchoRequest struct {
	// Peer sent the request, found as for Flow.
	Peer protocol.PublicKey
	// Source is the peer's address; Destination is the pinged one,
	// unmapped.
	Source, Destination netip.Addr
	// InTunnel is as for Flow.
	InTunnel bool
	// ID and Seq are the request's identifier and sequence number, which
	// the reply must carry.
	ID, Seq uint16
	// Payload copies the request's data, which the reply must carry. It
	// is a function, not the data, so that a request the interceptor
	// drops costs no copy; it may be called only until HandleEcho
	// returns.
	Payload func() []byte
}

// Interceptor takes over the peers' flows to destinations that no
// listener of the stack serves: see netstack.Net.Intercept.
type Interceptor interface {
	// AdmitFlow decides, in the packet path, whether a new flow is
	// taken: false refuses it at once. It must not block.
	AdmitFlow(Flow) bool
	// HandleTCP runs on a goroutine of its own for each admitted TCP
	// connection request, while the peer's SYN waits. accept completes
	// the peer's handshake and returns the connection; returning without
	// a successful accept answers the SYN with an RST.
	HandleTCP(f Flow, accept func() (net.Conn, error))
	// HandleUDP runs in the packet path for an admitted UDP flow's first
	// datagram, and must not block. accept, called before HandleUDP
	// returns, gives the flow's connection, which holds that datagram
	// and reads the flow's later ones; returning without a successful
	// accept answers with an ICMP port unreachable.
	HandleUDP(f Flow, accept func() (net.Conn, error))
	// HandleEcho runs in the packet path for an echo request, and must
	// not block. It reports whether the request was taken; an answer,
	// if any, comes through Net.WriteEchoReply.
	HandleEcho(EchoRequest) bool
	// Stop refuses new flows and ends those under way, host dials
	// included, without waiting for anything. The Net's Close calls it
	// before the stack closes, so that no flow is admitted, and no
	// handshake started, while the stack shuts down.
	Stop()
	// Close stops, as Stop does, and waits for the interceptor's
	// goroutines. The Net's Close calls it once the stack has closed,
	// when every flow's connection has failed; its owner may call it
	// first.
	Close() error
}
