package netstack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/clock"
)

// replayEngine keeps what the link endpoint sends: wire holds every
// packet as it left through WriteScattered, resent what PeerReturned
// wrote. Its peer is reached at every address but none of bad.
type replayEngine struct {
	wire, resent [][]byte
	peer         protocol.PublicKey
	bad          netip.Addr
}

func (e *replayEngine) WriteScattered(pkts protocol.ScatteredPackets) {
	for i := range pkts.Len() {
		b := make([]byte, pkts.Size(i))
		pkts.CopyTo(i, b)
		e.wire = append(e.wire, b)
	}
}

func (e *replayEngine) WritePackets(pkts [][]byte) {
	for _, p := range pkts {
		e.resent = append(e.resent, bytes.Clone(p))
	}
}

func (e *replayEngine) PeerFor(a netip.Addr) (protocol.PublicKey, bool) {
	return e.peer, a != e.bad
}

// link is a link endpoint that writes to e and sends each
// acknowledgement at once, so that a test reads it off e.wire; clk, if
// not nil, is its clock.
func (e *replayEngine) link(clk clock.Clock) *linkEndpoint {
	l := newLinkEndpoint(1420, e)
	l.delay.wait = 0
	if clk != nil {
		l.clock = clk
	}
	return l
}

func (e *replayEngine) send(t *testing.T, l *linkEndpoint, ss superSegment) []byte {
	t.Helper()
	pkt := ss.packet()
	defer pkt.DecRef()
	var list stack.PacketBufferList
	list.PushBack(pkt)
	if n, err := l.WritePackets(list); n != 1 || err != nil {
		t.Fatalf("WritePackets: %d, %v", n, err)
	}
	return e.wire[len(e.wire)-1]
}

// checksumsOK checks a packet's IPv4 header checksum and its TCP checksum.
func checksumsOK(t *testing.T, b []byte) {
	t.Helper()
	var pseudo uint16
	hl := header.IPv6MinimumSize
	if header.IPVersion(b) == header.IPv4Version {
		ip := header.IPv4(b)
		if !ip.IsChecksumValid() {
			t.Error("IPv4 header checksum invalid")
		}
		hl = int(ip.HeaderLength())
		pseudo = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(b)-hl))
	} else {
		ip := header.IPv6(b)
		pseudo = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(b)-hl))
	}
	if checksum.Checksum(b[hl:], pseudo) != 0xffff {
		t.Error("TCP checksum invalid")
	}
}

func TestAckReplay(t *testing.T) {
	key := protocol.PublicKey{1}
	e := &replayEngine{peer: key}
	l := e.link(nil)
	// Connections without timestamps, such as Windows makes by default;
	// those with them follow below.
	ack := func(v6 bool, seq, ackNum uint32, flags header.TCPFlags, payload int) superSegment {
		return superSegment{v6: v6, seq: seq, ack: ackNum, flags: flags, wnd: 500, mss: 1380, opts: []byte{1, 1, 1, 1}, payload: testPayload(payload)}
	}

	// Nothing recorded yet.
	l.PeerReturned(key)
	if len(e.resent) != 0 {
		t.Fatalf("resent %d packets before any was recorded", len(e.resent))
	}

	e.send(t, l, ack(false, 100, 5000, header.TCPFlagAck, 0))
	latest := e.send(t, l, ack(false, 100, 9000, header.TCPFlagAck, 0))
	e.send(t, l, ack(false, 99, 9000, header.TCPFlagAck, 0))     // a keepalive probe
	e.send(t, l, ack(false, 100, 9000, header.TCPFlagAck, 1000)) // data
	v6 := e.send(t, l, ack(true, 7, 70, header.TCPFlagAck, 0))

	l.PeerReturned(protocol.PublicKey{2})
	if len(e.resent) != 0 {
		t.Fatalf("resent %d packets to connections of another peer", len(e.resent))
	}
	l.PeerReturned(key)
	if len(e.resent) != 2 {
		t.Fatalf("resent %d packets, want 2", len(e.resent))
	}
	for _, want := range [][]byte{latest, v6} {
		found := false
		for _, got := range e.resent {
			found = found || bytes.Equal(got, want)
		}
		if !found {
			t.Errorf("the latest acknowledgement as it left was not resent:\n%x", want)
		}
	}
	for _, got := range e.resent {
		checksumsOK(t, got)
	}

	// A connection that ended is forgotten; one whose peer routes
	// elsewhere now is skipped.
	e.resent = nil
	e.send(t, l, ack(false, 100, 9000, header.TCPFlagAck|header.TCPFlagFin, 0))
	// A new connection on the same ports starts afresh, although its
	// sequence numbers are below the old one's.
	e.send(t, l, ack(false, 1, 0, header.TCPFlagSyn, 0))
	fresh := e.send(t, l, ack(false, 2, 50, header.TCPFlagAck, 0))
	l.PeerReturned(key)
	if len(e.resent) != 2 || !bytes.Equal(e.resent[0], fresh) && !bytes.Equal(e.resent[1], fresh) {
		t.Fatalf("after a new connection on the same ports: resent %d packets, not its acknowledgement", len(e.resent))
	}
	e.resent = nil
	e.send(t, l, ack(false, 2, 50, header.TCPFlagRst, 0))
	e.bad = netip.AddrFrom16(segDst6.As16())
	l.PeerReturned(key)
	if len(e.resent) != 0 {
		t.Errorf("resent %d packets after the connection ended and the other moved", len(e.resent))
	}

	// On a connection with timestamps, the acknowledgement is re-sent as
	// it left while we send the data. Once the peer sends some, it goes
	// to a Linux peer with an echo echoAncient ticks below the peer's
	// newest timestamp, and is kept back from any other.
	e.bad = netip.Addr{}
	e.send(t, l, superSegment{v6: true, seq: 8, ack: 80, flags: header.TCPFlagAck, wnd: 500, mss: 1380, opts: timestamps(1, 2)})
	const linuxWnd, gVisorWnd = 47 * (1380 - 12), 27520 // as each answered a SYN in the recovery tests
	for _, c := range []struct {
		synWnd   uint16
		tsval    uint32 // the SYN's; the peer's next segment's is 7 more
		payload  int
		wantEcho uint32
		wantSent bool // false: kept back
	}{
		{synWnd: linuxWnd, tsval: 1 << 30, payload: 0, wantEcho: 2, wantSent: true},
		{synWnd: gVisorWnd, tsval: 1 << 30, payload: 0, wantEcho: 2, wantSent: true},
		{synWnd: linuxWnd, tsval: 1 << 30, payload: 10, wantEcho: 1<<30 + 7 - echoAncient, wantSent: true},
		{synWnd: gVisorWnd, tsval: 1 << 30, payload: 10},
		// Linux tells an echo's age modulo 2^32: one that wraps below
		// zero is as old; only 0 would be no echo at all.
		{synWnd: linuxWnd, tsval: 5, payload: 10, wantEcho: 1<<32 + 12 - echoAncient, wantSent: true},
		{synWnd: linuxWnd, tsval: echoAncient - 7, payload: 10, wantEcho: 0xffffffff, wantSent: true},
	} {
		// A new connection on the same ports each time.
		syn := peerSYN(c.tsval, c.synWnd)
		l.echoes.heard(syn, ipTCPHeader(syn), 1)
		p := peerSegment(true, header.TCPFlagAck, c.tsval+7, c.payload)
		l.echoes.heard(p, ipTCPHeader(p), 2)
		e.resent = nil
		l.PeerReturned(key)
		if !c.wantSent {
			if len(e.resent) != 0 {
				t.Errorf("SYN window %d, newest timestamp %#x: resent %d acknowledgements, want none", c.synWnd, c.tsval+7, len(e.resent))
			}
			continue
		}
		if len(e.resent) != 1 {
			t.Fatalf("SYN window %d, newest timestamp %#x, %d bytes from the peer: resent %d acknowledgements, want 1", c.synWnd, c.tsval+7, c.payload, len(e.resent))
		}
		got := e.resent[0]
		checksumsOK(t, got)
		th := got[header.IPv6MinimumSize:]
		ts, ok := tsOption(th)
		if !ok {
			t.Fatal("the re-sent acknowledgement lost its timestamps")
		}
		if echo := binary.BigEndian.Uint32(th[ts+6:]); echo != c.wantEcho {
			t.Errorf("SYN window %d, newest timestamp %#x, %d bytes from the peer: the re-sent echo is %#x, want %#x", c.synWnd, c.tsval+7, c.payload, echo, c.wantEcho)
		}
	}

	// When another connection takes the echo slot, nothing tells whether
	// the peer sends or runs Linux: the acknowledgement is kept back, and
	// the new connection does not inherit the old one's Linux SYN.
	syn := peerSYN(1<<30, linuxWnd)
	l.echoes.heard(syn, ipTCPHeader(syn), 1)
	k, _ := keyOf(syn[:header.IPv6MinimumSize], syn[header.IPv6MinimumSize:], true)
	other := peerSegment(true, header.TCPFlagAck, 1<<30, 10)
	for port := uint16(1); ; port++ {
		header.TCP(other[header.IPv6MinimumSize:]).SetSourcePort(port)
		if ok, _ := keyOf(other[:header.IPv6MinimumSize], other[header.IPv6MinimumSize:], true); ok != k && ok.slot(echoSlots) == k.slot(echoSlots) {
			break
		}
	}
	l.echoes.heard(other, ipTCPHeader(other), 2) // takes the slot
	l.echoes.heard(other, ipTCPHeader(other), 3) // and sends data
	e.resent = nil
	l.PeerReturned(key)
	if len(e.resent) != 0 {
		t.Errorf("with its echo slot taken by another connection, resent %d acknowledgements, want none", len(e.resent))
	}
	ko, _ := keyOf(other[:header.IPv6MinimumSize], other[header.IPv6MinimumSize:], true)
	if _, set, ok := l.echoes.resendEcho(ko); set || ok {
		t.Errorf("the connection that took the slot, its SYN unseen: resendEcho set %v, ok %v; want it kept back", set, ok)
	}
}

// peerSYN is the peer's SYN-ACK over IPv6 with Linux's option layout
// (MSS 1380, SACK permitted, timestamps, NOP, window scale 7) and window
// wnd.
func peerSYN(tsval uint32, wnd uint16) []byte {
	opts := append([]byte{2, 4, 0x05, 0x64, 4, 2}, timestamps(tsval, 1)[2:]...)
	opts = append(opts, 1, 3, 3, 7)
	p := peerSegment(true, header.TCPFlagSyn|header.TCPFlagAck, 0, 0, opts...)
	header.TCP(p[header.IPv6MinimumSize:]).SetWindowSize(wnd)
	return p
}

func TestLinuxSYN(t *testing.T) {
	layout := func(mss uint16, wnd uint16, opts ...byte) []byte {
		if opts == nil {
			opts = []byte{2, 4, byte(mss >> 8), byte(mss), 4, 2, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 3, 3, 7}
		}
		tcp := make([]byte, header.TCPMinimumSize+len(opts))
		header.TCP(tcp).Encode(&header.TCPFields{DataOffset: uint8(len(tcp)), Flags: header.TCPFlagSyn, WindowSize: wnd})
		copy(tcp[header.TCPMinimumSize:], opts)
		return tcp
	}
	for _, c := range []struct {
		name string
		tcp  []byte
		want bool
	}{
		{"Linux's SYN, MSS 1460", layout(1460, 64240), true},
		{"Linux's SYN-ACK, MSS 1460", layout(1460, 65160), true},
		{"Linux's SYN-ACK, MSS 1380", layout(1380, 64296), true},
		{"gVisor's SYN-ACK, MSS 1380", layout(1380, 27520), false},
		{"gVisor's SYN-ACK, MSS 1440, its window a whole number of segments", layout(1440, 28800), false},
		{"a window below one segment", layout(1380, 1000), false},
		{"macOS's option order", layout(1460, 65535, 2, 4, 5, 180, 1, 3, 3, 6, 4, 2, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8), false},
		{"no window scale", layout(1460, 64240, 2, 4, 5, 180, 4, 2, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 1, 1, 0), false},
		{"options cut short", layout(1460, 64240)[:30:30], false},
		{"no options", layout(1460, 64240, []byte{}...), false},
	} {
		if got := linuxSYN(c.tcp); got != c.want {
			t.Errorf("%s: linuxSYN = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestAckRecordAllocs(t *testing.T) {
	l := newLinkEndpoint(1420, &discardEngine{buf: make([]byte, 1<<16)})
	pkt := superSegment{seq: 1, ack: 2, flags: header.TCPFlagAck, wnd: 9, mss: 1380, opts: timestamps(1, 2)}.packet()
	defer pkt.DecRef()
	l.acks.record(pkt, mustKey(pkt)) // the table itself, once
	if n := testing.AllocsPerRun(100, func() { l.acks.record(pkt, mustKey(pkt)) }); n != 0 {
		t.Errorf("record allocates %v times per acknowledgement", n)
	}
}

// BenchmarkAckRecord is the cost record adds to each pure acknowledgement
// we send, and to each data segment.
func BenchmarkAckRecord(b *testing.B) {
	l := newLinkEndpoint(1420, &discardEngine{buf: make([]byte, 1<<16)})
	for _, bc := range []struct {
		name    string
		payload int
	}{{"ack", 0}, {"data", 64000}} {
		pkt := superSegment{seq: 1, ack: 2, flags: header.TCPFlagAck, wnd: 9, mss: 1380, opts: timestamps(1, 2), payload: testPayload(bc.payload)}.packet()
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				l.acks.record(pkt, mustKey(pkt))
			}
		})
		pkt.DecRef()
	}
}

// FuzzLinuxSYN reads arbitrary TCP headers as SYNs from the network:
// linuxSYN must never panic, and says yes only to Linux's option layout.
func FuzzLinuxSYN(f *testing.F) {
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, tcp []byte) {
		tcp = tcp[:len(tcp):len(tcp)] // reading past the end panics
		if !linuxSYN(tcp) {
			return
		}
		o := tcp[header.TCPMinimumSize:]
		if len(o) < 20 || o[0] != 2 || o[4] != 4 || o[6] != tcpOptTimestamp || o[16] != tcpOptNOP || o[17] != tcpOptWindowScale {
			t.Fatalf("linuxSYN took %x for Linux's layout", tcp)
		}
	})
}
