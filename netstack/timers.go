package netstack

import (
	"runtime"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/wakeup"
)

// pooledTimers is the stack's clock: gVisor's own, but with its timers'
// callbacks run on a bounded pool of goroutines instead of one new
// goroutine each.
//
// The timers a burst of connections arms fire as one burst too: a mass
// close sends thousands of FINs through one peer at once, their
// retransmission timers expire together before the acknowledgements are
// back, and a mass of TIME_WAIT endpoints expires together. Each
// callback takes its endpoint's lock and sends through the peer's queue,
// so thousands of goroutines would mostly wait on those locks, each
// holding a stack. On the pool they wait in a queue.
type pooledTimers struct {
	tcpip.Clock
	pool *wakeup.Pool
}

func newPooledTimers() pooledTimers {
	// The stall is measured in real time, as gVisor's timers are, even
	// when a test drives the engine's clock by hand.
	return pooledTimers{
		Clock: tcpip.NewStdClock(),
		pool:  wakeup.New(max(32, 16*runtime.GOMAXPROCS(0)), wakeup.Stall, clock.System{}),
	}
}

func (t pooledTimers) AfterFunc(d time.Duration, f func()) tcpip.Timer {
	return t.Clock.AfterFunc(d, func() { t.pool.Go(f) })
}
