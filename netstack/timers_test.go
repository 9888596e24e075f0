package netstack

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
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
	waitFor(t, func() bool { return running.Load() > 0 })
	// Callbacks that block keep the queue still: one more goroutine
	// starts per stall, far fewer than the timers that fired.
	time.Sleep(10 * time.Millisecond)
	if got := running.Load(); got > limit+n/4 {
		t.Errorf("%d of %d fired timers' callbacks run at once, want the pool's bound and a few past it", got, n)
	}
	unblock()
	waitFor(t, func() bool { return fired.Load() == n })
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
