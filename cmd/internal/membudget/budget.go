package membudget

import (
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

const (
	// softShare is the part of the budget, after the process's fixed
	// overhead, that the Go runtime's soft limit allows: the rest is
	// slack for what the runtime does not count and for its lag.
	softShare = 0.85
	// admitShare is the part of the budget in use past which new
	// connections are refused. The gap to the soft limit is room for
	// the open connections to move data, and for the burst of garbage
	// that opening a batch of connections leaves behind.
	admitShare = 0.65
	// connCost is what one connection is assumed to hold when the
	// budget scales a default connection cap: an idle tunnelled TCP
	// connection with its relay (and its goroutine's stack, where a
	// relay idles on one; the idle-connection benchmark measures it),
	// with room for its endpoint lingering in TIME_WAIT after it closes.
	connCost = 40 << 10
	// defaultOverhead stands in for the binary's resident pages where
	// the process cannot read its own resident size.
	defaultOverhead = 10 << 20
)

// Budget is a memory budget for the whole process. Its methods are safe
// for concurrent use; a nil *Budget is no budget, and admits everything.
type Budget struct {
	limit int64
	// overhead is the resident memory the Go runtime does not account
	// for: the binary's text and data, measured once at start.
	overhead int64
	refused  atomic.Uint64

	// mu guards samples, which metrics.Read fills in place.
	mu      sync.Mutex
	samples []metrics.Sample
}

// The runtime/metrics names that make up the memory in use: everything
// the runtime has mapped, less what it has returned to the OS, less the
// heap that is free or (by the last collection's count) garbage.
const (
	mTotal    = "/memory/classes/total:bytes"
	mReleased = "/memory/classes/heap/released:bytes"
	mFree     = "/memory/classes/heap/free:bytes"
	mObjects  = "/memory/classes/heap/objects:bytes"
	mLive     = "/gc/heap/live:bytes"
)

// New returns a budget of limit bytes for a process whose memory outside
// the Go runtime's account is overhead bytes (see [Overhead]). limit <= 0
// returns nil: no budget.
func New(limit, overhead int64) *Budget {
	if limit <= 0 {
		return nil
	}
	b := &Budget{limit: limit, overhead: overhead}
	for _, name := range []string{mTotal, mReleased, mFree, mObjects, mLive} {
		b.samples = append(b.samples, metrics.Sample{Name: name})
	}
	return b
}

// Limit is the budget in bytes; 0 for none.
func (b *Budget) Limit() int64 {
	if b == nil {
		return 0
	}
	return b.limit
}

// Apply sets the Go runtime's soft memory limit from the budget, unless
// GOMEMLIMIT already set a lower one, and returns the limit in force.
func (b *Budget) Apply() int64 {
	current := debug.SetMemoryLimit(-1)
	if b == nil {
		return current
	}
	soft := int64(float64(b.limit-b.overhead) * softShare)
	if soft < current {
		debug.SetMemoryLimit(soft)
		return soft
	}
	return current
}

// InUse estimates the process's resident memory, in bytes: the fixed
// overhead, plus what the runtime holds that is neither returned to the
// OS nor free, counting the heap as what the last collection found live.
// Garbage made since is not counted: the soft limit collects it before
// it matters.
func (b *Budget) InUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	metrics.Read(b.samples)
	v := func(i int) int64 { return int64(b.samples[i].Value.Uint64()) }
	total, released, free, objects, live := v(0), v(1), v(2), v(3), v(4)
	return b.overhead + total - released - free - objects + min(live, objects)
}

// Admit reports whether a new connection fits in the budget, and counts
// it as refused if not. The check is a read of the runtime's counters,
// cheap enough for every accept.
func (b *Budget) Admit() bool {
	if b == nil {
		return true
	}
	if float64(b.InUse()) < float64(b.limit)*admitShare {
		return true
	}
	b.refused.Add(1)
	return false
}

// Refused counts the connections Admit has turned away.
func (b *Budget) Refused() uint64 {
	if b == nil {
		return 0
	}
	return b.refused.Load()
}

// Connections scales a default cap on connections to what the budget
// holds: def without a budget, and never less than 16.
func (b *Budget) Connections(def int) int {
	if b == nil {
		return def
	}
	room := float64(b.limit-b.overhead) * admitShare
	return max(16, min(def, int(room/connCost)))
}

// BufferMax scales the largest buffer one TCP connection may grow to:
// def without a budget, else at most a sixteenth of the budget, so that
// a few bulk transfers cannot take it all, and never below floor.
func (b *Budget) BufferMax(def, floor int) int {
	if b == nil {
		return def
	}
	return max(floor, int(min(int64(def), b.limit/16)))
}
