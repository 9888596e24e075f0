package netstack

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// recordingDispatcher keeps a flat copy of every packet delivered to it.
type recordingDispatcher struct {
	pkts [][]byte
}

func (r *recordingDispatcher) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if r == nil {
		return
	}
	b := make([]byte, pkt.Size())
	copyPacket(pkt, 0, b)
	r.pkts = append(r.pkts, b)
}

func (*recordingDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// inboundSegment is what a peer sends: an IPv4 TCP segment carrying
// stream[off:off+n], with correct checksums.
func inboundSegment(stream []byte, off, n int, flags header.TCPFlags) []byte {
	const hdr = header.IPv4MinimumSize + header.TCPMinimumSize + 12
	b := make([]byte, hdr+n)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), ID: uint16(off), Flags: header.IPv4FlagDontFragment,
		TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: segDst4, DstAddr: segSrc4,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(b[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{
		SrcPort: 19, DstPort: 40000, SeqNum: 1000 + uint32(off), AckNum: 77,
		DataOffset: header.TCPMinimumSize + 12, Flags: flags, WindowSize: 1000,
	})
	copy(tcp[header.TCPMinimumSize:], timestamps(5, 6))
	copy(tcp[header.TCPMinimumSize+12:], stream[off:off+n])
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, segDst4, segSrc4, uint16(len(tcp)))
	xsum = checksum.Combine(xsum, checksum.Checksum(stream[off:off+n], 0))
	tcp.SetChecksum(^tcp.CalculateChecksum(xsum))
	return b
}

// checkDelivered checks that every delivered packet is one contiguous
// piece of stream with consistent headers, and returns the pieces'
// offsets and lengths.
func checkDelivered(t *testing.T, stream []byte, got [][]byte) [][2]int {
	t.Helper()
	var pieces [][2]int
	for i, b := range got {
		ip := header.IPv4(b)
		if int(ip.TotalLength()) != len(b) {
			t.Fatalf("packet %d: total length %d, %d bytes", i, ip.TotalLength(), len(b))
		}
		tcp := header.TCP(b[header.IPv4MinimumSize:])
		data := tcp[tcp.DataOffset():]
		off := int(tcp.SequenceNumber() - 1000)
		if off < 0 || off+len(data) > len(stream) || !bytes.Equal(data, stream[off:off+len(data)]) {
			t.Fatalf("packet %d: payload is not stream[%d:%d]", i, off, off+len(data))
		}
		pieces = append(pieces, [2]int{off, len(data)})
	}
	return pieces
}

func TestGRO(t *testing.T) {
	stream := testPayload(20 * 1000)
	seg := func(k int, flags header.TCPFlags) []byte {
		return inboundSegment(stream, k*1000, 1000, header.TCPFlagAck|flags)
	}
	for _, tc := range []struct {
		name  string
		batch [][]byte
		want  [][2]int // offset, length of each delivered packet
	}{
		{"in order", [][]byte{seg(0, 0), seg(1, 0), seg(2, 0), seg(3, 0)}, [][2]int{{0, 4000}}},
		{"loss", [][]byte{seg(0, 0), seg(1, 0), seg(3, 0), seg(4, 0)}, [][2]int{{0, 2000}, {3000, 2000}}},
		{"reorder", [][]byte{seg(0, 0), seg(2, 0), seg(1, 0)}, [][2]int{{0, 1000}, {2000, 1000}, {1000, 1000}}},
		{"duplicate", [][]byte{seg(0, 0), seg(1, 0), seg(1, 0)}, [][2]int{{0, 2000}, {1000, 1000}}},
		{"push ends it", [][]byte{seg(0, 0), seg(1, header.TCPFlagPsh), seg(2, 0), seg(3, 0)}, [][2]int{{0, 2000}, {2000, 2000}}},
		{"short ends it", [][]byte{seg(0, 0), inboundSegment(stream, 1000, 500, header.TCPFlagAck), seg(2, 0)}, [][2]int{{0, 1500}, {2000, 1000}}},
		{"fin", [][]byte{seg(0, 0), seg(1, header.TCPFlagFin)}, [][2]int{{0, 2000}}},
		{"one", [][]byte{seg(0, 0)}, [][2]int{{0, 1000}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLinkEndpoint(1420, nil)
			var d recordingDispatcher
			l.Attach(&d)
			l.DeliverPackets(tc.batch)
			got := checkDelivered(t, stream, d.pkts)
			if len(got) != len(tc.want) {
				t.Fatalf("delivered %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("delivered %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// BenchmarkDeliverPackets measures DeliverPackets alone, with a dispatcher
// that drops what it gets: a batch of 32 in-order full-sized segments, as
// a download delivers them.
func BenchmarkDeliverPackets(b *testing.B) {
	stream := testPayload(32 * 1368)
	batch := make([][]byte, 32)
	for k := range batch {
		batch[k] = inboundSegment(stream, k*1368, 1368, header.TCPFlagAck)
	}
	for _, o := range []offloads{offloadRXChecksum, offloadAll} {
		name := "gro"
		if o&offloadGRO == 0 {
			name = "nogro"
		}
		b.Run(name, func(b *testing.B) {
			l := newLinkEndpoint(1420, nil)
			l.offloads = o
			l.Attach((*recordingDispatcher)(nil))
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			for b.Loop() {
				l.DeliverPackets(batch)
			}
		})
	}
}
