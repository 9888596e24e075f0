package netstack

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// After a silence, the timestamp echo of our acknowledgements is set by
// the link endpoint, not by gVisor, until the sender has caught up.
//
// A remote sender that timed out during an outage resends, once the
// path is back, what it had in flight, oldest first. What our
// acknowledgements echo decides how it does that:
//
//   - gVisor's TCP as it ships (RACK on) takes the acknowledgement of a
//     retransmission, echoing that retransmission's timestamp, as proof
//     that everything sent before it is lost. It re-enters SACK recovery
//     counting that whole flight as still in the pipe, the scoreboard
//     having been cleared at the timeout, so its congestion window stays
//     full: it sends one segment per acknowledgement and one per
//     timeout. Without timestamps it also takes no RTT sample from those
//     acknowledgements, and its timer, backed off during the outage,
//     never comes down. Every receiver that echoes as RFC 7323 says makes
//     it crawl for minutes; without timestamps it never recovers.
//   - Linux's backed-off retransmission can arrive as a duplicate of data
//     that reached us before the outage. gVisor drops it before it looks
//     at its timestamp, as RFC 7323 has it, so its acknowledgement echoes
//     the last timestamp from before the outage; Linux takes that for an
//     RTT of the outage's length and waits a loss probe of twice that.
//
// So when a peer's segment of a connection arrives after a silence of
// echoSilence or more, each acknowledgement of that connection echoes
// the timestamp of the newest segment received, less echoBefore ticks,
// until it acknowledges data beyond what the sender could have had in
// flight before the silence. The echo is then fresh, so every sender
// takes a true RTT sample and its timer comes back down; and it is older
// than the retransmission it answers, so gVisor's RACK does not date
// its loss detection from it, stays in timeout recovery and resends the
// flight in slow start. Linux, whose timeout recovery retransmitted more
// than once during any outage longer than its minimum timeout, sees the
// echo as newer than its first retransmission and keeps its recovery.
//
// What this costs elsewhere: RTT samples longer by echoBefore ticks, for
// one window of data after each pause of a connection; and a sender
// that finds in those echoes an earlier transmission of a segment it
// resent in that window may take the resend for spurious (Eifel). The
// table keeps one connection per slot, like the acknowledgement table
// (ackreplay.go): connections that share a slot take turns.

const (
	// echoSlots is the table's size, as for ackSlots.
	echoSlots = 256
	// echoSilence is the shortest silence that starts a catch-up: no
	// TCP in use retransmits sooner than its minimum timeout, 200 ms
	// in Linux and gVisor, so a sender that timed out was silent at
	// least this long.
	echoSilence = 200 * time.Millisecond
	// echoBefore is how many timestamp ticks below the newest segment's
	// the echo is put. gVisor stamps a segment up to a tick after it
	// records the send time that RACK compares the echo with; two
	// ticks are older than both, and a millisecond each for Linux and
	// gVisor.
	echoBefore = 2
	// catchUpSpan bounds what a sender can have had in flight beyond the
	// last acknowledgement we sent: our receive window, which never
	// exceeds the largest receive buffer, rounded up by window scaling.
	catchUpSpan = tcpBufferMax + 1<<20
)

// flowKeyMax is an IPv6 flow's key: both addresses and both ports.
const flowKeyMax = 2*16 + 4

// flowKey names a connection by its outbound direction: our address,
// theirs, our port, theirs.
type flowKey struct {
	b [flowKeyMax]byte
	n uint8
}

// keyOf is the key of a TCP packet's connection; in reverses it for a
// packet that arrives.
func keyOf(nh, th []byte, in bool) (flowKey, bool) {
	var k flowKey
	from, to, ok := addrSpan(header.IPVersion(nh))
	if !ok || len(nh) < to || len(th) < 4 {
		return k, false
	}
	half := (to - from) / 2
	a, b := nh[from:from+half], nh[from+half:to]
	pa, pb := th[0:2], th[2:4]
	if in {
		a, b, pa, pb = b, a, pb, pa
	}
	n := copy(k.b[:], a)
	n += copy(k.b[n:], b)
	n += copy(k.b[n:], pa)
	n += copy(k.b[n:], pb)
	k.n = uint8(n)
	return k, true
}

// slot hashes the key (FNV-1a) to one of n slots.
func (k *flowKey) slot(n uint32) int {
	h := uint32(2166136261)
	for _, c := range k.b[:k.n] {
		h = (h ^ uint32(c)) * 16777619
	}
	return int(h % n)
}

type echoSlot struct {
	mu  sync.Mutex
	key flowKey
	// heard is when the peer's latest segment arrived (UnixNano, 0: not
	// yet), and tsval the newest timestamp it has sent.
	heard int64
	tsval uint32
	// acked is the latest acknowledgement number we sent, once ackSent.
	acked   uint32
	ackSent bool
	// catchUp holds from a silence until we acknowledge edge.
	catchUp bool
	edge    uint32
}

type echoTable struct {
	slots atomic.Pointer[[echoSlots]echoSlot]
}

// heard notes a TCP segment from a peer, p being the whole IP packet and
// tcp its TCP header, arrived at now (UnixNano). It is on the receive
// path of every TCP packet and does not allocate.
func (t *echoTable) heard(p, tcp []byte, now int64) {
	ts, ok := tsOption(tcp)
	if !ok {
		return // no timestamps on this connection: nothing to echo
	}
	k, ok := keyOf(p[:len(p)-len(tcp)], tcp, true)
	if !ok {
		return
	}
	slots := t.slots.Load()
	if slots == nil {
		t.slots.CompareAndSwap(nil, new([echoSlots]echoSlot))
		slots = t.slots.Load()
	}
	tsval := binary.BigEndian.Uint32(tcp[ts+2:])
	s := &slots[k.slot(echoSlots)]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.key != k || tcp[header.TCPFlagsOffset]&uint8(header.TCPFlagSyn|header.TCPFlagRst) != 0 {
		s.key, s.heard, s.tsval = k, now, tsval
		s.acked, s.ackSent, s.catchUp, s.edge = 0, false, false, 0
		return
	}
	if s.ackSent && !s.catchUp && now-s.heard >= int64(echoSilence) {
		s.catchUp, s.edge = true, s.acked+catchUpSpan
	}
	s.heard = now
	if int32(tsval-s.tsval) > 0 {
		s.tsval = tsval
	}
}

// echo sets the timestamp echo of an outbound TCP packet of a connection
// that is catching up after a silence (see above), and notes the
// acknowledgement it carries. It is on the send path of every TCP packet
// and does not allocate.
func (t *echoTable) echo(p *stack.PacketBuffer) {
	slots := t.slots.Load()
	if slots == nil {
		return // no peer has sent a timestamp yet
	}
	th := p.TransportHeader().Slice()
	if len(th) < header.TCPMinimumSize || th[header.TCPFlagsOffset]&uint8(header.TCPFlagAck) == 0 {
		return
	}
	k, ok := keyOf(p.NetworkHeader().Slice(), th, false)
	if !ok {
		return
	}
	ack := header.TCP(th).AckNumber()
	s := &slots[k.slot(echoSlots)]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.key != k {
		return
	}
	if !s.ackSent || int32(ack-s.acked) > 0 {
		s.acked, s.ackSent = ack, true
	}
	if !s.catchUp {
		return
	}
	if int32(ack-s.edge) >= 0 {
		s.catchUp = false
		return
	}
	ts, ok := tsOption(th)
	if !ok {
		return
	}
	// The checksum is updated over whole 16-bit words: the option may
	// sit at an odd offset.
	from, to := (ts+6)&^1, (ts+11)&^1
	var old [6]byte
	copy(old[:], th[from:to])
	binary.BigEndian.PutUint32(th[ts+6:], s.tsval-echoBefore)
	// A TCP super-segment's checksum is finished when it is cut
	// (finishSegment); any other packet's is complete already.
	if p.GSOOptions.Type == stack.GSONone || !p.GSOOptions.NeedsCsum {
		h := header.TCP(th)
		h.SetChecksum(^checksum.Combine(checksum.Combine(^h.Checksum(), ^checksum.Checksum(old[:to-from], 0)), checksum.Checksum(th[from:to], 0)))
	}
}

// tsOption is the offset in a TCP header of its timestamp option, if it
// has a well-formed one.
func tsOption(tcp []byte) (int, bool) {
	if len(tcp) < header.TCPMinimumSize {
		return 0, false
	}
	end := int(tcp[header.TCPDataOffset]>>4) * 4
	if end < header.TCPMinimumSize || end > len(tcp) {
		return 0, false
	}
	for i := header.TCPMinimumSize; i < end; {
		switch tcp[i] {
		case tcpOptEnd:
			return 0, false
		case tcpOptNOP:
			i++
			continue
		}
		if i+1 >= end || tcp[i+1] < 2 || i+int(tcp[i+1]) > end {
			return 0, false
		}
		if tcp[i] == tcpOptTimestamp {
			return i, tcp[i+1] == 10
		}
		i += int(tcp[i+1])
	}
	return 0, false
}

// tcpOptEnd, tcpOptNOP and tcpOptTimestamp are option kinds of RFC 9293
// and 7323.
const (
	tcpOptEnd       = 0
	tcpOptNOP       = 1
	tcpOptTimestamp = 8
)

// ipTCPHeader returns the TCP header (and what follows it) of an IPv4 or
// IPv6 packet that carries TCP directly, or nil.
func ipTCPHeader(p []byte) []byte {
	switch header.IPVersion(p) {
	case header.IPv4Version:
		if len(p) < header.IPv4MinimumSize {
			return nil
		}
		ip := header.IPv4(p)
		hl := int(ip.HeaderLength())
		if ip.Protocol() != uint8(header.TCPProtocolNumber) || hl < header.IPv4MinimumSize || hl > len(p) || ip.FragmentOffset() != 0 {
			return nil
		}
		return p[hl:]
	case header.IPv6Version:
		if len(p) < header.IPv6MinimumSize || header.IPv6(p).NextHeader() != uint8(header.TCPProtocolNumber) {
			return nil
		}
		return p[header.IPv6MinimumSize:]
	}
	return nil
}
