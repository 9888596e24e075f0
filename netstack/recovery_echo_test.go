package netstack

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/wgbore/wgbore/protocol/clock"
)

// peerSegment is what the far end of superSegment's connection sends:
// from port 9 to 40000, with a timestamp option carrying tsval unless
// tsval is 0, and flags.
func peerSegment(v6 bool, flags header.TCPFlags, tsval uint32, payload int, more ...byte) []byte {
	var opts []byte
	if tsval != 0 {
		opts = timestamps(tsval, 1)
	}
	opts = append(opts, more...)
	src, dst := segDst4, segSrc4
	nh := header.IPv4MinimumSize
	if v6 {
		src, dst, nh = segDst6, segSrc6, header.IPv6MinimumSize
	}
	b := make([]byte, nh+header.TCPMinimumSize+len(opts)+payload)
	if v6 {
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(len(b) - nh), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: src, DstAddr: dst})
	} else {
		header.IPv4(b).Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst})
	}
	tcp := header.TCP(b[nh:])
	tcp.Encode(&header.TCPFields{SrcPort: 9, DstPort: 40000, SeqNum: 100, AckNum: 1, DataOffset: uint8(header.TCPMinimumSize + len(opts)), Flags: flags, WindowSize: 9})
	copy(tcp[header.TCPMinimumSize:], opts)
	return b
}

// mustKey is an outbound packet's packetKey; the tests' packets have one.
func mustKey(p *stack.PacketBuffer) flowKey {
	k, ok := packetKey(p)
	if !ok {
		panic("a test packet without a connection key")
	}
	return k
}

// echoOf is the timestamp echo of a packet as it left.
func echoOf(t *testing.T, wire []byte) uint32 {
	t.Helper()
	nh := header.IPv6MinimumSize
	if header.IPVersion(wire) == header.IPv4Version {
		nh = int(header.IPv4(wire).HeaderLength())
	}
	ts, ok := tsOption(wire[nh:])
	if !ok {
		t.Fatal("the packet that left has no timestamp option")
	}
	return binary.BigEndian.Uint32(wire[nh+ts+6:])
}

// completeChecksum turns the partial checksum of a packet built by
// superSegment.packet into a full one and drops its GSO options, as
// gVisor sends a packet on a link without offloads.
func completeChecksum(p *stack.PacketBuffer, v6 bool) {
	src, dst := superSegment{v6: v6}.addrs()
	tcp := header.TCP(p.TransportHeader().Slice())
	tcp.SetChecksum(0)
	pseudo := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)+p.Data().Size()))
	tcp.SetChecksum(^tcp.CalculateChecksum(pseudo))
	p.GSOOptions = stack.GSO{}
}

// windowScaleOption is NOP and a window scale option offering shift.
func windowScaleOption(shift byte) []byte { return []byte{1, 3, 3, shift} }

func TestEchoAfterSilence(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, full := range []bool{false, true} {
			clk := clock.NewManual(time.Unix(1000, 0))
			e := &replayEngine{}
			l := e.link(clk)
			hearN := func(payload int, flags header.TCPFlags, tsval uint32, more ...byte) {
				p := peerSegment(v6, flags, tsval, payload, more...)
				l.echoes.heard(p, ipTCPHeader(p), clk.Now().UnixNano())
			}
			hear := func(flags header.TCPFlags, tsval uint32, more ...byte) { hearN(100, flags, tsval, more...) }
			hearPure := func(flags header.TCPFlags, tsval uint32) { hearN(0, flags, tsval) }
			// send is a segment of ours that echoes ecr as gVisor would,
			// and the echo it left with.
			send := func(flags header.TCPFlags, ack, ecr uint32, more ...byte) uint32 {
				t.Helper()
				pkt := superSegment{v6: v6, seq: 1, ack: ack, flags: flags, wnd: 1000, mss: 1380, opts: append(timestamps(77, ecr), more...)}.packet()
				if full {
					completeChecksum(pkt, v6)
				}
				defer pkt.DecRef()
				var list stack.PacketBufferList
				list.PushBack(pkt)
				l.WritePackets(list)
				w := e.wire[len(e.wire)-1]
				checksumsOK(t, w)
				return echoOf(t, w)
			}
			ack := func(ack, ecr uint32) uint32 { t.Helper(); return send(header.TCPFlagAck, ack, ecr) }
			name := map[bool]string{false: "IPv4", true: "IPv6"}[v6] + map[bool]string{false: ", partial checksum", true: ", full checksum"}[full]

			// We dial; both offer window scaling, so our windows count
			// in units of 1<<7.
			send(header.TCPFlagSyn, 0, 0, windowScaleOption(7)...)
			hear(header.TCPFlagSyn|header.TCPFlagAck, 900, windowScaleOption(9)...)
			if got := ack(5000, 900); got != 900 {
				t.Fatalf("%s: the echo changed without a silence: %d", name, got)
			}
			clk.Advance(100 * time.Millisecond)
			hear(header.TCPFlagAck, 1000)
			if got := ack(6000, 1000); got != 1000 {
				t.Fatalf("%s: a gap shorter than echoSilence changed the echo: %d", name, got)
			}
			edge := uint32(6000 + 1000<<7)
			// The path goes dark; the sender's timeout resends.
			clk.Advance(3 * time.Second)
			hear(header.TCPFlagAck, 4000)
			if got := ack(6000, 1000); got != 4000-echoBefore {
				t.Fatalf("%s: after a silence an acknowledgement of a duplicate echoes %d, want %d", name, got, 4000-echoBefore)
			}
			hear(header.TCPFlagAck, 4005)
			if got := ack(6100, 4005); got != 4000-echoBefore {
				t.Fatalf("%s: catching up, the echo is %d, want %d", name, got, 4000-echoBefore)
			}
			// Silent again while catching up, having moved almost
			// nothing: true echoes until caught up, the newest timestamp
			// where gVisor's would be older.
			clk.Advance(time.Second)
			hear(header.TCPFlagAck, 5000)
			if got := ack(6200, 4005); got != 5000 {
				t.Fatalf("%s: stalled while catching up, the echo is %d, want the newest, 5000", name, got)
			}
			edge = 6100 + 1000<<7 // as far as the window advertised before that silence
			if got := ack(edge-1, 4005); got != 5000 {
				t.Fatalf("%s: stalled while catching up and moving on, the echo is %d, want the newest, 5000", name, got)
			}
			// At the right edge we had advertised: caught up.
			if got := ack(edge, 4005); got != 4005 {
				t.Fatalf("%s: caught up, the echo is still set: %d", name, got)
			}
			if got := ack(edge-1, 4005); got != 4005 {
				t.Fatalf("%s: caught up, the echo is set again: %d", name, got)
			}
			// The next silence anchors the echo again: the true echoes
			// ended with that catch-up.
			clk.Advance(time.Second)
			hear(header.TCPFlagAck, 6000)
			if got := ack(edge, 5000); got != 6000-echoBefore {
				t.Fatalf("%s: after the next silence the echo is %d, want %d", name, got, 6000-echoBefore)
			}
			for ts := uint32(6001); ts <= 6000+echoStalled; ts++ {
				hear(header.TCPFlagAck, ts)
			}
			// A sender that timed out again after moving on is not a
			// stalled one: a new anchor, not true echoes.
			if got := ack(edge+20000, 6000); got != 6000-echoBefore {
				t.Fatalf("%s: catching up, the echo is %d, want %d", name, got, 6000-echoBefore)
			}
			clk.Advance(time.Second)
			hear(header.TCPFlagAck, 7000)
			if got := ack(edge+20100, 6000); got != 7000-echoBefore {
				t.Fatalf("%s: silent again after moving on, the echo is %d, want a new anchor, %d", name, got, 7000-echoBefore)
			}
			edge += 20000 + 1000<<7
			if got := ack(edge, 7000); got != 7000 {
				t.Fatalf("%s: caught up again, the echo is still set: %d", name, got)
			}
			// A pure acknowledgement after a silence is not a sender's
			// retransmission: the echo stays gVisor's.
			clk.Advance(time.Second)
			hearPure(header.TCPFlagAck, 8000)
			if got := ack(edge, 7000); got != 7000 {
				t.Fatalf("%s: a pure acknowledgement after a silence set the echo to %d", name, got)
			}
			// A new connection on the same ports starts afresh, and
			// without the peer's window scale ours does not apply.
			clk.Advance(time.Second)
			send(header.TCPFlagSyn, 0, 0, windowScaleOption(7)...)
			hear(header.TCPFlagSyn|header.TCPFlagAck, 9000)
			if got := ack(1, 9000); got != 9000 {
				t.Fatalf("%s: a new connection's echo was set: %d", name, got)
			}
			clk.Advance(time.Second)
			hear(header.TCPFlagAck, 9500)
			if got := ack(1000, 9000); got != 9500-echoBefore {
				t.Fatalf("%s: new connection, after a silence: echo %d, want %d", name, got, 9500-echoBefore)
			}
			if got := ack(1001, 9500); got != 9500 {
				t.Fatalf("%s: an unscaled window's edge was not the end of catching up: echo %d", name, got)
			}
		}
	}
}

// TestEchoAfterAnswerPause: a client's request, a pause while the server
// prepares its answer, the answer, and the client's pause before its
// next request, twice. No pause is a sender stalled while catching up:
// each request anchors the echo, where true echoes would let a gVisor
// client that later times out on the connection crawl.
func TestEchoAfterAnswerPause(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	e := &replayEngine{}
	l := e.link(clk)
	hear := func(payload int, tsval uint32) {
		p := peerSegment(false, header.TCPFlagAck, tsval, payload)
		l.echoes.heard(p, ipTCPHeader(p), clk.Now().UnixNano())
	}
	send := func(flags header.TCPFlags, ack, ecr uint32, payload int) uint32 {
		t.Helper()
		return echoOf(t, e.send(t, l, superSegment{seq: 1, ack: ack, flags: flags, wnd: 1000, mss: 1380, payload: make([]byte, payload), opts: timestamps(77, ecr)}))
	}
	send(header.TCPFlagSyn, 0, 0, 0)
	p := peerSegment(false, header.TCPFlagSyn|header.TCPFlagAck, 900, 0)
	l.echoes.heard(p, ipTCPHeader(p), clk.Now().UnixNano())
	hear(100, 1000) // the request
	send(header.TCPFlagAck, 5000, 1000, 0)
	clk.Advance(500 * time.Millisecond) // the server prepares its answer
	send(header.TCPFlagAck, 5000, 1000, 1000)
	hear(0, 1500) // the client acknowledges it
	if got := send(header.TCPFlagAck, 5000, 1500, 1000); got != 1500 {
		t.Fatalf("the answer's echo after a pure acknowledgement that ended a silence: %d, want 1500", got)
	}
	clk.Advance(time.Second) // the client's pause
	hear(100, 2600)
	if got := send(header.TCPFlagAck, 5100, 2600, 0); got != 2600-echoBefore {
		t.Fatalf("the next request's acknowledgement echoes %d, want the anchor %d", got, 2600-echoBefore)
	}
	// Answered, and the client pauses again: its next request has a
	// new anchor. A sender that had stalled would have had no answer.
	send(header.TCPFlagAck, 5100, 2600, 1000)
	hear(0, 2700)
	clk.Advance(time.Second)
	hear(100, 3800)
	if got := send(header.TCPFlagAck, 5200, 3800, 0); got != 3800-echoBefore {
		t.Fatalf("the third request's acknowledgement echoes %d, want the anchor %d", got, 3800-echoBefore)
	}
}

func TestEchoLeavesOthers(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	e := &replayEngine{}
	l := e.link(clk)
	send := func(ss superSegment) []byte { return e.send(t, l, ss) }
	// A connection that catches up.
	p := peerSegment(false, header.TCPFlagAck, 1000, 10)
	l.echoes.heard(p, ipTCPHeader(p), clk.Now().UnixNano())
	send(superSegment{seq: 1, ack: 10, flags: header.TCPFlagAck, mss: 1380, opts: timestamps(5, 1000)})
	clk.Advance(time.Second)
	l.echoes.heard(p, ipTCPHeader(p), clk.Now().UnixNano())

	// The other address family's connection on the same ports is another
	// connection.
	if got := echoOf(t, send(superSegment{v6: true, seq: 1, ack: 10, flags: header.TCPFlagAck, mss: 1380, opts: timestamps(5, 3)})); got != 3 {
		t.Errorf("another connection's echo was set: %d", got)
	}
	// Packets without a timestamp option or without ACK go out as they
	// would from a link endpoint that heard nothing.
	fresh := &replayEngine{}
	lf := fresh.link(nil)
	for _, ss := range []superSegment{
		{seq: 1, ack: 10, flags: header.TCPFlagAck, mss: 1380, opts: []byte{1, 1, 1, 1}},
		{seq: 1, ack: 10, flags: header.TCPFlagSyn, mss: 1380, opts: timestamps(5, 3)},
	} {
		if got := send(ss); !bytes.Equal(got, fresh.send(t, lf, ss)) {
			t.Errorf("%v with options %v: changed", ss.flags, ss.opts)
		}
	}
	// A peer without timestamps keeps no state.
	l2 := (&replayEngine{}).link(nil)
	p = peerSegment(false, header.TCPFlagAck, 0, 10)
	l2.echoes.heard(p, ipTCPHeader(p), 1)
	if l2.echoes.slots.Load() != nil {
		t.Error("a segment without timestamps allocated the table")
	}
}

func TestEchoAllocs(t *testing.T) {
	l := newLinkEndpoint(1420, &discardEngine{buf: make([]byte, 1<<16)})
	in := peerSegment(false, header.TCPFlagAck, 1000, 1000)
	pkt := superSegment{seq: 1, ack: 2, flags: header.TCPFlagAck, wnd: 9, mss: 1380, opts: timestamps(1, 2)}.packet()
	defer pkt.DecRef()
	l.echoes.heard(in, ipTCPHeader(in), 1) // the table itself, once
	l.echoes.echo(pkt, mustKey(pkt))
	now := int64(1)
	if n := testing.AllocsPerRun(100, func() {
		now += int64(time.Second) // every segment ends a silence
		l.echoes.heard(in, ipTCPHeader(in), now)
		l.echoes.echo(pkt, mustKey(pkt))
	}); n != 0 {
		t.Errorf("heard and echo allocate %v times per segment", n)
	}
}

// BenchmarkEcho is the cost the echo table adds to each segment that
// arrives and to each acknowledgement we send.
func BenchmarkEcho(b *testing.B) {
	l := newLinkEndpoint(1420, &discardEngine{buf: make([]byte, 1<<16)})
	in := peerSegment(false, header.TCPFlagAck, 1000, 1360)
	tcp := ipTCPHeader(in)
	pkt := superSegment{seq: 1, ack: 2, flags: header.TCPFlagAck, wnd: 9, mss: 1380, opts: timestamps(1, 2)}.packet()
	defer pkt.DecRef()
	b.Run("heard", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			l.echoes.heard(in, tcp, 1)
		}
	})
	b.Run("echo", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			l.echoes.echo(pkt, mustKey(pkt))
		}
	})
}

// FuzzEcho: any options on a peer's segment and on ours, no panic; when
// ours is changed, only its echo changes and its full checksum stays
// valid.
func FuzzEcho(f *testing.F) {
	f.Add(timestamps(1000, 1), timestamps(5, 900), uint32(7000))
	f.Add([]byte{1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1}, []byte{1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1}, uint32(1))
	f.Add([]byte{2, 0, 8, 10}, []byte{8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0}, uint32(0))
	f.Fuzz(func(t *testing.T, theirs, ours []byte, ack uint32) {
		pad := func(b []byte) []byte {
			b = bytes.Clone(b[:min(len(b), 40)])
			for len(b)%4 != 0 {
				b = append(b, 0)
			}
			return b
		}
		theirs, ours = pad(theirs), pad(ours)
		in := peerSegment(false, header.TCPFlagAck, 0, 0)
		in = append(in[:header.IPv4MinimumSize+header.TCPMinimumSize], theirs...)
		in = append(in, make([]byte, 10)...) // data: only a sender's segments start a catch-up
		header.IPv4(in).SetTotalLength(uint16(len(in)))
		tcp := header.TCP(in[header.IPv4MinimumSize:])
		tcp[header.TCPDataOffset] = uint8((header.TCPMinimumSize+len(theirs))/4) << 4

		l := (&replayEngine{}).link(nil)
		pkt := superSegment{seq: 1, ack: ack, flags: header.TCPFlagAck, wnd: 9, opts: ours}.packet()
		defer pkt.DecRef()
		completeChecksum(pkt, false)
		before := bytes.Clone(pkt.TransportHeader().Slice())
		l.echoes.heard(in, tcp, 1)
		l.echoes.echo(pkt, mustKey(pkt)) // noted: the acknowledgement before the silence
		copy(pkt.TransportHeader().Slice(), before)
		l.echoes.heard(in, tcp, 1+int64(time.Second))
		l.echoes.echo(pkt, mustKey(pkt))
		after := pkt.TransportHeader().Slice()
		if bytes.Equal(before, after) {
			return
		}
		ts, ok := tsOption(after)
		if !ok {
			t.Fatal("changed a header without a timestamp option")
		}
		for i := range after {
			if before[i] != after[i] && (i < ts+6 || i >= ts+10) && i != header.TCPChecksumOffset && i != header.TCPChecksumOffset+1 {
				t.Fatalf("byte %d changed, outside the echo and the checksum", i)
			}
		}
		src, dst := superSegment{}.addrs()
		if header.TCP(after).CalculateChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(after)))) != 0xffff {
			t.Fatal("the checksum is no longer valid")
		}
	})
}

// packetKey is the key of an outbound TCP packet's connection.
func packetKey(p *stack.PacketBuffer) (flowKey, bool) {
	return keyOf(p.NetworkHeader().Slice(), p.TransportHeader().Slice(), false)
}
