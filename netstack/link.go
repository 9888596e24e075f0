package netstack

import (
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/wgbore/wgbore/protocol"
)

// packetWriter is the engine's outbound side: protocol.Engine satisfies
// it. An interface keeps the link endpoint testable on its own.
type packetWriter interface {
	WriteScattered(pkts protocol.ScatteredPackets)
}

// linkEndpoint joins gVisor to the WireGuard engine. Both directions move
// whole batches with no goroutine in between: gVisor's WritePackets calls
// straight into the engine, and the engine's per-peer goroutine calls
// DeliverPackets, which hands packets straight to gVisor's dispatcher.
// That removes the channel endpoint and its notifier goroutine, the
// per-packet hop that limits the wireguard-go netstack.
//
// GSO and GRO are not used yet. Tailscale's endpoint lets gVisor hand it
// TCP super-segments (GSO) and coalesces inbound segments (GRO) because
// its packets cross a kernel TUN, where each packet is a system call. Here
// no packet crosses the kernel between the stack and the engine, so the
// gain is only gVisor's per-segment work: worth measuring in the
// performance issue, with the engine splitting super-segments into
// MTU-sized packets. Tailscale also found gVisor's GRO crashing (their PR
// 13138), so it has to earn its place with a benchmark.
type linkEndpoint struct {
	mtu    uint32
	engine packetWriter
	// local are our own tunnel addresses, set before the NIC exists and
	// never changed: packets to them loop back instead of leaving. The
	// stack runs without HandleLocal, which gVisor's promiscuous mode
	// (server mode) cannot be combined with: with both, the IP layer
	// takes every inbound source address for one of ours and drops the
	// packet as a martian.
	local []tcpip.Address

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
}

var _ stack.LinkEndpoint = (*linkEndpoint)(nil)

func newLinkEndpoint(mtu int, engine packetWriter) *linkEndpoint {
	return &linkEndpoint{mtu: uint32(mtu), engine: engine}
}

// DeliverPackets is the engine's PacketSide: decrypted packets from one
// peer, valid only during the call. gVisor gets its own copy of each, since
// it keeps packets in reassembly and receive queues beyond the call.
func (l *linkEndpoint) DeliverPackets(pkts [][]byte) {
	l.mu.RLock()
	d := l.dispatcher
	l.mu.RUnlock()
	if d == nil {
		return
	}
	for _, p := range pkts {
		var proto tcpip.NetworkProtocolNumber
		switch header.IPVersion(p) {
		case header.IPv4Version:
			proto = ipv4.ProtocolNumber
		case header.IPv6Version:
			proto = ipv6.ProtocolNumber
		default:
			continue
		}
		pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		d.DeliverNetworkPacket(proto, pkb)
		pkb.DecRef()
	}
}

// WritePackets hands a batch of outbound packets to the engine in one
// call. The engine gathers each packet's pieces straight into its own
// buffer, so the only copy is the one encryption needs anyway.
func (l *linkEndpoint) WritePackets(list stack.PacketBufferList) (int, tcpip.Error) {
	all := list.AsSlice()
	for _, p := range all {
		if l.isLocal(p) {
			return l.writeLooping(all)
		}
	}
	l.engine.WriteScattered(packetBuffers(all))
	return len(all), nil
}

func (l *linkEndpoint) isLocal(p *stack.PacketBuffer) bool {
	nh := p.Network()
	if nh == nil {
		return false
	}
	return l.owns(nh.DestinationAddress())
}

// owns reports whether a is one of our tunnel addresses, without the
// allocation of asking the stack.
func (l *linkEndpoint) owns(a tcpip.Address) bool {
	for _, own := range l.local {
		if own == a {
			return true
		}
	}
	return false
}

// writeLooping is WritePackets for a batch with packets to ourselves:
// those go back to the stack as fresh inbound packets, as gVisor's
// loopback link endpoint does, and the rest to the engine.
func (l *linkEndpoint) writeLooping(all []*stack.PacketBuffer) (int, tcpip.Error) {
	l.mu.RLock()
	d := l.dispatcher
	l.mu.RUnlock()
	out := make([]*stack.PacketBuffer, 0, len(all))
	for _, p := range all {
		if !l.isLocal(p) {
			out = append(out, p)
			continue
		}
		in := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: p.ToBuffer()})
		if d != nil {
			d.DeliverNetworkPacket(p.NetworkProtocolNumber, in)
		}
		in.DecRef()
	}
	if len(out) > 0 {
		l.engine.WriteScattered(packetBuffers(out))
	}
	return len(all), nil
}

// packetBuffers lets the engine read gVisor's packets in place.
type packetBuffers []*stack.PacketBuffer

func (p packetBuffers) Len() int       { return len(p) }
func (p packetBuffers) Size(i int) int { return p[i].Size() }

// CopyTo walks the packet's views rather than calling AsSlices, which
// allocates a slice per packet.
func (p packetBuffers) CopyTo(i int, dst []byte) {
	views, skip := p[i].AsViewList()
	for v := views.Front(); v != nil && len(dst) > 0; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		n := copy(dst, b[skip:])
		dst = dst[n:]
		skip = 0
	}
}

func (l *linkEndpoint) MTU() uint32             { return l.mtu }
func (l *linkEndpoint) SetMTU(mtu uint32)       { l.mtu = mtu }
func (l *linkEndpoint) MaxHeaderLength() uint16 { return 0 }
func (l *linkEndpoint) LinkAddress() tcpip.LinkAddress {
	return ""
}
func (l *linkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities: none. There is no link layer to resolve, and checksums are
// computed by gVisor, since packets leave for a real peer's stack.
func (l *linkEndpoint) Capabilities() stack.LinkEndpointCapabilities { return 0 }

func (l *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
}

func (l *linkEndpoint) IsAttached() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.dispatcher != nil
}

func (l *linkEndpoint) Wait()                                   {}
func (l *linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (l *linkEndpoint) AddHeader(*stack.PacketBuffer)           {}
func (l *linkEndpoint) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (l *linkEndpoint) Close()                                  { l.Attach(nil) }
func (l *linkEndpoint) SetOnCloseAction(func())                 {}
