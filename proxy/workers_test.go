package proxy

import (
	"sync"
	"testing"
	"time"
)

// A connection served after another finds the first one's goroutine
// waiting, and no new goroutine starts.
func TestWorkersReuse(t *testing.T) {
	w := newWorkers()
	defer w.stop()
	for range 100 {
		done := make(chan struct{})
		w.run(func() { close(done) })
		<-done
		// The worker is waiting once it counts itself idle.
		for w.idle.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	if n := w.started.Load(); n != 1 {
		t.Errorf("%d goroutines started for 100 functions one after another, want 1", n)
	}
}

// After a burst, at most maxIdleWorkers wait; stop ends them all.
func TestWorkersBoundIdle(t *testing.T) {
	w := newWorkers()
	release := make(chan struct{})
	var running sync.WaitGroup
	const burst = 3 * maxIdleWorkers
	running.Add(burst)
	for range burst {
		w.run(func() {
			running.Done()
			<-release
		})
	}
	running.Wait()
	close(release)
	// Every worker either waits or has left; wait until the count stops
	// changing from the burst's end.
	deadline := time.Now().Add(10 * time.Second)
	for w.idle.Load() < maxIdleWorkers && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := w.idle.Load(); n > maxIdleWorkers {
		t.Errorf("%d workers wait, want at most %d", n, maxIdleWorkers)
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
	w.idleFor = time.Millisecond
	done := make(chan struct{})
	w.run(func() { close(done) })
	<-done
	deadline := time.Now().Add(10 * time.Second)
	for w.idle.Load() != 0 || w.started.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("a worker still waited long after its idle time")
		}
		time.Sleep(time.Millisecond)
	}
	w.wg.Wait() // it has returned, not only stopped counting itself
}
