package netstack

import (
	"math/bits"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// sendShare divides a total of send buffer among the connections whose
// writers are waiting for room, so that each of them may hold an equal
// part of it.
//
// gVisor grows a connection's send buffer with its congestion window,
// up to the stack's maximum. Where our own CPU is the bottleneck, as in a
// server with many peers downloading, nothing is dropped, so no window
// ever shrinks: the connections whose windows grew first keep the
// lead, and the buffers together hold far more than the path needs.
// Sizing each at its part of a total evens the shares out, and a
// connection alone still gets up to the whole total, enough for a far
// peer.
//
// The count is of Write calls in progress: a writer that finds the
// buffer full waits in Write for room, so a bulk transfer is counted
// almost all the time, and an interactive one, whose writes return at
// once, almost never. The part moves in powers of two, falls at once
// when writers join and rises only once it has held for raiseAfter, so a
// count that wavers with each write changes it seldom.
//
// Each connection's size is set on its own, which turns gVisor's tuning
// off for it, rather than by lowering the stack's maximum: gVisor wakes
// a blocked writer only when an acknowledgement takes the buffer from
// above half its old size to below half its new one, which never
// happens when the maximum falls far below a buffer that has grown.
type sendShare struct {
	clock tcpip.Clock
	// total is what is shared; floor and max bound each part.
	total, floor, max int
	writing           atomic.Int32
	// part is what each writer may hold now.
	part atomic.Int64
	// set is when part was last set (the clock's monotonic time, in
	// nanoseconds).
	set atomic.Int64
}

// raiseAfter is how long a part holds before it may rise: many round
// trips of a local path, and short beside a transfer.
const raiseAfter = 100 * time.Millisecond

// newSendShare shares total among writers, each part at least floor and
// at most max; clk times how long a part has held.
func newSendShare(clk tcpip.Clock, total, floor, max int) *sendShare {
	sh := &sendShare{clock: clk, total: total, floor: min(floor, max), max: max}
	sh.part.Store(int64(sh.partFor(0)))
	sh.set.Store(sh.now())
	return sh
}

// partFor is each connection's part when n writers wait: the total
// divided among them, rounded down to a power of two, within floor and
// max.
func (sh *sendShare) partFor(n int) int {
	part := sh.total / max(n, 1)
	if part > 0 {
		part = 1 << (bits.Len(uint(part)) - 1)
	}
	return min(max(part, sh.floor), sh.max)
}

// enter counts a writer to ep in and sizes ep's send buffer at the part.
// A buffer cut below what it holds takes no more until acknowledgements
// drain it to half the new size, when gVisor wakes the writer.
func (sh *sendShare) enter(ep tcpip.Endpoint) {
	part := sh.adjust(sh.writing.Add(1))
	if ops := ep.SocketOptions(); ops.GetSendBufferSize() != part {
		ops.SetSendBufferSize(part, true)
	}
}

// leave counts a writer out.
func (sh *sendShare) leave() { sh.adjust(sh.writing.Add(-1)) }

// adjust moves the part to what n writers get, unless it would rise too
// soon, and returns it.
func (sh *sendShare) adjust(n int32) int64 {
	want := int64(sh.partFor(int(n)))
	part := sh.part.Load()
	if want == part || want > part && sh.now()-sh.set.Load() < raiseAfter.Nanoseconds() {
		return part
	}
	if sh.part.CompareAndSwap(part, want) {
		sh.set.Store(sh.now())
		return want
	}
	// Another writer moved it meanwhile, for a count as recent.
	return sh.part.Load()
}

func (sh *sendShare) now() int64 {
	return sh.clock.NowMonotonic().Sub(tcpip.MonotonicTime{}).Nanoseconds()
}
