package proxy

import (
	"sync"
	"testing"
	"time"
)

// Connections served one after another find the first one's goroutine
// waiting, and no new goroutine starts. A worker counts itself idle a
// moment before it waits, and a connection that comes in that moment
// starts a goroutine of its own; so a few may start, not one each.
func TestWorkersReuse(t *testing.T) {
	w := newWorkers()
	defer w.stop()
	const served = 100
	for range served {
		done := make(chan struct{})
		w.run(func() { close(done) })
		<-done
		for w.idle.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(100 * time.Microsecond) // into its select, mostly
	}
	if n := w.started.Load(); n > served/10 {
		t.Errorf("%d goroutines started for %d functions one after another, want a few", n, served)
	}
}

// After a burst, at most maxIdleWorkers wait; stop ends them all.
func TestWorkersBoundIdle(t *testing.T) {
	w := newWorkers()
	release := make(chan struct{})
	var running, finished sync.WaitGroup
	const burst = 3 * maxIdleWorkers
	running.Add(burst)
	finished.Add(burst)
	for range burst {
		w.run(func() {
			defer finished.Done()
			running.Done()
			<-release
		})
	}
	running.Wait()
	close(release)
	finished.Wait()
	// Each worker now waits or leaves; those past the bound count
	// themselves for a moment before they leave. Settled, the count is
	// the bound.
	deadline := time.Now().Add(10 * time.Second)
	for settled := 0; settled < 20; time.Sleep(time.Millisecond) {
		if w.idle.Load() == maxIdleWorkers {
			settled++
		} else {
			settled = 0
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d workers wait, want %d", w.idle.Load(), maxIdleWorkers)
		}
	}
	w.stop()
	if n := w.idle.Load(); n != 0 {
		t.Errorf("%d workers still wait after stop", n)
	}
}

// A worker that waited its while for nothing leaves.
func TestWorkersLeaveWhenIdle(t *testing.T) {
	w := newWorkers()
	defer w.stop()
	w.idleFor = 10 * time.Millisecond
	w.run(func() {})
	left := make(chan struct{})
	go func() {
		w.wg.Wait()
		close(left)
	}()
	select {
	case <-left:
	case <-time.After(10 * time.Second):
		t.Fatal("a worker still waited long after its idle time")
	}
}
