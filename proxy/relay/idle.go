package relay

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
)

// IdleWatch ends a flow that has moved nothing, in either direction, for
// a timeout: UDP has no close, and a TCP peer that vanished without a FIN
// sends none, so idleness is the only end such a flow has.
//
// Moved, on every datagram or read, stores the time and nothing else: a
// timer reset, or a deadline pushed back, on each would cost a busy flow
// far more. One timer per watch instead fires when the timeout would be
// up had nothing moved since it was set, and then rereads the last
// activity: an idle flow thus costs one pending timer and no goroutine,
// and a busy one a firing per timeout. The flow ends when the timeout has
// passed since its last activity, to within the timer's precision.
type IdleWatch struct {
	// since is the time since the watch started: on the system clock a
	// read of the monotonic clock alone, the cheapest there is.
	since   func() time.Duration
	timeout time.Duration
	// last is when the flow last moved, as time since start: an integer,
	// so that Moved is one atomic store.
	last atomic.Int64

	// mu is held while the timer's callback runs, so that Stop can wait
	// for one under way.
	mu      sync.Mutex
	stopped bool
	timer   clock.Timer
	idle    func()
}

// NewIdleWatch starts watching a flow that moves now: idle runs, once, on
// a goroutine of its own, when nothing has moved for timeout, unless Stop
// came first. The flow's owner ends the flow in idle and calls Stop when
// the flow ends, whatever ended it. A nil c means the system clock.
func NewIdleWatch(c clock.Clock, timeout time.Duration, idle func()) *IdleWatch {
	w := &IdleWatch{timeout: timeout, idle: idle}
	if _, system := c.(clock.System); c == nil || system {
		c = clock.System{}
		start := time.Now()
		w.since = func() time.Duration { return time.Since(start) }
	} else {
		start := c.Now()
		w.since = func() time.Duration { return c.Now().Sub(start) }
	}
	// Armed only once w.timer is set, which check reads.
	w.timer = c.AfterFunc(math.MaxInt64, w.check)
	w.timer.Reset(timeout)
	return w
}

// Moved notes that the flow moved a datagram or some bytes now. It
// neither allocates nor touches the timer, so it suits the path every
// datagram takes.
func (w *IdleWatch) Moved() {
	w.last.Store(int64(w.since()))
}

// check runs when the timer fires: the flow is idle if nothing has moved
// for the timeout, else the timer is set for when it would be.
func (w *IdleWatch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	quiet := w.since() - time.Duration(w.last.Load())
	if left := w.timeout - quiet; left > 0 {
		w.timer.Reset(left)
		return
	}
	w.stopped = true
	w.idle()
}

// Stop ends the watch: once it returns, idle is not running and will
// not run. It may be called more than once, but not from idle, which it
// would wait for.
func (w *IdleWatch) Stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.timer.Stop()
}
