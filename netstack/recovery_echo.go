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
// So when a peer's data segment of a connection (or its FIN) arrives
// after the peer has sent no data for echoSilence or more, each
// acknowledgement of that connection echoes that segment's timestamp less
// echoBefore ticks (the anchor), until it acknowledges data beyond the
// right edge of the window we had advertised: beyond anything the sender
// could have had in flight before the silence. The echo is then older
// than every retransmission it answers, so gVisor's RACK does not date
// its loss detection from them, stays in timeout recovery and resends the
// flight in slow start; and it is fresh, so every sender takes an RTT
// sample of about the true one (longer by the time the catching up has
// taken) and its timer comes back down. Linux, whose timeout recovery
// retransmitted more than once during any outage longer than its minimum
// timeout, sees the echo as newer than its first retransmission and
// keeps its recovery. When the silence ended with Linux's first
// retransmission (an outage shorter than its timer), it takes the older
// echo for proof that the timeout was spurious (Eifel), undoes its
// recovery and waits for a flight it thinks is on its way. So a sender
// that falls silent again while catching up, having sent no more than
// echoStalled segments since the catch-up began and got no data from
// us, gets true echoes instead, until it has caught up, and recovers at
// its next timeout.
//
// Anything else that falls silent while catching up is not such a
// sender, and the segment that ends its silence starts a new catch-up
// with a new anchor. A sender that had moved on before it timed out
// again still needs the old echo, or gVisor's RACK crawls. And a peer
// whose requests we answer pauses between them: if its next request
// took it for a stalled sender, a gVisor client that later timed out on
// that connection would crawl. Pure acknowledgements start nothing: a
// peer that only receives has no flight to resend.
//
// What this costs elsewhere: for one window of data after each pause of
// a connection, RTT samples longer by the time since the pause ended;
// and a sender that finds in those echoes an earlier transmission of a
// segment it resent in that window may take the resend for spurious
// (Eifel). The table keeps one connection per slot, like the
// acknowledgement table (recovery_acks.go): connections that share a slot
// take turns.

const (
	// echoSlots is the table's size, as for ackSlots.
	echoSlots = 256
	// echoSilence is the shortest silence that starts a catch-up: no
	// TCP in use retransmits sooner than its minimum timeout, 200 ms
	// in Linux and gVisor, so a sender that timed out was silent at
	// least this long.
	echoSilence = 200 * time.Millisecond
	// echoStalled is how many data segments a sender may have sent since
	// its catch-up began and still count as stalled when it falls silent
	// again: a Linux sender that undid its recovery has resent one
	// segment, two at most, and waits; a sender that timed out again
	// later has moved further.
	echoStalled = 3
	// echoBefore is how many timestamp ticks below the segment that
	// ends the silence the echo is put. gVisor stamps a segment up to a
	// tick after it records the send time that RACK compares the echo
	// with; two ticks are older than both (a millisecond each for Linux
	// and gVisor).
	echoBefore = 2
	// echoAncient is how many ticks below the newest timestamp the echo
	// of an acknowledgement re-sent to Linux is put (resendEcho): more
	// than Linux's bound on an RTT sample, INT_MAX/1000 milliseconds.
	echoAncient = 1 << 22
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

// hash64 hashes the key (FNV-1a, 64 bits), for a table keyed by it
// rather than by slot.
func (k *flowKey) hash64() uint64 {
	h := uint64(14695981039346656037)
	for _, c := range k.b[:k.n] {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return h
}

type echoSlot struct {
	mu  sync.Mutex
	key flowKey
	// spoke is when the peer's latest data or FIN segment arrived, or
	// the segment that (re)started the slot (UnixNano, 0: not yet); tsval
	// is the newest timestamp it has sent.
	spoke int64
	tsval uint32
	// theySend is whether the peer has sent data, not only
	// acknowledgements.
	theySend bool
	// acked is the latest acknowledgement number we sent and right the
	// furthest right edge of the window we advertised, once ackSent.
	acked, right uint32
	ackSent      bool
	// ourScale and theirScale are the window scales our SYN and the
	// peer's offered, -1 for none: ours applies only if both did.
	ourScale, theirScale int8
	// linux is whether the peer's SYN was laid out as Linux lays it out
	// (linuxSYN).
	linux bool
	// catchUp holds from a silence until we acknowledge edge, and anchor
	// is the echo meanwhile; moved counts the peer's data segments since
	// it began (up to echoStalled+1), and answered is whether we have
	// sent data since. honest, set when a stalled sender ends a silence,
	// makes the echo the newest timestamp instead, for that catch-up.
	catchUp, honest, answered bool
	edge, anchor              uint32
	moved                     uint8
}

// reset makes s the slot of a new connection k.
func (s *echoSlot) reset(k flowKey) {
	if s.key != k {
		s.ourScale, s.theirScale, s.linux = -1, -1, false
	}
	s.key, s.spoke, s.tsval, s.theySend = k, 0, 0, false
	s.acked, s.right, s.ackSent = 0, 0, false
	s.catchUp, s.honest, s.answered, s.edge, s.anchor, s.moved = false, false, false, 0, 0, 0
}

type echoTable struct {
	slots atomic.Pointer[[echoSlots]echoSlot]
}

// table is the slots, allocated on first use.
func (t *echoTable) table() *[echoSlots]echoSlot {
	slots := t.slots.Load()
	if slots == nil {
		t.slots.CompareAndSwap(nil, new([echoSlots]echoSlot))
		slots = t.slots.Load()
	}
	return slots
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
	tsval := binary.BigEndian.Uint32(tcp[ts+2:])
	s := &t.table()[k.slot(echoSlots)]
	s.mu.Lock()
	defer s.mu.Unlock()
	flags := tcp[header.TCPFlagsOffset]
	if s.key != k || flags&uint8(header.TCPFlagSyn|header.TCPFlagRst) != 0 {
		s.reset(k)
		if flags&uint8(header.TCPFlagSyn) != 0 {
			s.theirScale, s.linux = windowScale(tcp), linuxSYN(tcp)
		}
		s.spoke, s.tsval = now, tsval
		return
	}
	data := len(tcp) > int(tcp[header.TCPDataOffset]>>4)*4
	if data || flags&uint8(header.TCPFlagFin) != 0 {
		if s.ackSent && s.spoke != 0 && now-s.spoke >= int64(echoSilence) {
			// Nothing the sender retransmits from now on was sent
			// before this segment, so an echo older than it is older
			// than every retransmission it will acknowledge. Unless
			// the sender stalled while catching up: one that took the
			// old echo for proof that its timeout was spurious (Linux,
			// Eifel) and now waits for a flight it thinks is still on
			// its way. It gets true echoes until it has caught up.
			s.honest = s.catchUp && s.moved <= echoStalled && !s.answered
			s.catchUp, s.edge, s.anchor, s.moved, s.answered = true, s.right, tsval-echoBefore, 0, false
		}
		s.spoke = now
		if s.moved <= echoStalled {
			s.moved++
		}
	}
	s.theySend = s.theySend || data
	if int32(tsval-s.tsval) > 0 {
		s.tsval = tsval
	}
}

// echo sets the timestamp echo of an outbound TCP packet of a connection
// that is catching up after a silence (see above), and notes the
// acknowledgement and window it carries; k is the packet's packetKey.
// It is on the send path of every TCP packet and does not allocate.
func (t *echoTable) echo(p *stack.PacketBuffer, k flowKey) {
	th := p.TransportHeader().Slice()
	if len(th) < header.TCPMinimumSize {
		return
	}
	flags := th[header.TCPFlagsOffset]
	syn := flags&uint8(header.TCPFlagSyn) != 0
	slots := t.slots.Load()
	if slots == nil && !syn || flags&uint8(header.TCPFlagAck|header.TCPFlagSyn) == 0 {
		return
	}
	s := &t.table()[k.slot(echoSlots)]
	s.mu.Lock()
	defer s.mu.Unlock()
	if syn {
		// Our SYN or SYN-ACK: the window scale we offer.
		if s.key != k || flags&uint8(header.TCPFlagAck) == 0 {
			s.reset(k)
		}
		s.ourScale = windowScale(th)
		return
	}
	if s.key != k {
		return
	}
	h := header.TCP(th)
	ack := h.AckNumber()
	right := ack + uint32(h.WindowSize())<<s.scale()
	if !s.ackSent || int32(ack-s.acked) > 0 {
		s.acked = ack
	}
	if !s.ackSent || int32(right-s.right) > 0 {
		s.right = right
	}
	s.ackSent = true
	if !s.catchUp {
		return
	}
	if p.Data().Size() > 0 {
		s.answered = true
	}
	if int32(ack-s.edge) >= 0 {
		s.catchUp, s.honest = false, false
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
	echo := s.anchor
	if s.honest {
		echo = s.tsval
	}
	binary.BigEndian.PutUint32(th[ts+6:], echo)
	// A TCP super-segment's checksum is finished when it is cut
	// (finishSegment); any other packet's is complete already.
	if p.GSOOptions.Type == stack.GSONone || !p.GSOOptions.NeedsCsum {
		h.SetChecksum(^checksum.Combine(checksum.Combine(^h.Checksum(), ^checksum.Checksum(old[:to-from], 0)), checksum.Checksum(th[from:to], 0)))
	}
}

// resendEcho is the echo of connection k's acknowledgement (an outbound
// packet's key, with timestamps) when it is re-sent at its peer's return,
// set if it is to be changed, and ok unless it must be kept back. Where
// the peer sends data, the acknowledgement covers the sender's
// retransmitted head, and its echo decides what the sender makes of it:
//
//   - Linux takes the acknowledgement of data it never resent for proof
//     that its timeout was spurious (F-RTO) and undoes its recovery. An
//     echo from before the outage then gives it an RTT sample as long as
//     the outage, and it waits out a timer of that length. An echo more
//     than INT_MAX/1000 ticks old (its clock's difference, taken modulo
//     2^32) gives it no sample at all, so it resends at its own
//     un-backed-off timer.
//   - gVisor's RACK, given a fresh echo, dates its loss detection from
//     the head's last retransmission and crawls; given an old one, it
//     takes the echo's age as an RTT sample, and an ancient one holds its
//     timer at its ceiling until many true samples have worn it down. A
//     loss meanwhile waits out that ceiling.
//
// So only a Linux peer (linuxSYN) gets an echo echoAncient ticks below
// its newest timestamp; any other is kept back and resumes at its own
// next timeout, which the echo after the silence then serves. So is an
// acknowledgement whose connection we cannot tell, its slot having been
// taken by another: its recorded echo, from before the outage, would
// suit neither.
func (t *echoTable) resendEcho(k flowKey) (echo uint32, set, ok bool) {
	slots := t.slots.Load()
	if slots == nil {
		return 0, false, false
	}
	s := &slots[k.slot(echoSlots)]
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.key != k:
		return 0, false, false
	case !s.theySend:
		return 0, false, true
	case !s.linux:
		return 0, false, false
	}
	echo = s.tsval - echoAncient
	if echo == 0 {
		echo-- // 0 is no echo at all
	}
	return echo, true, true
}

// linuxSYN reports whether a SYN's options and window are laid out as
// Linux lays them out: MSS, SACK permitted, timestamps, a NOP and the
// window scale, in that order, and a window that is a whole number of
// segments, as Linux rounds it down to its MSS (less the timestamp
// option's 12 bytes, on a SYN-ACK). Other systems order their options
// differently. gVisor copies Linux's order, and offers twice its initial
// congestion window of ten segments, rounded down to its window scale:
// a whole number of segments too where the scale divides it, so that
// window is not Linux's (Linux offers about 64 KiB).
func linuxSYN(tcp []byte) bool {
	const optLen = 20
	end := header.TCPMinimumSize + optLen
	if len(tcp) < end || int(tcp[header.TCPDataOffset]>>4)*4 != end {
		return false
	}
	o := tcp[header.TCPMinimumSize:end]
	layout := [optLen]byte{0: tcpOptMSS, 1: 4, 4: tcpOptSACKPermitted, 5: 2, 6: tcpOptTimestamp, 7: 10, 16: tcpOptNOP, 17: tcpOptWindowScale, 18: 3}
	for i, want := range layout {
		if want != 0 && o[i] != want {
			return false
		}
	}
	mss := int(binary.BigEndian.Uint16(o[2:]))
	wnd := int(header.TCP(tcp).WindowSize())
	if ws := min(o[19], 14); wnd == 20*mss>>ws<<ws {
		return false
	}
	// A SYN-ACK's unit is the MSS less the timestamp option with its two
	// aligning NOPs.
	for _, unit := range []int{mss, mss - header.TCPOptionTSLength - 2} {
		if unit > 0 && wnd >= unit && wnd%unit == 0 {
			return true
		}
	}
	return false
}

// scale is the shift of the windows we advertise.
func (s *echoSlot) scale() uint8 {
	if s.ourScale < 0 || s.theirScale < 0 {
		return 0
	}
	return uint8(min(s.ourScale, 14))
}

// tsOption is the offset in a TCP header of its timestamp option, if it
// has a well-formed one.
func tsOption(tcp []byte) (int, bool) {
	i, ok := findOption(tcp, tcpOptTimestamp)
	return i, ok && tcp[i+1] == 10
}

// windowScale is the shift a SYN's window scale option offers, or -1.
func windowScale(tcp []byte) int8 {
	if i, ok := findOption(tcp, tcpOptWindowScale); ok && tcp[i+1] == 3 {
		return int8(min(tcp[i+2], 14))
	}
	return -1
}

// findOption is the offset in a TCP header of its first option of kind,
// if the options up to it are well formed.
func findOption(tcp []byte, kind byte) (int, bool) {
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
		if tcp[i] == kind {
			return i, true
		}
		i += int(tcp[i+1])
	}
	return 0, false
}

// The TCP option kinds used here, of RFC 9293, 2018 and 7323.
const (
	tcpOptEnd           = 0
	tcpOptNOP           = 1
	tcpOptMSS           = 2
	tcpOptWindowScale   = 3
	tcpOptSACKPermitted = 4
	tcpOptTimestamp     = 8
)

// ipTCPHeader returns the TCP header and payload, as far as the IP
// header's length goes, of an IPv4 or IPv6 packet that carries TCP
// directly, or nil.
func ipTCPHeader(p []byte) []byte {
	switch header.IPVersion(p) {
	case header.IPv4Version:
		if len(p) < header.IPv4MinimumSize {
			return nil
		}
		ip := header.IPv4(p)
		hl, end := int(ip.HeaderLength()), int(ip.TotalLength())
		if ip.Protocol() != uint8(header.TCPProtocolNumber) || hl < header.IPv4MinimumSize || hl > end || end > len(p) || ip.FragmentOffset() != 0 {
			return nil
		}
		return p[hl:end]
	case header.IPv6Version:
		if len(p) < header.IPv6MinimumSize || header.IPv6(p).NextHeader() != uint8(header.TCPProtocolNumber) {
			return nil
		}
		end := header.IPv6MinimumSize + int(header.IPv6(p).PayloadLength())
		if end > len(p) {
			return nil
		}
		return p[header.IPv6MinimumSize:end]
	}
	return nil
}
