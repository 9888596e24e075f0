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
// once) makes the stack send thousands of FINs within milliseconds. The
// acknowledgements of the last ones come back only after every FIN ahead
// of them has gone through the engine and the peer, much later than the
// stack's minimum retransmission timeout (tcpMinRTO), which is short
// for the sake of lossy paths of a few milliseconds. So the FINs time
// out and are sent again, and again as the timeout doubles, the copies
// lengthening the very queues the acknowledgements wait behind: the
// copies outnumber the FINs, and their packets, queued at once with
// everything else of the close, take the process's memory past what it
// held while all the connections were open.
//
// The link endpoint therefore drops a pure FIN (no payload) that repeats
// one it sent less than finResendFloor ago: Linux's minimum
// retransmission timeout. A FIN that was really lost is sent again at
// the first retransmission past the floor, as late as Linux would send
// it, give or take one step of the timeout's doubling; data segments,
// FINs that carry data included, keep the stack's short timeout.
//
// The table holds the FINs sent within the floor, however many a close
// sends: a fixed table that thousands of them share loses most of its
// entries before their repeats come. It is pruned of older entries as
// it grows and at the first FIN a floor after the last pruning, and
// replaced by a smaller one once a burst has passed.
const finResendFloor = 200 * time.Millisecond

// finSent is a FIN that went: its sequence number and when (UnixNano).
type finSent struct {
	seq  uint32
	sent int64
}

type finTable struct {
	mu sync.Mutex
	// sent is keyed by a hash of the connection's key (hash64): two
	// connections that share one, and a FIN at the same sequence
	// number, are taken for one another, a chance of one in 2^64.
	sent map[uint64]finSent
	// prune is the size at which sent is next pruned, and pruned when
	// it last was (UnixNano); it is pruned at the first FIN a floor
	// after that, too.
	prune  int
	pruned int64
}

// finPruneMin is the least size at which the table's growth prunes it.
const finPruneMin = 64

// finOnly reports whether th, a TCP header, has FIN set and neither
// SYN nor RST: the one test on the send path of every segment, inlined
// there, before repeat.
func finOnly(th []byte) bool {
	const kinds = uint8(header.TCPFlagSyn | header.TCPFlagFin | header.TCPFlagRst)
	return len(th) >= header.TCPMinimumSize && th[header.TCPFlagsOffset]&kinds == uint8(header.TCPFlagFin)
}

// repeat reports whether p, a segment of connection k whose TCP header
// th passed finOnly and that is about to leave, is a pure FIN that
// repeats one sent less than finResendFloor ago, and so should not
// leave; otherwise a pure FIN is recorded as sent now. The table
// allocates only as it grows.
func (t *finTable) repeat(p *stack.PacketBuffer, th []byte, k *flowKey, clk clock.Clock) bool {
	if p.Data().Size() != 0 {
		return false
	}
	seq := binary.BigEndian.Uint32(th[header.TCPSeqNumOffset:])
	h, now := k.hash64(), clk.Now().UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	if f, ok := t.sent[h]; ok && f.seq == seq && now-f.sent < int64(finResendFloor) {
		return true
	}
	if t.sent == nil {
		t.sent = make(map[uint64]finSent)
	}
	if len(t.sent) >= max(t.prune, finPruneMin) || now-t.pruned >= int64(finResendFloor) {
		t.pruneOld(now)
	}
	t.sent[h] = finSent{seq, now}
	return false
}

// pruneOld drops the entries past the floor, and moves the rest to a
// new map if they are few: a Go map keeps the size it grew to.
func (t *finTable) pruneOld(now int64) {
	t.pruned = now
	grown := len(t.sent)
	for h, f := range t.sent {
		if now-f.sent >= int64(finResendFloor) {
			delete(t.sent, h)
		}
	}
	if len(t.sent) < grown/4 && grown > finPruneMin {
		kept := make(map[uint64]finSent, len(t.sent))
		maps.Copy(kept, t.sent)
		t.sent = kept
	}
	t.prune = 2 * len(t.sent)
}

// hash64 hashes the key (FNV-1a, 64 bits).
func (k *flowKey) hash64() uint64 {
	h := uint64(14695981039346656037)
	for _, c := range k.b[:k.n] {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return h
}
