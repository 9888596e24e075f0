package netstack

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/clock"
)

// packetWriter is the engine's outbound side: protocol.Engine satisfies
// it. An interface keeps the link endpoint testable on its own.
type packetWriter interface {
	WriteScattered(pkts protocol.ScatteredPackets)
}

// linkEndpoint joins gVisor to the WireGuard engine. Both directions move
// whole batches with no goroutine in between: gVisor's WritePackets calls
// straight into the engine, and the engine (a peer's goroutine, or the
// socket's for a small batch) calls DeliverPackets, which hands packets
// straight to gVisor's dispatcher.
// That removes the channel endpoint and its notifier goroutine, the
// per-packet hop that limits the wireguard-go netstack.
//
// It uses three offloads (see offloads), each kept because the same-run
// offloads benchmark showed it paying: inbound checksums are not verified,
// inbound TCP segments of a batch are coalesced (GRO), and gVisor's TCP
// hands over super-segments of up to 64 KB that WritePackets cuts into
// MTU-sized segments while the engine copies them (GSO, gso.go). GSO pays
// most: no kernel TUN is crossed here, but every segment gVisor builds
// costs a trip through its TCP, IP and NIC layers and, in the engine, a
// batch of its own with two channel hand-offs and a sendmmsg. With GSO a
// write reaches the engine as one batch of about 16 segments (22 KB on
// average in an upload), where it was one each. It lowers the CPU per
// byte in both directions; wgbench's pairs measure it against
// wireguard-go's netstack.
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

	// offloads are the offloads in use, offloadAll but in benchmarks
	// that measure what each one pays.
	offloads offloads

	// acks keeps each connection's latest pure acknowledgement, for
	// PeerReturned (recovery_acks.go).
	acks       ackTable
	resentAcks atomic.Uint64
	// echoes keeps what the timestamp echo needs after a silence
	// (recovery_echo.go), and clock says when segments arrive.
	echoes echoTable
	clock  clock.Clock
	// delay holds pure acknowledgements for a segment to carry them
	// (delack.go).
	delay ackDelayer
	// fins drops FINs repeated too soon in a burst (finresend.go).
	fins finTable

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
}

// offloads selects the link endpoint's offloads, each of which the
// same-run TCPThroughput benchmark showed paying (figures in the doc
// comments where each is used).
type offloads uint8

const (
	// offloadRXChecksum: inbound checksums are not verified
	// (CapabilityRXChecksumOffload).
	offloadRXChecksum offloads = 1 << iota
	// offloadGRO: inbound TCP segments of a batch are coalesced.
	offloadGRO
	// offloadGSO: gVisor's TCP hands over super-segments that the
	// endpoint cuts into MTU-sized segments.
	offloadGSO

	offloadAll = offloadRXChecksum | offloadGRO | offloadGSO
)

var (
	_ stack.LinkEndpoint    = (*linkEndpoint)(nil)
	_ protocol.PeerReturner = (*linkEndpoint)(nil)
)

func newLinkEndpoint(mtu int, engine packetWriter) *linkEndpoint {
	l := &linkEndpoint{mtu: uint32(mtu), engine: engine, offloads: offloadAll, clock: clock.System{}}
	l.delay.wait = ackDelay
	l.delay.segment = uint32(mtu - header.IPv4MinimumSize - header.TCPMinimumSize)
	l.delay.after = clock.System{}.AfterFunc
	l.delay.flush = l.write
	return l
}

// DeliverPackets is the engine's PacketSide: decrypted packets from one
// peer, valid only during the call. gVisor gets its own copy of each, since
// it keeps packets in reassembly and receive queues beyond the call.
//
// With offloadGRO, consecutive in-order TCP segments of a flow within the
// batch are coalesced by gVisor's GRO before its TCP sees them, and the
// batch is flushed before returning, so nothing waits for a later batch
// and GRO adds no latency. GRO coalesces only what continues a flow
// exactly: same addresses, ports, ACK, header length and options
// (timestamps included), contiguous sequence numbers and equal segment
// sizes; anything else (a loss, a reordering, SYN/FIN/RST/URG/PSH, CWR)
// flushes. It needs offloadRXChecksum: the merged packet's IPv4 header
// checksum is not updated, and AEAD-authenticated packets need no
// checksum check anyway.
//
// Each TCP segment's timestamp is noted for the echo after a silence
// (recovery_echo.go).
func (l *linkEndpoint) DeliverPackets(pkts [][]byte) {
	l.mu.RLock()
	d := l.dispatcher
	l.mu.RUnlock()
	if d == nil {
		return
	}
	now := l.clock.Now().UnixNano()
	var g *gro.GRO
	if l.offloads&(offloadGRO|offloadRXChecksum) == offloadGRO|offloadRXChecksum && len(pkts) > 1 {
		g = groPool.Get().(*gro.GRO)
		g.Dispatcher = d
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
		if tcp := ipTCPHeader(p); tcp != nil {
			l.echoes.heard(p, tcp, now)
		}
		pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		if g != nil {
			pkb.NetworkProtocolNumber = proto
			pkb.RXChecksumValidated = true
			g.Enqueue(pkb)
		} else {
			d.DeliverNetworkPacket(proto, pkb)
		}
		pkb.DecRef()
	}
	if g != nil {
		g.Flush()
		g.Dispatcher = nil
		groPool.Put(g)
	}
}

// groPool holds GRO state, which is per DeliverPackets call: the engine
// delivers different peers' batches concurrently, and a gro.GRO is not
// safe for that. Pooled, since one is about 7 KB.
var groPool = sync.Pool{New: func() any {
	g := new(gro.GRO)
	g.Init(true)
	return g
}}

// WritePackets hands a batch of outbound packets to the engine in one
// call. The engine gathers each packet's pieces straight into its own
// buffer, so the only copy is the one encryption needs anyway; TCP
// super-segments are cut into MTU-sized segments during that copy.
// Before that, the timestamp echo is set where a connection catches up
// after a silence (recovery_echo.go), each connection's latest pure
// acknowledgement is kept (recovery_acks.go), and a pure acknowledgement
// may be held back for the answer to carry it (delack.go); a FIN
// repeated too soon in a burst of them is dropped first
// (finresend.go).
func (l *linkEndpoint) WritePackets(list stack.PacketBufferList) (int, tcpip.Error) {
	all := list.AsSlice()
	n := len(all)
	// out is all less what is held or dropped, once something is:
	// gVisor's list itself must stay as it is, since gVisor drops its
	// references.
	var out *[]*stack.PacketBuffer
	anyLocal := false
	for i, p := range all {
		local := l.isLocal(p)
		anyLocal = anyLocal || local
		// skip: p does not go now, held back (with a reference taken)
		// or dropped.
		skip := false
		if p.TransportProtocolNumber == header.TCPProtocolNumber {
			th := p.TransportHeader().Slice()
			if k, ok := keyOf(p.NetworkHeader().Slice(), th, false); ok {
				// A FIN repeated too soon never leaves, so the tables
				// of what left do not see it.
				skip = !local && finOnly(th) && l.fins.repeat(p, th, &k, l.clock)
				if !skip {
					l.echoes.echo(p, k)
					l.acks.record(p, k)
					skip = !local && l.delay.hold(p, k)
				}
				if skip && out == nil {
					out = keptPool.Get().(*[]*stack.PacketBuffer)
					*out = append((*out)[:0], all[:i]...)
				}
			}
		}
		if out != nil && !skip {
			*out = append(*out, p)
		}
	}
	if out != nil {
		all = *out
		defer func() {
			clear(*out)
			keptPool.Put(out)
		}()
	}
	switch {
	case len(all) == 0:
	case anyLocal: // a held packet is never local
		l.writeLooping(all)
	default:
		l.write(all)
	}
	return n, nil
}

// keptPool holds the lists of a batch's packets that are not held back.
var keptPool = sync.Pool{New: func() any { return new([]*stack.PacketBuffer) }}

// write hands packets to the engine, through a pooled segmentedPackets
// that does not allocate: boxing a slice type into the engine's interface
// would allocate on every call.
func (l *linkEndpoint) write(pkts []*stack.PacketBuffer) {
	s := segmentPackets(pkts, int(l.mtu))
	l.engine.WriteScattered(s)
	s.release()
}

// isLocal reports whether p is for one of our own addresses. It reads the
// destination from the header bytes: PacketBuffer.Network boxes the header
// into an interface, an allocation per packet (65,537 of them in a 200 MiB
// TCPThroughput run's memory profile).
func (l *linkEndpoint) isLocal(p *stack.PacketBuffer) bool {
	if len(l.local) == 0 {
		return false
	}
	h := p.NetworkHeader().Slice()
	switch header.IPVersion(h) {
	case header.IPv4Version:
		if len(h) >= header.IPv4MinimumSize {
			return l.owns(header.IPv4(h).DestinationAddress())
		}
	case header.IPv6Version:
		if len(h) >= header.IPv6MinimumSize {
			return l.owns(header.IPv6(h).DestinationAddress())
		}
	}
	return false
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
		l.write(out)
	}
	return len(all), nil
}

func (l *linkEndpoint) MTU() uint32             { return l.mtu }
func (l *linkEndpoint) SetMTU(mtu uint32)       { l.mtu = mtu }
func (l *linkEndpoint) MaxHeaderLength() uint16 { return 0 }
func (l *linkEndpoint) LinkAddress() tcpip.LinkAddress {
	return ""
}
func (l *linkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities: there is no link layer to resolve. Outbound checksums are
// computed (by gVisor, or for super-segments in finishSegment), since
// packets leave for a real peer's stack. Inbound ones are not verified with
// offloadRXChecksum: every packet the engine delivers was authenticated by
// WireGuard's AEAD, which catches any corruption a checksum could, and
// wireguard-go's and Tailscale's netstacks skip them too. gVisor takes this
// from the capability, not from PacketBuffer.RXChecksumValidated, which
// its NIC overwrites on every inbound packet.
func (l *linkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	if l.offloads&offloadRXChecksum != 0 {
		return stack.CapabilityRXChecksumOffload
	}
	return 0
}

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
func (l *linkEndpoint) Close() {
	l.delay.close()
	l.Attach(nil)
}
func (l *linkEndpoint) SetOnCloseAction(func()) {}
