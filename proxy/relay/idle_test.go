package relay

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
)

const testIdle = 10 * time.Second

func newTestWatch(t *testing.T) (*clock.Manual, *IdleWatch, *atomic.Int32) {
	t.Helper()
	c := clock.NewManual(time.Unix(1_000_000, 0))
	var fired atomic.Int32
	w := NewIdleWatch(c, testIdle, func() { fired.Add(1) })
	t.Cleanup(w.Stop)
	return c, w, &fired
}

func TestIdleWatchEndsAQuietFlow(t *testing.T) {
	c, _, fired := newTestWatch(t)
	c.Advance(testIdle - time.Nanosecond)
	if fired.Load() != 0 {
		t.Fatal("idle ran before the timeout had passed")
	}
	c.Advance(time.Nanosecond)
	if fired.Load() != 1 {
		t.Fatalf("idle ran %d times once the timeout had passed, want 1", fired.Load())
	}
	c.Advance(3 * testIdle)
	if fired.Load() != 1 {
		t.Fatalf("idle ran %d times, want once", fired.Load())
	}
	if c.Pending() != 0 {
		t.Fatalf("%d timers pending after idle ran", c.Pending())
	}
}

// TestIdleWatchActivityKeepsTheFlow: the timeout counts from the last
// activity, however often the flow has moved before.
func TestIdleWatchActivityKeepsTheFlow(t *testing.T) {
	c, w, fired := newTestWatch(t)
	for range 10 {
		c.Advance(testIdle / 3)
		w.Moved()
	}
	c.Advance(testIdle - time.Nanosecond)
	if fired.Load() != 0 {
		t.Fatal("idle ran before the timeout had passed since the last activity")
	}
	c.Advance(time.Nanosecond)
	if fired.Load() != 1 {
		t.Fatalf("idle ran %d times at the timeout after the last activity, want 1", fired.Load())
	}
}

func TestIdleWatchStop(t *testing.T) {
	c, w, fired := newTestWatch(t)
	c.Advance(testIdle / 2)
	w.Stop()
	w.Stop()
	c.Advance(3 * testIdle)
	if fired.Load() != 0 {
		t.Fatal("idle ran after Stop")
	}
	if c.Pending() != 0 {
		t.Fatalf("%d timers pending after Stop", c.Pending())
	}
}

// TestIdleWatchStopWaitsForIdle: once Stop returns, the owner may free
// what idle uses.
func TestIdleWatchStopWaitsForIdle(t *testing.T) {
	running, release := make(chan struct{}), make(chan struct{})
	w := NewIdleWatch(nil, time.Millisecond, func() {
		close(running)
		<-release
	})
	select {
	case <-running:
	case <-time.After(10 * time.Second):
		t.Fatal("idle did not run")
	}
	stopped := make(chan struct{})
	go func() {
		w.Stop()
		close(stopped)
	}()
	select {
	case <-stopped:
		t.Fatal("Stop returned while idle was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-stopped
}

func TestIdleWatchMovedAllocatesNothing(t *testing.T) {
	w := NewIdleWatch(nil, time.Hour, func() {})
	defer w.Stop()
	if n := testing.AllocsPerRun(1000, w.Moved); n != 0 {
		t.Fatalf("Moved allocates %v times, want 0", n)
	}
}

// BenchmarkIdleWatchMoved is the cost the watch adds to each datagram;
// the parallel case is a flow's two directions on two goroutines.
func BenchmarkIdleWatchMoved(b *testing.B) {
	w := NewIdleWatch(nil, time.Hour, func() {})
	defer w.Stop()
	b.Run("one", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w.Moved()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				w.Moved()
			}
		})
	})
}
