package netstack

import (
	"encoding/binary"
	"maps"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/wgbore/wgbore/protocol/clock"
)

// A mass close (a client dropping thousands of proxied connections at
// once) can make the stack send thousands of FINs within milliseconds:
// half-closes are paced (finpace.go), but full closes, connections
// accepted through Listen, and a window's worth of half-closes to a slow
// peer are not. The acknowledgements of the last ones come back only
// after every FIN ahead of them has gone through the engine and the
// peer, much later than the stack's minimum retransmission timeout
// (tcpMinRTO), which is short for the sake of lossy paths of a few
// milliseconds. So the FINs time out and are sent again, and again as
// the timeout doubles, the copies lengthening the very queues the
// acknowledgements wait behind: the copies outnumber the FINs, and their
// packets add to the memory and the CPU time the close takes.
//
// Therefore, while FINs go in a burst (finBurst or more within
// finResendFloor), the link endpoint drops a pure FIN (no payload) that
// repeats one it sent less than finResendFloor ago: Linux's minimum
// retransmission timeout. A FIN that was really lost goes again at the
// stack's first retransmission past the floor, give or take one step of
// the timeout's doubling: about when Linux would send it. Outside a
// burst, and for data segments (FINs that carry data included), the
// stack's short timeout stands.
//
// The table holds the FINs sent within about a floor, however many a
// close sends: a fixed table that thousands of them share loses most of
// its entries before their repeats come. It is pruned as FINs come, and
// moved to a smaller map once a burst has passed; without further FINs
// it keeps the entries of the last one until Net.Trim gives it back.
const (
	finResendFloor = 200 * time.Millisecond
	// finBurst is how many FINs within the floor make a burst: a few
	// hundred connections closing a second, far below a mass close.
	finBurst = 64
	// finPruneEvery is how often, at most, FINs prune the table, so
	// that its size counts the FINs of about one floor.
	finPruneEvery = finResendFloor / 4
)

// finSent is a FIN that went: its sequence number, and when, as time
// since the table's epoch.
type finSent struct {
	seq  uint32
	sent time.Duration
}

type finTable struct {
	mu sync.Mutex
	// epoch is when the first FIN came: times are kept as durations
	// since, which a clock that steps back (the wall clock's
	// correction, a resumed machine) does not turn negative.
	epoch time.Time
	// sent is keyed by a hash of the connection's key (hash64): two
	// connections with the same hash, whose FINs also carry the same
	// sequence number, are taken for one another, and the second FIN
	// of the two waits out the floor.
	sent map[uint64]finSent
	// pruned is when the table was last pruned, and peak the most
	// entries it held since it was last moved to a new map.
	pruned time.Duration
	peak   int
}

// finOnly reports whether th, a TCP header, has FIN set and neither
// SYN nor RST: the test on the send path of every segment, before
// repeat.
func finOnly(th []byte) bool {
	const kinds = uint8(header.TCPFlagSyn | header.TCPFlagFin | header.TCPFlagRst)
	return len(th) >= header.TCPMinimumSize && th[header.TCPFlagsOffset]&kinds == uint8(header.TCPFlagFin)
}

// repeat reports whether p, a segment of connection k whose TCP header
// th passed finOnly and that is about to leave, is a pure FIN that
// repeats one sent less than finResendFloor ago while FINs go in a
// burst, and so should not leave; otherwise a pure FIN is recorded as
// sent now. The table allocates as it grows, and when it moves to a
// smaller map.
func (t *finTable) repeat(p *stack.PacketBuffer, th []byte, k *flowKey, clk clock.Clock) bool {
	if p.Data().Size() != 0 {
		return false
	}
	seq := binary.BigEndian.Uint32(th[header.TCPSeqNumOffset:])
	h, wall := k.hash64(), clk.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sent == nil { // the first FIN, or the first since trim
		t.epoch = wall
		t.sent = make(map[uint64]finSent)
	}
	now := wall.Sub(t.epoch)
	if now-t.pruned >= finPruneEvery || now < t.pruned {
		t.prune(now)
	}
	if f, ok := t.sent[h]; ok && f.seq == seq && young(now-f.sent) && len(t.sent) >= finBurst {
		return true
	}
	t.sent[h] = finSent{seq, now}
	t.peak = max(t.peak, len(t.sent))
	return false
}

// young reports whether a FIN sent age ago is within the floor. A
// negative age, from a clock that stepped back, is not.
func young(age time.Duration) bool { return age >= 0 && age < finResendFloor }

// prune drops the entries past the floor, and moves the rest to a new
// map once they are few against the most it held: a Go map keeps the
// size it grew to.
func (t *finTable) prune(now time.Duration) {
	t.pruned = now
	for h, f := range t.sent {
		if !young(now - f.sent) {
			delete(t.sent, h)
		}
	}
	if t.peak > finBurst && len(t.sent) < t.peak/4 {
		t.sent = maps.Collect(maps.All(t.sent))
		t.peak = len(t.sent)
	}
}

// trim drops the entries past the floor and gives the map back once none
// is left: without further FINs, prune never runs again, and the map a
// burst grew would stay.
func (t *finTable) trim(clk clock.Clock) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sent == nil {
		return
	}
	t.prune(clk.Now().Sub(t.epoch))
	if len(t.sent) == 0 {
		t.sent, t.peak = nil, 0
	}
}
