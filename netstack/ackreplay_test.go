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
	l := newLinkEndpoint(1420, e)
	l.delay.wait = 0 // each acknowledgement is read off the wire as it is sent
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
	// newest timestamp, and is kept back from any other, and from Linux
	// where that echo would wrap around as a number.
	e.bad = netip.Addr{}
	e.send(t, l, superSegment{v6: true, seq: 8, ack: 80, flags: header.TCPFlagAck, wnd: 500, mss: 1380, opts: timestamps(1, 2)})
	const linuxWnd, gVisorWnd = 47 * (1380 - 12), 27520 // as each answered a SYN in the recovery tests
	for _, c := range []struct {
		synWnd   uint16
		tsval    uint32
		payload  int
		wantEcho uint32
		wantSent bool // false: kept back
	}{
		{synWnd: linuxWnd, tsval: 1 << 30, payload: 0, wantEcho: 2, wantSent: true},
		{synWnd: gVisorWnd, tsval: 1 << 30, payload: 0, wantEcho: 2, wantSent: true},
		{synWnd: linuxWnd, tsval: 1<<30 + 5, payload: 10, wantEcho: 1<<30 + 5 - echoAncient, wantSent: true},
		{synWnd: gVisorWnd, tsval: 1<<30 + 5, payload: 10},
		{synWnd: linuxWnd, tsval: 0xfffffff0, payload: 10},
		{synWnd: linuxWnd, tsval: 5, payload: 10},
	} {
		// A new connection on the same ports each time.
		syn := peerSYN(c.tsval, c.synWnd)
		l.echoes.heard(syn, ipTCPHeader(syn), 1)
		p := peerSegment(true, header.TCPFlagAck, c.tsval, c.payload)
		l.echoes.heard(p, ipTCPHeader(p), 2)
		e.resent = nil
		l.PeerReturned(key)
		if !c.wantSent {
			if len(e.resent) != 0 {
				t.Errorf("SYN window %d, newest timestamp %#x: resent %d acknowledgements, want none", c.synWnd, c.tsval, len(e.resent))
			}
			continue
		}
		if len(e.resent) != 1 {
			t.Fatalf("SYN window %d, newest timestamp %#x, %d bytes from the peer: resent %d acknowledgements, want 1", c.synWnd, c.tsval, c.payload, len(e.resent))
		}
		got := e.resent[0]
		checksumsOK(t, got)
		th := got[header.IPv6MinimumSize:]
		ts, ok := tsOption(th)
		if !ok {
			t.Fatal("the re-sent acknowledgement lost its timestamps")
		}
		if echo := binary.BigEndian.Uint32(th[ts+6:]); echo != c.wantEcho {
			t.Errorf("SYN window %d, newest timestamp %#x, %d bytes from the peer: the re-sent echo is %#x, want %#x", c.synWnd, c.tsval, c.payload, echo, c.wantEcho)
		}
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
		{"a window below one segment", layout(1380, 1000), false},
		{"macOS's option order", layout(1460, 65535, 2, 4, 5, 180, 1, 3, 3, 6, 4, 2, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8), false},
		{"no window scale", layout(1460, 64240, 2, 4, 5, 180, 4, 2, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 1, 1, 0), false},
		{"options cut short", layout(1460, 64240)[:30], false},
		{"no options", layout(1460, 64240, []byte{}...), false},
	} {
		if got := linuxSYN(c.tcp); got != c.want {
			t.Errorf("%s: linuxSYN = %v, want %v", c.name, got, c.want)
		}
	}
}
