package wakeup

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// idle reports whether the pool has no goroutine and nothing queued.
func (p *Pool) idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running == 0 && p.head == len(p.queue)
}

// A burst far larger than the limit runs on the limit's goroutines while
// it moves: none starts past the bound, every callback runs, and the
// goroutines leave once the queue is empty.
func TestPoolBoundsABurst(t *testing.T) {
	clk := clock.NewManual(time.Unix(0, 0))
	p := New(4, Stall, clk)
	release := make(chan struct{})
	var now, most, ran atomic.Int64
	const n = 200
	for range n {
		p.Go(func() {
			c := now.Add(1)
			for m := most.Load(); c > m && !most.CompareAndSwap(m, c); m = most.Load() {
			}
			<-release
			now.Add(-1)
			ran.Add(1)
		})
	}
	wgtest.WaitFor(t, 10*time.Second, "four callbacks to run", func() bool { return now.Load() == 4 })
	if !p.Waiting() {
		t.Fatal("Waiting() = false with callbacks queued behind the bound")
	}
	close(release)
	wgtest.WaitFor(t, 10*time.Second, "every callback to have run", func() bool { return ran.Load() == n })
	wgtest.WaitFor(t, 10*time.Second, "the pool to be idle", p.idle)
	if got := p.Started(); got != 4 {
		t.Errorf("started %d goroutines for %d callbacks, want the limit, 4", got, n)
	}
	if got := most.Load(); got != 4 {
		t.Errorf("at most %d callbacks ran at once, want 4", got)
	}
	if p.Waiting() {
		t.Error("Waiting() = true once every callback has run")
	}
	// The queue that held the burst is not kept.
	if cap(p.queue) > queueKeep {
		t.Errorf("an empty queue keeps capacity %d", cap(p.queue))
	}
}

// A callback that waits for one queued behind it would wait forever on a
// queue that cannot move: after the stall time one more goroutine takes
// the queue's head.
func TestPoolStallStartsOneMore(t *testing.T) {
	clk := clock.NewManual(time.Unix(0, 0))
	p := New(1, Stall, clk)
	second := make(chan struct{})
	done := make(chan struct{})
	p.Go(func() {
		<-second
		close(done)
	})
	p.Go(func() { close(second) })
	wgtest.WaitFor(t, 10*time.Second, "the first callback to hold the only goroutine", func() bool { return p.Started() == 1 })
	clk.Advance(Stall / 2)
	if p.Started() != 1 {
		t.Fatalf("a goroutine past the bound started before the stall time")
	}
	clk.Advance(Stall)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the queue stalled behind a blocked callback and nothing took it")
	}
	wgtest.WaitFor(t, 10*time.Second, "the pool to be idle", p.idle)
	if got := p.Started(); got != 2 {
		t.Errorf("started %d goroutines, want 2", got)
	}
	if clk.Pending() != 0 {
		t.Errorf("%d stall timers armed on an empty queue", clk.Pending())
	}
}

// A queue that moves does not grow the pool, however long it is.
func TestPoolNoExtraWhileMoving(t *testing.T) {
	clk := clock.NewManual(time.Unix(0, 0))
	p := New(1, Stall, clk)
	releaseA, releaseB := make(chan struct{}), make(chan struct{})
	var bRuns atomic.Bool
	var ran sync.WaitGroup
	ran.Add(3)
	p.Go(func() { <-releaseA; ran.Done() })
	p.Go(func() { bRuns.Store(true); <-releaseB; ran.Done() })
	p.Go(ran.Done)
	close(releaseA)
	wgtest.WaitFor(t, 10*time.Second, "the second callback to run", bRuns.Load)
	// The queue moved since the stall timer was set: one is still
	// queued, but nothing starts past the bound.
	clk.Advance(Stall)
	if got := p.Started(); got != 1 {
		t.Errorf("started %d goroutines for a queue that moved, want 1", got)
	}
	close(releaseB)
	ran.Wait()
	wgtest.WaitFor(t, 10*time.Second, "the pool to be idle", p.idle)
}

// A queue that stays short but never empties keeps no more room than
// it holds.
func TestPoolQueueKeepsNoPoppedSlots(t *testing.T) {
	clk := clock.NewManual(time.Unix(0, 0))
	p := New(1, Stall, clk)
	step := make(chan struct{})
	p.Go(func() { <-step })
	for range 10000 {
		// One in, one out: the queue holds two or three at a time.
		p.Go(func() { <-step })
		p.Go(func() {})
		step <- struct{}{}
	}
	p.mu.Lock()
	c := cap(p.queue)
	p.mu.Unlock()
	close(step)
	wgtest.WaitFor(t, 10*time.Second, "the pool to be idle", p.idle)
	if c > queueKeep {
		t.Errorf("the queue grew to capacity %d while it never held more than a few", c)
	}
}
