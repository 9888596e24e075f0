package netstack

import (
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// sendShare divides a total of send buffer among the connections whose
// writers are waiting for room, so that each of them may grow to an
// equal part of it.
//
// gVisor grows a connection's send buffer with its congestion window,
// up to the stack's maximum. Where our own CPU is the bottleneck, as in a
// server with many peers downloading, nothing is dropped, so no window
// ever shrinks: the connections whose windows grew first keep the
// lead, and the buffers together hold far more than the path needs.
// Capping each at its part of a total evens the shares out, and a
// connection alone still gets the whole total, enough for a far peer.
//
// The count is of Write calls in progress: a writer that finds the
// buffer full waits in Write for room, so a bulk transfer is counted
// almost all the time, and an interactive one, whose writes return at
// once, almost never. The ceiling moves in powers of two, falls at once
// when writers join and rises only once it has held for raiseAfter, so a
// count that wavers with each write changes the stack's option seldom.
type sendShare struct {
	stack *stack.Stack
	clock tcpip.Clock
	// total is what is shared; floor and max bound each part.
	total, floor, max int
	writing           atomic.Int32
	// ceiling is the maximum the stack has now.
	ceiling atomic.Int64
	mu      sync.Mutex // serializes setting the option
	// set is when the ceiling was last set (the clock's monotonic
	// time, in nanoseconds).
	set atomic.Int64
}

// raiseAfter is how long a ceiling holds before it may rise: many round
// trips of a local path, and short beside a transfer.
const raiseAfter = 100 * time.Millisecond

// newSendShare shares total among s's writers, each part at least
// floor and at most max. It sets the stack's send buffer maximum for
// no writer yet.
func newSendShare(s *stack.Stack, total, floor, max int) (*sendShare, error) {
	sh := &sendShare{stack: s, clock: s.Clock(), total: total, floor: min(floor, max), max: max}
	c := sh.ceilingFor(0)
	if err := setSendBufferMax(s, c); err != nil {
		return nil, err
	}
	sh.ceiling.Store(int64(c))
	sh.set.Store(sh.now())
	return sh, nil
}

// ceilingFor is each connection's part when n writers wait: the total
// divided among them, rounded down to a power of two, within floor and
// max.
func (sh *sendShare) ceilingFor(n int) int {
	part := sh.total / max(n, 1)
	if part > 0 {
		part = 1 << (bits.Len(uint(part)) - 1)
	}
	return min(max(part, sh.floor), sh.max)
}

// enter counts a writer to ep in, and cuts ep's send buffer to the
// ceiling if it is larger: gVisor only ever cuts a buffer at a growth
// step, when the congestion window would fill the new maximum, so a
// connection that grew alone and is window-bound would keep its large
// buffer, and its lead, however many joined it.
func (sh *sendShare) enter(ep tcpip.Endpoint) {
	sh.adjust(sh.writing.Add(1))
	ops := ep.SocketOptions()
	if c := sh.ceiling.Load(); ops.GetSendBufferSize() > c {
		// Without notify, as gVisor's own tuning sets it: a size set
		// with notify would turn that tuning off for good.
		ops.SetSendBufferSize(c, false)
	}
}

// leave counts a writer out.
func (sh *sendShare) leave() { sh.adjust(sh.writing.Add(-1)) }

// adjust sets the stack's maximum for n writers, unless it is that
// already or would rise too soon; most calls end at the first
// comparison.
func (sh *sendShare) adjust(n int32) {
	c := int64(sh.ceilingFor(int(n)))
	if c == sh.ceiling.Load() || c > sh.ceiling.Load() && !sh.mayRise() {
		return
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	// Another writer may have come or gone since: set what the count is
	// now, so that the last to set wins with the latest count.
	c = int64(sh.ceilingFor(int(sh.writing.Load())))
	old := sh.ceiling.Load()
	if c == old || c > old && !sh.mayRise() {
		return
	}
	// The option's only error is a range out of order, which
	// newSendShare has already ruled out for these bounds.
	if setSendBufferMax(sh.stack, int(c)) == nil {
		sh.ceiling.Store(c)
		sh.set.Store(sh.now())
	}
}

// mayRise reports whether the ceiling has held long enough to rise.
func (sh *sendShare) mayRise() bool {
	return sh.now()-sh.set.Load() >= raiseAfter.Nanoseconds()
}

func (sh *sendShare) now() int64 {
	return sh.clock.NowMonotonic().Sub(tcpip.MonotonicTime{}).Nanoseconds()
}

// setSendBufferMax sets the most a TCP connection's send buffer may grow
// to. A connection whose buffer is already larger shrinks to it at its
// next growth step, once its window would fill the new maximum.
func setSendBufferMax(s *stack.Stack, ceiling int) error {
	opt := tcpipSendBufferRange(ceiling)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &opt); err != nil {
		return fmt.Errorf("TCP send buffer: %s", err)
	}
	return nil
}
