package netstack

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/wgbore/wgbore/protocol/clock"
)

// gVisor's TCP acknowledges each batch of segments it has taken in at
// once: it has no delayed acknowledgement. A request answered at once (an
// echo, an RPC, an HTTP exchange through the proxies) thus costs a pure
// acknowledgement and then, a moment later, a data segment that
// acknowledges the same bytes again: a packet to seal and send here, and
// one for the peer to open and process. Linux's TCP delays such an
// acknowledgement so that the answer carries it.
//
// The link endpoint does the same, more narrowly than Linux: it holds a
// pure acknowledgement for up to ackDelay only when the connection's
// previous segment from us carried data (the acknowledgement is of an
// answer to it, and a next request may follow) and it acknowledges no
// more than one full-sized segment beyond that one. A download, where we
// send only acknowledgements, is left as gVisor paces it. A later
// segment of the connection whose acknowledgement the peer reads (one at
// or beyond the held one's sequence number) lets the held one go unsent:
// it acknowledges as much or more and advertises a newer window. Nothing
// else waits:
//   - an acknowledgement of more than a segment (a burst, a download:
//     the sender's window grows with them);
//   - one that repeats the previous number (a duplicate, which tells of
//     a loss, or a window update) or follows one with SACK blocks (it
//     may fill the hole), or carries SACK blocks itself;
//   - one that follows another acknowledgement rather than our data, and
//     the first of a connection the table knows nothing of, such as the
//     one that completes our handshake (a server that speaks first
//     waits for it);
//   - SYN, FIN and RST segments, and data.
//
// Slots are shared by connections whose keys hash alike, as in the
// acknowledgement table (recovery_acks.go): a connection whose slot another
// has taken is one the table knows nothing of.

// ackDelay is how long a pure acknowledgement may wait for a segment to
// carry it: longer than a proxy or a local service takes to answer, far
// shorter than any sender's minimum retransmission timeout (200 ms), so
// the sender never times out waiting for it.
const ackDelay = time.Millisecond

type heldAck struct {
	mu  sync.Mutex
	key flowKey
	pkt *stack.PacketBuffer // the held acknowledgement; nil: none
	// seq is the held acknowledgement's sequence number.
	seq uint32
	// sent is the acknowledgement number that last left on key's
	// connection, once sentOK; sack and data are whether that segment
	// carried SACK blocks and data.
	sent   uint32
	sentOK bool
	sack   bool
	data   bool
}

type ackDelayer struct {
	// wait is how long an acknowledgement may be held: ackDelay, or 0,
	// which holds none (for tests that read each one as it is sent).
	wait time.Duration
	// segment is a full-sized segment's payload at the link's MTU.
	segment uint32
	slots   atomic.Pointer[[ackSlots]heldAck]
	armed   atomic.Bool
	closed  atomic.Bool
	// after schedules f once d has passed, and flush sends packets on;
	// both are set by the link endpoint. The delay runs on the real
	// clock whatever clock the engine was given: a test's manual clock
	// that is never advanced would hold acknowledgements for good.
	after func(d time.Duration, f func()) clock.Timer
	flush func([]*stack.PacketBuffer)

	timerMu sync.Mutex
	timer   clock.Timer // made by the first hold, then reset
}

// hold decides about one outbound TCP segment p of connection k, not
// one to ourselves: it reports true when it keeps p back (having taken
// a reference) to send after the delay, unless a later segment of the
// connection goes first. It is on the send path of every TCP segment
// and does not allocate, but for the table, once.
func (d *ackDelayer) hold(p *stack.PacketBuffer, k flowKey) bool {
	th := p.TransportHeader().Slice()
	if d.wait == 0 || len(th) < header.TCPMinimumSize {
		return false
	}
	const ends = uint8(header.TCPFlagSyn | header.TCPFlagFin | header.TCPFlagRst)
	flags := th[header.TCPFlagsOffset]
	data := p.Data().Size() > 0
	pure := flags&(uint8(header.TCPFlagAck)|ends) == uint8(header.TCPFlagAck) && !data
	slots := d.slots.Load()
	if slots == nil {
		d.slots.CompareAndSwap(nil, new([ackSlots]heldAck))
		slots = d.slots.Load()
	}
	seq := binary.BigEndian.Uint32(th[header.TCPSeqNumOffset:])
	ack := binary.BigEndian.Uint32(th[header.TCPAckNumOffset:])
	sack := hasSACK(th)
	s := &slots[k.slot(ackSlots)]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pkt != nil && s.key != k {
		return false // another connection's turn
	}
	superseded := false
	if s.pkt != nil && int32(seq-s.seq) >= 0 {
		// The peer reads p's acknowledgement, which covers as much or
		// more, with a newer window: the held one goes unsent. A
		// segment below it (a keepalive or window probe, a
		// retransmission) is dropped unread, and the held one stays.
		s.pkt.DecRef()
		s.pkt = nil
		superseded = true
	}
	known := s.key == k && s.sentOK
	small := known && s.data && !s.sack && ack != s.sent && ack-s.sent <= d.segment
	if !pure || superseded || !small || sack || s.pkt != nil || d.closed.Load() {
		if s.pkt == nil {
			s.key, s.sent, s.sentOK, s.sack, s.data = k, ack, true, sack, data
		}
		return false
	}
	p.IncRef()
	s.pkt, s.seq = p, seq
	// What leaves in its place, or after the delay, acknowledges ack.
	s.sent, s.data = ack, false
	if d.armed.CompareAndSwap(false, true) {
		d.arm()
	}
	return true
}

// arm has flushHeld run once the delay has passed.
func (d *ackDelayer) arm() {
	d.timerMu.Lock()
	defer d.timerMu.Unlock()
	if d.timer == nil {
		d.timer = d.after(d.wait, d.flushHeld)
	} else {
		d.timer.Reset(d.wait)
	}
}

// flushHeld sends every acknowledgement still held.
func (d *ackDelayer) flushHeld() {
	d.armed.Store(false)
	pkts := d.take()
	if len(pkts) > 0 && !d.closed.Load() {
		d.flush(pkts)
	}
	for _, p := range pkts {
		p.DecRef()
	}
}

// take empties the table of held acknowledgements and returns them, with
// their references.
func (d *ackDelayer) take() []*stack.PacketBuffer {
	slots := d.slots.Load()
	if slots == nil {
		return nil
	}
	var pkts []*stack.PacketBuffer
	for i := range slots {
		s := &slots[i]
		s.mu.Lock()
		if s.pkt != nil {
			pkts = append(pkts, s.pkt)
			s.pkt = nil
		}
		s.mu.Unlock()
	}
	return pkts
}

// close lets every held acknowledgement go unsent and holds no more.
func (d *ackDelayer) close() {
	d.closed.Store(true)
	d.timerMu.Lock()
	if d.timer != nil {
		d.timer.Stop()
	}
	d.timerMu.Unlock()
	for _, p := range d.take() {
		p.DecRef()
	}
}

// tcpOptSACK is the SACK option's kind (RFC 2018).
const tcpOptSACK = 5

// hasSACK reports whether a TCP header carries SACK blocks.
func hasSACK(th []byte) bool {
	_, ok := findOption(th, tcpOptSACK)
	return ok
}
