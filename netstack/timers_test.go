package netstack

import (
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/wakeup"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// TestPooledTimers: the stack's timers fire and stop as gVisor's own do,
// and a burst of them that fires together runs on the pool's goroutines,
// not on one each.
func TestPooledTimers(t *testing.T) {
	const limit = 8
	clk := newPooledTimers(limit)
	stopped := clk.AfterFunc(time.Hour, func() { t.Error("a stopped timer fired") })
	if !stopped.Stop() {
		t.Error("Stop() = false for a timer that had not fired")
	}

	const n = 2000
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock() // on a failure too, or the stalls start a goroutine for every timer
	var running, fired atomic.Int64
	for range n {
		clk.AfterFunc(time.Millisecond, func() {
			running.Add(1)
			<-release
			running.Add(-1)
			fired.Add(1)
		})
	}
	wgtest.WaitFor(t, 10*time.Second, "a fired timer's callback to run", func() bool { return running.Load() > 0 })
	// Callbacks that block keep the queue still: one more goroutine
	// starts per stall, far fewer than the timers that fired.
	time.Sleep(10 * time.Millisecond)
	if got := running.Load(); got > limit+n/4 {
		t.Errorf("%d of %d fired timers' callbacks run at once, want the pool's bound and a few past it", got, n)
	}
	unblock()
	wgtest.WaitFor(t, 10*time.Second, "every timer's callback to finish", func() bool { return fired.Load() == n })

	// An expiry of many timers at once starts no goroutine per timer:
	// the queue hands them to the pool from one.
	created := func() (uint64, bool) {
		s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
		metrics.Read(s)
		return s[0].Value.Uint64(), s[0].Value.Kind() == metrics.KindUint64
	}
	before, ok := created()
	var quick sync.WaitGroup
	quick.Add(n)
	for range n {
		clk.AfterFunc(time.Millisecond, quick.Done)
	}
	quick.Wait()
	if after, _ := created(); ok && after-before > n/4 {
		t.Errorf("%d timers expiring together started %d goroutines, want a few", n, after-before)
	} else if !ok {
		t.Log("this Go does not count the goroutines it creates; not checked")
	}
	clk.q.mu.Lock()
	room := cap(clk.q.pending)
	clk.q.mu.Unlock()
	if room > timerHeapKeep {
		t.Errorf("the queue keeps room for %d timers once none is pending", room)
	}
	if clk.Now().IsZero() {
		t.Error("the clock does not tell the time")
	}
}

// TestStackUsesPooledTimers: a Net's stack runs its timers on the pool.
func TestStackUsesPooledTimers(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	n := openOurs(t, key, site)
	if _, ok := n.stack.Clock().(pooledTimers); !ok {
		t.Fatalf("the stack's clock is %T, want pooledTimers", n.stack.Clock())
	}
}

// TestTimerQueueStopAndReset: the queue keeps gVisor's timer contract:
// Stop reports whether it stopped a pending timer, Reset moves a pending
// timer either way or re-arms one that has fired, and timers fire in
// the order of their deadlines.
func TestTimerQueueStopAndReset(t *testing.T) {
	// One goroutine, which no stall adds to: callbacks run in order.
	clk := pooledTimers{Clock: tcpip.NewStdClock(), q: &timerQueue{pool: wakeup.New(1, time.Hour, clock.System{})}}
	fired := make(chan string, 16)
	arm := func(name string, d time.Duration) tcpip.Timer {
		return clk.AfterFunc(d, func() { fired <- name })
	}
	next := func() string {
		select {
		case name := <-fired:
			return name
		case <-time.After(10 * time.Second):
			return "nothing"
		}
	}

	// Deadlines far apart, so that a pause of the test's goroutine does
	// not reorder them.
	stopped := arm("stopped", 150*time.Millisecond)
	later := arm("moved later", 200*time.Millisecond)
	arm("second", 300*time.Millisecond)
	earlier := arm("moved earlier", time.Hour)
	arm("third", 400*time.Millisecond)
	later.Reset(500 * time.Millisecond)
	earlier.Reset(100 * time.Millisecond)
	if !stopped.Stop() {
		t.Error("Stop() = false for a pending timer")
	}
	if stopped.Stop() {
		t.Error("Stop() = true for a timer already stopped")
	}
	for _, want := range []string{"moved earlier", "second", "third", "moved later"} {
		if got := next(); got != want {
			t.Fatalf("fired %q, want %q", got, want)
		}
	}
	if later.Stop() {
		t.Error("Stop() = true for a timer that has fired")
	}
	later.Reset(time.Millisecond)
	if got := next(); got != "moved later" {
		t.Fatalf("a timer reset after it fired: fired %q, want it again", got)
	}
	select {
	case name := <-fired:
		t.Fatalf("%q fired once more", name)
	case <-time.After(50 * time.Millisecond):
	}
	clk.q.mu.Lock()
	defer clk.q.mu.Unlock()
	if len(clk.q.pending) != 0 || !clk.q.nextAt.IsZero() {
		t.Errorf("%d timers pending and the runtime timer set for %v with none armed", len(clk.q.pending), clk.q.nextAt)
	}
}
