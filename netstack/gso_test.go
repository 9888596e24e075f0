package netstack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/wgbore/wgbore/protocol"
)

// superSegment describes a TCP super-segment as gVisor's TCP hands it to a
// link endpoint with host GSO.
type superSegment struct {
	v6      bool
	id      uint16
	seq     uint32
	ack     uint32
	flags   header.TCPFlags
	wnd     uint16
	opts    []byte // a multiple of 4 bytes
	mss     uint16
	payload []byte
	port    uint16 // the source port; 0 for 40000
}

func (ss superSegment) srcPort() uint16 {
	if ss.port == 0 {
		return 40000
	}
	return ss.port
}

var (
	segSrc4 = tcpip.AddrFrom4([4]byte{10, 0, 0, 1})
	segDst4 = tcpip.AddrFrom4([4]byte{10, 0, 0, 2})
	segSrc6 = tcpip.AddrFrom16([16]byte{0xfd, 0, 15: 1})
	segDst6 = tcpip.AddrFrom16([16]byte{0xfd, 0, 15: 2})
)

// timestamps is the TCP option block gVisor sends on every segment of a
// connection that negotiated timestamps: NOP, NOP, TS.
func timestamps(val, ecr uint32) []byte {
	b := []byte{1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[4:], val)
	binary.BigEndian.PutUint32(b[8:], ecr)
	return b
}

// packet builds ss as gVisor would: a PacketBuffer whose payload is in
// pieces, TCP and IP headers pushed in front, and only the pseudo-header
// sum (for the whole length) in the TCP checksum, as CHECKSUM_PARTIAL.
func (ss superSegment) packet() *stack.PacketBuffer {
	var payload buffer.Buffer
	// Several views, so that segments straddle view boundaries.
	for rest := ss.payload; len(rest) > 0; {
		n := min(len(rest), 1000)
		payload.Append(buffer.NewViewWithData(rest[:n]))
		rest = rest[n:]
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{ReserveHeaderBytes: header.IPv6MinimumSize + header.TCPHeaderMaximumSize, Payload: payload})
	tcpLen := header.TCPMinimumSize + len(ss.opts)
	tcp := header.TCP(pkt.TransportHeader().Push(tcpLen))
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	tcp.Encode(&header.TCPFields{
		SrcPort: ss.srcPort(), DstPort: 9, SeqNum: ss.seq, AckNum: ss.ack,
		DataOffset: uint8(tcpLen), Flags: ss.flags, WindowSize: ss.wnd,
	})
	copy(tcp[header.TCPMinimumSize:], ss.opts)
	src, dst := ss.addrs()
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(pkt.Size())))
	gso := stack.GSO{NeedsCsum: true, CsumOffset: header.TCPChecksumOffset, MSS: ss.mss, MaxSize: gsoMaxSize}
	if ss.v6 {
		ip := header.IPv6(pkt.NetworkHeader().Push(header.IPv6MinimumSize))
		ip.Encode(&header.IPv6Fields{
			PayloadLength: uint16(pkt.Size() - header.IPv6MinimumSize), TransportProtocol: header.TCPProtocolNumber,
			HopLimit: 64, SrcAddr: src, DstAddr: dst,
		})
		pkt.NetworkProtocolNumber = header.IPv6ProtocolNumber
		gso.Type, gso.L3HdrLen = stack.GSOTCPv6, header.IPv6MinimumSize
	} else {
		ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(pkt.Size()), ID: ss.id, Flags: header.IPv4FlagDontFragment,
			TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
		gso.Type, gso.L3HdrLen = stack.GSOTCPv4, header.IPv4MinimumSize
	}
	pkt.GSOOptions = gso
	return pkt
}

func (ss superSegment) addrs() (src, dst tcpip.Address) {
	if ss.v6 {
		return segSrc6, segDst6
	}
	return segSrc4, segDst4
}

// reference segments ss the way Linux's tcp_gso_segment does, written
// independently of the splitter: each segment built from scratch.
func (ss superSegment) reference(mtu int) [][]byte {
	ipLen := header.IPv4MinimumSize
	if ss.v6 {
		ipLen = header.IPv6MinimumSize
	}
	tcpLen := header.TCPMinimumSize + len(ss.opts)
	mss := int(ss.mss)
	if room := mtu - ipLen - tcpLen; mss == 0 || mss > room {
		mss = room
	}
	var out [][]byte
	src, dst := ss.addrs()
	for k, off := 0, 0; ; k++ {
		n := min(mss, len(ss.payload)-off)
		last := off+n == len(ss.payload)
		flags := ss.flags
		if !last {
			flags &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if k > 0 {
			flags &^= header.TCPFlagCwr
		}
		b := make([]byte, ipLen+tcpLen+n)
		if ss.v6 {
			header.IPv6(b).Encode(&header.IPv6Fields{
				PayloadLength: uint16(len(b) - ipLen), TransportProtocol: header.TCPProtocolNumber,
				HopLimit: 64, SrcAddr: src, DstAddr: dst,
			})
		} else {
			ip := header.IPv4(b)
			ip.Encode(&header.IPv4Fields{
				TotalLength: uint16(len(b)), ID: ss.id + uint16(k), Flags: header.IPv4FlagDontFragment,
				TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst,
			})
			ip.SetChecksum(^ip.CalculateChecksum())
		}
		tcp := header.TCP(b[ipLen:])
		tcp.Encode(&header.TCPFields{
			SrcPort: ss.srcPort(), DstPort: 9, SeqNum: ss.seq + uint32(off), AckNum: ss.ack,
			DataOffset: uint8(tcpLen), Flags: flags, WindowSize: ss.wnd,
		})
		copy(tcp[header.TCPMinimumSize:], ss.opts)
		copy(tcp[tcpLen:], ss.payload[off:off+n])
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(tcpLen+n))
		xsum = checksum.Combine(xsum, checksum.Checksum(ss.payload[off:off+n], 0))
		tcp.SetChecksum(^tcp.CalculateChecksum(xsum))
		out = append(out, b)
		off += n
		if last {
			return out
		}
	}
}

// segmentAll runs the splitter over pkts as the engine would.
func segmentAll(pkts []*stack.PacketBuffer, mtu int) [][]byte {
	s := segmentPackets(pkts, mtu)
	defer s.release()
	out := make([][]byte, s.Len())
	for i := range out {
		out[i] = make([]byte, s.Size(i))
		s.CopyTo(i, out[i])
	}
	return out
}

// checkSegments compares the splitter's output for ss against the
// reference and checks what a receiver checks.
func checkSegments(t testing.TB, ss superSegment, mtu int) {
	t.Helper()
	pkt := ss.packet()
	defer pkt.DecRef()
	got := segmentAll([]*stack.PacketBuffer{pkt}, mtu)
	want := ss.reference(mtu)
	if len(got) != len(want) {
		t.Fatalf("%d segments, want %d", len(got), len(want))
	}
	src, dst := ss.addrs()
	var payload []byte
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("segment %d:\n got %x\nwant %x", i, got[i], want[i])
		}
		if len(got[i]) > mtu {
			t.Fatalf("segment %d is %d bytes, over the MTU %d", i, len(got[i]), mtu)
		}
		var tcp header.TCP
		if ss.v6 {
			tcp = header.TCP(got[i][header.IPv6MinimumSize:])
		} else {
			ip := header.IPv4(got[i])
			if !ip.IsValid(len(got[i])) || !ip.IsChecksumValid() {
				t.Fatalf("segment %d: bad IPv4 header", i)
			}
			tcp = header.TCP(got[i][header.IPv4MinimumSize:])
		}
		data := tcp[tcp.DataOffset():]
		if !tcp.IsChecksumValid(src, dst, checksum.Checksum(data, 0), uint16(len(data))) {
			t.Fatalf("segment %d: bad TCP checksum", i)
		}
		payload = append(payload, data...)
	}
	if !bytes.Equal(payload, ss.payload) {
		t.Fatal("the segments' payloads do not add up to the super-segment's")
	}
}

func testPayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func TestSegment(t *testing.T) {
	const mtu = 1420
	for _, v6 := range []bool{false, true} {
		for _, tc := range []struct {
			name  string
			n     int
			mss   uint16
			flags header.TCPFlags
			opts  []byte
		}{
			{"ack only", 0, 1368, header.TCPFlagAck, nil},
			{"one byte", 1, 1368, header.TCPFlagAck | header.TCPFlagPsh, nil},
			{"exactly one segment", 1368, 1368, header.TCPFlagAck | header.TCPFlagPsh, timestamps(1, 2)},
			{"one byte over", 1369, 1368, header.TCPFlagAck | header.TCPFlagPsh, timestamps(1, 2)},
			{"full", 65535 - 60 - 32, 1368, header.TCPFlagAck | header.TCPFlagPsh, timestamps(0xffffffff, 7)},
			{"fin on the last", 10000, 1000, header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin, nil},
			{"cwr on the first", 5000, 1000, header.TCPFlagAck | header.TCPFlagCwr | header.TCPFlagEce, timestamps(3, 4)},
			{"mss over the mtu", 5000, 9000, header.TCPFlagAck, timestamps(3, 4)},
			{"no mss", 5000, 0, header.TCPFlagAck, nil},
			{"odd sizes", 4999, 333, header.TCPFlagAck, []byte{1, 1, 1, 0}},
		} {
			t.Run(fmt.Sprintf("v6=%v/%s", v6, tc.name), func(t *testing.T) {
				checkSegments(t, superSegment{
					v6: v6, id: 0xfffe, seq: 0xffffff00, ack: 12345, flags: tc.flags, wnd: 512,
					opts: tc.opts, mss: tc.mss, payload: testPayload(tc.n),
				}, mtu)
			})
		}
	}
}

// TestSegmentMixed checks a batch of super-segments and ordinary packets:
// the ordinary ones go out byte for byte as gVisor built them, in order.
func TestSegmentMixed(t *testing.T) {
	const mtu = 1420
	a := superSegment{seq: 1, ack: 2, flags: header.TCPFlagAck, mss: 1368, payload: testPayload(3000)}
	b := superSegment{v6: true, seq: 9, ack: 2, flags: header.TCPFlagAck | header.TCPFlagPsh, mss: 1348, payload: testPayload(2000), opts: timestamps(5, 6)}
	plain := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData([]byte{0x45, 1, 2, 3, 4, 5})})
	pa, pb := a.packet(), b.packet()
	defer pa.DecRef()
	defer pb.DecRef()
	defer plain.DecRef()
	got := segmentAll([]*stack.PacketBuffer{pa, plain, pb}, mtu)
	want := append(append(a.reference(mtu), []byte{0x45, 1, 2, 3, 4, 5}), b.reference(mtu)...)
	if len(got) != len(want) {
		t.Fatalf("%d packets, want %d", len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("packet %d:\n got %x\nwant %x", i, got[i], want[i])
		}
	}
}

func FuzzSegment(f *testing.F) {
	f.Add(false, uint16(1368), uint16(3000), uint8(header.TCPFlagAck|header.TCPFlagPsh), uint8(3), uint32(1), uint16(1420))
	f.Add(true, uint16(1348), uint16(65000), uint8(header.TCPFlagAck|header.TCPFlagFin), uint8(0), uint32(0xfffffff0), uint16(1280))
	f.Add(false, uint16(1), uint16(17), uint8(header.TCPFlagAck|header.TCPFlagCwr), uint8(10), uint32(7), uint16(100))
	f.Add(true, uint16(0), uint16(0), uint8(header.TCPFlagAck), uint8(1), uint32(7), uint16(1420))
	f.Fuzz(func(t *testing.T, v6 bool, mss, n uint16, flags, optWords uint8, seq uint32, mtu uint16) {
		ipLen := header.IPv4MinimumSize
		if v6 {
			ipLen = header.IPv6MinimumSize
		}
		opts := make([]byte, 4*int(optWords%11)) // at most 40 bytes of options
		for i := range opts {
			opts[i] = 1 // NOP
		}
		hdr := ipLen + header.TCPMinimumSize + len(opts)
		if int(mtu) <= hdr || int(n) > 65535-hdr {
			t.Skip()
		}
		checkSegments(t, superSegment{
			v6: v6, id: uint16(seq), seq: seq, ack: ^seq, flags: header.TCPFlags(flags), wnd: 100,
			opts: opts, mss: mss, payload: testPayload(int(n)),
		}, int(mtu))
	})
}

// BenchmarkSegment measures cutting a full 64 KB super-segment into
// 1420-byte segments and copying them out, as WritePackets does.
func BenchmarkSegment(b *testing.B) {
	ss := superSegment{seq: 1, ack: 2, flags: header.TCPFlagAck | header.TCPFlagPsh, mss: 1356, opts: timestamps(1, 2), payload: testPayload(65535 - 60 - 32)}
	pkt := ss.packet()
	defer pkt.DecRef()
	pkts := []*stack.PacketBuffer{pkt}
	dst := make([]byte, 1420)
	b.SetBytes(int64(len(ss.payload)))
	b.ReportAllocs()
	for b.Loop() {
		s := segmentPackets(pkts, 1420)
		for i := range s.Len() {
			s.CopyTo(i, dst[:s.Size(i)])
		}
		s.release()
	}
}

// discardEngine is an engine that copies every packet out and drops it.
type discardEngine struct{ buf []byte }

func (d *discardEngine) WriteScattered(pkts protocol.ScatteredPackets) {
	for i := range pkts.Len() {
		pkts.CopyTo(i, d.buf[:pkts.Size(i)])
	}
}

// BenchmarkWritePackets measures WritePackets with an engine that only
// copies: one full super-segment per call, as an upload hands them over.
func BenchmarkWritePackets(b *testing.B) {
	ss := superSegment{seq: 1, ack: 2, flags: header.TCPFlagAck | header.TCPFlagPsh, mss: 1356, opts: timestamps(1, 2), payload: testPayload(65535 - 60 - 32)}
	pkt := ss.packet()
	defer pkt.DecRef()
	var list stack.PacketBufferList
	list.PushBack(pkt)
	l := newLinkEndpoint(1420, &discardEngine{buf: make([]byte, 1420)})
	l.local = []tcpip.Address{tcpip.AddrFrom4([4]byte{10, 9, 9, 9})}
	b.SetBytes(int64(len(ss.payload)))
	b.ReportAllocs()
	for b.Loop() {
		l.WritePackets(list)
	}
}
