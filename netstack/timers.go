package netstack

import (
	"container/heap"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/wakeup"
)

// pooledTimers is the stack's clock: gVisor's own for the time, with
// timers kept in a queue of our own that one runtime timer serves, and
// their callbacks run on a bounded pool of goroutines.
//
// The timers a burst of connections arms fire as one burst too: a mass
// close sends thousands of FINs through one peer at once, their
// retransmission timers expire together before the acknowledgements are
// back, and a mass of TIME_WAIT endpoints expires together. Go's runtime
// starts a goroutine for every expired time.AfterFunc, all in one pass,
// and each callback takes its endpoint's lock and sends through the
// peer's queue: thousands of goroutines would wait on those locks, each
// with a stack, and the runtime keeps a record of every goroutine that
// ever ran at once. From the queue, the expired callbacks go to the pool
// instead, which runs them a few at a time.
type pooledTimers struct {
	tcpip.Clock
	q *timerQueue
}

// newPooledTimers makes a clock whose callbacks run on at most limit
// goroutines while they move. The stall is measured in real time, as
// gVisor's timers are, even when a test drives the engine's clock by
// hand.
func newPooledTimers(limit int) pooledTimers {
	q := &timerQueue{pool: wakeup.New(limit, wakeup.Stall, clock.System{})}
	return pooledTimers{Clock: tcpip.NewStdClock(), q: q}
}

// AfterFunc calls f on the pool once d has passed.
func (t pooledTimers) AfterFunc(d time.Duration, f func()) tcpip.Timer {
	qt := &queuedTimer{q: t.q, f: f, index: -1}
	qt.Reset(d)
	return qt
}

// timerQueue holds the pending timers by deadline, and one runtime timer
// for the earliest.
type timerQueue struct {
	pool *wakeup.Pool

	mu      sync.Mutex
	pending timerHeap
	next    *time.Timer // nil until the first timer; runs expire
	nextAt  time.Time   // when next fires; zero while it is stopped
	due     []func()    // expire's scratch, kept between expiries when small
}

// queuedTimer is one of gVisor's timers. Its fields other than q and f
// are guarded by q.mu.
type queuedTimer struct {
	q     *timerQueue
	f     func()
	when  time.Time
	index int // in q.pending; -1 while not pending
}

// Stop prevents the callback from being queued for the pool; it reports
// whether the timer was pending. As with time.AfterFunc, a callback that
// has expired may still run after Stop returns false.
func (t *queuedTimer) Stop() bool {
	q := t.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if t.index < 0 {
		return false
	}
	heap.Remove(&q.pending, t.index)
	q.scheduleLocked()
	return true
}

// Reset makes the timer expire d from now, pending or not.
func (t *queuedTimer) Reset(d time.Duration) {
	q := t.q
	q.mu.Lock()
	defer q.mu.Unlock()
	t.when = time.Now().Add(d)
	if t.index < 0 {
		heap.Push(&q.pending, t)
	} else {
		heap.Fix(&q.pending, t.index)
	}
	q.scheduleLocked()
}

// scheduleLocked sets the runtime timer for the earliest pending
// deadline, or stops it when none is pending.
func (q *timerQueue) scheduleLocked() {
	if len(q.pending) == 0 {
		if q.next != nil && !q.nextAt.IsZero() {
			q.next.Stop()
			q.nextAt = time.Time{}
		}
		return
	}
	at := q.pending[0].when
	if !q.nextAt.IsZero() && !at.Before(q.nextAt) {
		return // the runtime timer fires in time; expire looks again
	}
	q.nextAt = at
	if q.next == nil {
		q.next = time.AfterFunc(time.Until(at), q.expire)
	} else {
		q.next.Reset(time.Until(at))
	}
}

// expire runs on the runtime timer's goroutine: it hands every timer
// that is due to the pool and sets the runtime timer for the next.
func (q *timerQueue) expire() {
	q.mu.Lock()
	now := time.Now()
	q.nextAt = time.Time{}
	// The scratch is this call's alone while it hands the callbacks on:
	// an expiry that overlaps (the runtime timer reset earlier meanwhile)
	// makes its own.
	due := q.due[:0]
	q.due = nil
	for len(q.pending) > 0 && !q.pending[0].when.After(now) {
		t := heap.Pop(&q.pending).(*queuedTimer)
		due = append(due, t.f)
	}
	if c := cap(q.pending); c > timerHeapKeep && len(q.pending) < c/4 {
		// A burst's room goes back to the heap; positions stay the same.
		q.pending = append(timerHeap(nil), q.pending...)
	}
	q.scheduleLocked()
	q.mu.Unlock()
	for i, f := range due {
		q.pool.Go(f)
		due[i] = nil
	}
	if cap(due) <= 256 {
		q.mu.Lock()
		q.due = due[:0]
		q.mu.Unlock()
	}
}

// timerHeapKeep is the most room for pending timers kept once most of
// it is unused.
const timerHeapKeep = 256

// timerHeap orders pending timers by deadline for container/heap.
type timerHeap []*queuedTimer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].when.Before(h[j].when) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}

func (h *timerHeap) Push(x any) {
	t := x.(*queuedTimer)
	t.index = len(*h)
	*h = append(*h, t)
}

func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.index = -1
	return t
}
