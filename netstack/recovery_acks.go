package netstack

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/wgbore/wgbore/protocol"
)

// When a peer comes back after a silence (protocol.PeerReturner), the
// link endpoint re-sends the latest pure acknowledgement of each of our
// TCP connections through it, or keeps it back where its timestamp echo
// would do the sender more harm than good (prepareAck). An outage
// swallows the acknowledgements that were on their way when it began,
// for data that had already reached us. The remote sender, meanwhile,
// has timed out and backed off: Linux doubles its retransmission timer
// up to 120 s, so after a long outage its next retransmission can come
// many seconds after the path returned. The WireGuard handshake that
// follows the outage comes within a few milliseconds of the path's
// return; re-sent then, an acknowledgement that covers new data moves
// the sender's window at once, and Linux takes the timeout for spurious
// and sends again. The engine calls only on a handshake message or
// keepalive, never on data: a duplicate right behind the stack's own
// answer to a retransmission throws gVisor's RACK sender into a crawl.
// The package documentation tells how this fits with the stack's other
// changes for TCP through outages.
//
// gVisor has no call that makes a connection send an acknowledgement, so
// the link endpoint keeps a copy of the last pure one each connection
// sent, in a small table indexed by a hash of the connection's addresses
// and ports. It is best effort: connections that share a slot keep only
// the latest writer's copy.

// ackSlots is the table's size: a few hundred busy connections at a time
// is plenty for a tunnel, and the table costs about 40 KB, allocated
// when the first acknowledgement is recorded.
const ackSlots = 256

// ackMaxLen holds an IPv6 header and a TCP header with 40 bytes of
// options, the largest pure acknowledgement.
const ackMaxLen = header.IPv6MinimumSize + header.TCPHeaderMaximumSize

type ackSlot struct {
	mu  sync.Mutex
	n   int // 0: empty
	key flowKey
	pkt [ackMaxLen]byte
}

type ackTable struct {
	slots atomic.Pointer[[ackSlots]ackSlot]
}

// record keeps a copy of p if it is a pure acknowledgement (no payload,
// no SYN, FIN or RST) and forgets its connection's copy if p ends the
// connection or starts a new one on the same ports. p must be a TCP
// packet. It is on the send path of every TCP packet and does not
// allocate.
func (t *ackTable) record(p *stack.PacketBuffer, k flowKey) {
	const ends = uint8(header.TCPFlagSyn | header.TCPFlagFin | header.TCPFlagRst)
	th := p.TransportHeader().Slice()
	if len(th) < header.TCPMinimumSize {
		return
	}
	flags := th[header.TCPFlagsOffset]
	pure := flags&(uint8(header.TCPFlagAck)|ends) == uint8(header.TCPFlagAck)
	if pure && p.Data().Size() != 0 || !pure && flags&ends == 0 {
		return // data, the common case
	}
	nh := p.NetworkHeader().Slice()
	if len(nh)+len(th) > ackMaxLen {
		return
	}
	i := k.slot(ackSlots)
	slots := t.slots.Load()
	if slots == nil {
		if !pure {
			return
		}
		t.slots.CompareAndSwap(nil, new([ackSlots]ackSlot))
		slots = t.slots.Load()
	}
	s := &slots[i]
	s.mu.Lock()
	switch {
	case !pure:
		if s.n > 0 && s.key == k {
			s.n = 0
		}
	case s.n > 0 && s.key == k && keepaliveProbe(s.pkt[:s.n], th):
		// Keep the acknowledgement the probe follows: a probe's sequence
		// number is one below the window, so the receiver discards it
		// without reading its acknowledgement number.
	default:
		s.key = k
		s.n = copy(s.pkt[:], nh)
		s.n += copy(s.pkt[s.n:], th)
	}
	s.mu.Unlock()
}

// replay re-sends, through w, each recorded acknowledgement whose
// destination to reaches, given the peer it belongs to. prepare sees
// each copy's TCP header before it leaves, may rewrite it, and says
// whether it goes at all.
func (t *ackTable) replay(w func([][]byte), to func(netip.Addr) bool, prepare func(k flowKey, th []byte) bool) int {
	slots := t.slots.Load()
	if slots == nil {
		return 0
	}
	var pkts [][]byte
	for i := range slots {
		s := &slots[i]
		s.mu.Lock()
		if s.n > 0 {
			if dst, ok := destination(s.pkt[:s.n]); ok && to(dst) {
				hl := ipHeaderLen(s.pkt[:s.n])
				pkt := append([]byte(nil), s.pkt[:s.n]...)
				if prepare(s.key, pkt[hl:]) {
					// gVisor left the TCP checksum to the link
					// endpoint (gso.go), as for any segment it sends.
					finishSegment(pkt, hl, 0, 0, true)
					pkts = append(pkts, pkt)
				}
			}
		}
		s.mu.Unlock()
	}
	if len(pkts) > 0 {
		w(pkts)
	}
	return len(pkts)
}

// addrSpan is where an IP header of version v keeps its source and
// destination addresses.
func addrSpan(v int) (from, to int, ok bool) {
	switch v {
	case header.IPv4Version:
		return 12, 20, true
	case header.IPv6Version:
		return 8, 40, true
	}
	return 0, 0, false
}

// keepaliveProbe reports whether th, of the connection recorded in rec,
// is a keepalive probe: its sequence number is below the recorded one.
func keepaliveProbe(rec, th []byte) bool {
	hl := ipHeaderLen(rec)
	if len(rec) < hl+header.TCPMinimumSize {
		return false
	}
	return int32(header.TCP(th).SequenceNumber()-header.TCP(rec[hl:]).SequenceNumber()) < 0
}

// ipHeaderLen is the length of a recorded packet's IP header.
func ipHeaderLen(p []byte) int {
	if header.IPVersion(p) == header.IPv4Version {
		return int(header.IPv4(p).HeaderLength())
	}
	return header.IPv6MinimumSize
}

// destination is a recorded packet's destination address.
func destination(p []byte) (netip.Addr, bool) {
	switch header.IPVersion(p) {
	case header.IPv4Version:
		return netip.AddrFrom4([4]byte(p[16:20])), true
	case header.IPv6Version:
		return netip.AddrFrom16([16]byte(p[24:40])), true
	}
	return netip.Addr{}, false
}

// PeerReturned implements protocol.PeerReturner: it re-sends the latest
// acknowledgements of the connections routed through peer.
func (l *linkEndpoint) PeerReturned(peer protocol.PublicKey) {
	w, ok := l.engine.(interface{ WritePackets([][]byte) })
	if !ok {
		return
	}
	to := func(netip.Addr) bool { return true }
	if r, ok := l.engine.(interface {
		PeerFor(netip.Addr) (protocol.PublicKey, bool)
	}); ok {
		to = func(a netip.Addr) bool {
			k, ok := r.PeerFor(a)
			return ok && k == peer
		}
	}
	l.resentAcks.Add(uint64(l.acks.replay(w.WritePackets, to, l.prepareAck)))
}

// prepareAck readies a copy of connection k's acknowledgement, TCP
// header th, to be re-sent when its peer returns. On a connection with
// timestamps on which the peer sends data, it acknowledges that
// sender's retransmitted head, and the echo decides what the sender does
// with it (echoTable.resendEcho): to Linux it goes with an ancient echo;
// from any other sender, or one we cannot tell, it is kept back.
func (l *linkEndpoint) prepareAck(k flowKey, th []byte) bool {
	ts, ok := tsOption(th)
	if !ok {
		return true
	}
	echo, set, ok := l.echoes.resendEcho(k)
	if set {
		binary.BigEndian.PutUint32(th[ts+6:], echo)
	}
	return ok
}
