package netstack

import (
	"runtime"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/wakeup"
)

// pooledTimers is the stack's clock: gVisor's own, but with its timers'
// callbacks run on a bounded pool of goroutines instead of each on the
// goroutine its expiry starts.
//
// The timers a burst of connections arms fire as one burst too: a mass
// close sends thousands of FINs through one peer at once, their
// retransmission timers expire together before the acknowledgements are
// back, and a mass of TIME_WAIT endpoints expires together. Each
// callback takes its endpoint's lock and sends through the peer's queue,
// so thousands of goroutines would wait on those locks, each with a
// stack grown by the sending. Go's runtime still starts a goroutine for
// every expiry, but that goroutine only queues the callback and leaves.
type pooledTimers struct {
	tcpip.Clock
	pool *wakeup.Pool
}

// newPooledTimers makes a clock whose callbacks run on at most limit
// goroutines while they move. The stall is measured in real time, as
// gVisor's timers are, even when a test drives the engine's clock by
// hand.
func newPooledTimers(limit int) pooledTimers {
	return pooledTimers{Clock: tcpip.NewStdClock(), pool: wakeup.New(limit, wakeup.Stall, clock.System{})}
}

// timerGoroutines is a stack's pool size: a few per core keep every core
// busy while some callbacks wait on a lock.
func timerGoroutines() int { return max(32, 16*runtime.GOMAXPROCS(0)) }

func (t pooledTimers) AfterFunc(d time.Duration, f func()) tcpip.Timer {
	return t.Clock.AfterFunc(d, func() { t.pool.Go(f) })
}
