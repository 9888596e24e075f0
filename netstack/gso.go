package netstack

import (
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gsoMaxSize is the largest TCP super-segment gVisor may hand the link
// endpoint: the most an IPv4 total length can say. At a 1420-byte MTU it
// splits into 47 segments, which the engine encrypts and sends as one
// batch (one sendmmsg) instead of 47 trips through gVisor's TCP, IP and
// link layers, each with its own channel hand-offs in the engine.
const gsoMaxSize = 1<<16 - 1

// segmentedPackets presents a WritePackets batch to the engine as the
// packets that leave: each TCP super-segment (pkt.GSOOptions of type
// GSOTCPv4 or GSOTCPv6) as the MTU-sized segments a NIC would cut it into,
// every other packet as it is. The engine asks for each packet's size and
// then has it copied into its own buffer, so a segment's headers are
// written, fixed up and checksummed right there: the copy the engine makes
// anyway is the only one.
//
// segs is built before the engine sees the batch, so that Len and Size are
// lookups; a segmentedPackets is pooled and reused, so WritePackets does not
// allocate at steady state.
type segmentedPackets struct {
	pkts []*stack.PacketBuffer
	segs []segment
}

// segment is one packet the engine sends: bytes [off, off+n) of packet
// pkt's TCP payload behind a copy of its headers, or, when raw, the whole
// packet as gVisor built it.
type segment struct {
	pkt  int32
	off  int32
	n    int32
	hdr  int32 // IP and TCP header bytes in front of the payload
	nh   int32 // IP header bytes
	k    int32 // which of the super-segment's segments this is
	raw  bool
	last bool
}

var segmentedPool = sync.Pool{New: func() any { return new(segmentedPackets) }}

// segmentPackets plans the batch's segments for an engine of MTU mtu.
func segmentPackets(all []*stack.PacketBuffer, mtu int) *segmentedPackets {
	s := segmentedPool.Get().(*segmentedPackets)
	s.pkts = all
	for i, p := range all {
		s.segs = appendSegments(s.segs, int32(i), p, mtu)
	}
	return s
}

func (s *segmentedPackets) release() {
	s.pkts = nil
	s.segs = s.segs[:0]
	segmentedPool.Put(s)
}

// appendSegments appends packet i's segments. Anything that is not a
// well-formed TCP super-segment goes out whole, as gVisor built it.
func appendSegments(segs []segment, i int32, p *stack.PacketBuffer, mtu int) []segment {
	switch p.GSOOptions.Type {
	case stack.GSOTCPv4, stack.GSOTCPv6:
	default:
		return append(segs, segment{pkt: i, raw: true, n: int32(p.Size())})
	}
	nh := len(p.NetworkHeader().Slice())
	hdr := nh + len(p.TransportHeader().Slice())
	payload := p.Data().Size()
	if p.TransportProtocolNumber != header.TCPProtocolNumber || hdr+payload != p.Size() {
		return append(segs, segment{pkt: i, raw: true, n: int32(p.Size())})
	}
	mss := int(p.GSOOptions.MSS)
	if room := mtu - hdr; mss == 0 || mss > room {
		mss = room
	}
	if mss <= 0 {
		// Headers alone exceed the MTU: the engine drops it as too large.
		return append(segs, segment{pkt: i, raw: true, n: int32(p.Size())})
	}
	off := 0
	for k := int32(0); ; k++ {
		n := min(mss, payload-off)
		segs = append(segs, segment{
			pkt: i, off: int32(off), n: int32(n), hdr: int32(hdr), nh: int32(nh), k: k,
			last: off+n == payload,
		})
		off += n
		if off == payload {
			return segs
		}
	}
}

func (s *segmentedPackets) Len() int { return len(s.segs) }

func (s *segmentedPackets) Size(i int) int {
	g := &s.segs[i]
	return int(g.hdr + g.n)
}

func (s *segmentedPackets) CopyTo(i int, dst []byte) {
	g := &s.segs[i]
	p := s.pkts[g.pkt]
	if g.raw {
		copyPacket(p, 0, dst)
		return
	}
	copyPacket(p, 0, dst[:g.hdr])
	copyPacket(p, int(g.hdr+g.off), dst[g.hdr:g.hdr+g.n])
	finishSegment(dst[:g.hdr+g.n], int(g.nh), uint32(g.off), uint16(g.k), g.last)
}

// finishSegment fixes up segment k of a super-segment, already in pkt: its
// headers (nh bytes of IP header, then the TCP header) and the payload
// that starts at byte off of the super-segment's. It sets the lengths, the
// IPv4 ID, the sequence number, the flags, and both checksums, computed in
// full: gVisor left only the pseudo-header sum in the TCP checksum, as for
// a NIC that finishes it.
func finishSegment(pkt []byte, nh int, off uint32, k uint16, last bool) {
	tcp := header.TCP(pkt[nh:])
	var pseudo uint16
	switch header.IPVersion(pkt) {
	case header.IPv4Version:
		ip := header.IPv4(pkt)
		ip.SetTotalLength(uint16(len(pkt)))
		// Linux numbers the IDs of a super-segment's pieces in sequence;
		// a constant ID would look like one packet's fragments.
		ip.SetID(ip.ID() + k)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		pseudo = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	case header.IPv6Version:
		ip := header.IPv6(pkt)
		ip.SetPayloadLength(uint16(len(pkt) - header.IPv6MinimumSize))
		pseudo = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	}
	tcp.SetSequenceNumber(tcp.SequenceNumber() + off)
	flags := tcp.Flags()
	if !last {
		flags &^= header.TCPFlagFin | header.TCPFlagPsh
	}
	if k > 0 {
		flags &^= header.TCPFlagCwr
	}
	tcp.SetFlags(uint8(flags))
	tcp.SetChecksum(0)
	tcp.SetChecksum(^checksum.Checksum(tcp, pseudo))
}

// copyPacket copies packet p's bytes from offset off into dst, until dst
// is full, walking its views rather than calling AsSlices, which allocates.
func copyPacket(p *stack.PacketBuffer, off int, dst []byte) {
	views, skip := p.AsViewList()
	skip += off
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

// SupportedGSO tells gVisor's TCP that this endpoint cuts super-segments
// itself (stack.GSOEndpoint). HostGSOSupported, not GVisorGSOSupported:
// with the latter gVisor splits them again before the link endpoint, and
// every segment still takes its own trip through IP, the NIC and the
// engine. GSO comes only with offloadRXChecksum: a super-segment to one of
// our own addresses loops back whole, with only the pseudo-header sum in
// its TCP checksum.
func (l *linkEndpoint) SupportedGSO() stack.SupportedGSO {
	if l.offloads&(offloadGSO|offloadRXChecksum) != offloadGSO|offloadRXChecksum {
		return stack.GSONotSupported
	}
	return stack.HostGSOSupported
}

// GSOMaxSize implements stack.GSOEndpoint.
func (l *linkEndpoint) GSOMaxSize() uint32 {
	if l.SupportedGSO() == stack.GSONotSupported {
		return 0
	}
	return gsoMaxSize
}

var _ stack.GSOEndpoint = (*linkEndpoint)(nil)
