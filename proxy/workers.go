package proxy

import (
	"sync"
	"sync/atomic"
	"time"
)

// Workers that have served a connection wait a moment for the next one
// instead of exiting. Serving a CONNECT dials into the tunnel, and the SYN
// goes down gVisor's send path into the engine: a deep call chain, which a
// fresh goroutine's small stack meets by growing, copying itself each
// time it doubles. Under a stream of short connections that copying was
// a sizeable share of the proxy's CPU. A goroutine that has served a
// connection before has its stack grown already (until a collection finds
// it idle and shrinks it).
const (
	// workerIdle is how long a worker waits for another connection.
	workerIdle = time.Second
	// maxIdleWorkers bounds the workers waiting at once, and so the
	// stacks they keep after a burst of connections.
	maxIdleWorkers = 16
)

// workers runs functions on goroutines that outlive them for a while.
type workers struct {
	next    chan func() // unbuffered: a send succeeds only to a waiting worker
	idle    atomic.Int32
	idleFor time.Duration // workerIdle, unless a test says otherwise
	started atomic.Int64  // goroutines ever started, for tests
	quit    chan struct{}
	close   sync.Once
	wg      sync.WaitGroup
}

func newWorkers() *workers {
	return &workers{next: make(chan func()), quit: make(chan struct{}), idleFor: workerIdle}
}

// run calls f on a waiting worker, or on a new one. It must not be
// called once stop has been.
func (w *workers) run(f func()) {
	select {
	case w.next <- f:
		return
	default:
	}
	w.wg.Add(1)
	w.started.Add(1)
	go w.loop(f)
}

func (w *workers) loop(f func()) {
	defer w.wg.Done()
	var t *time.Timer
	for {
		f()
		f = nil // what it served can go while the worker waits
		if w.idle.Add(1) > maxIdleWorkers {
			w.idle.Add(-1)
			break
		}
		if t == nil {
			t = time.NewTimer(w.idleFor)
		} else {
			t.Reset(w.idleFor)
		}
		select {
		case f = <-w.next:
			w.idle.Add(-1)
			continue
		case <-t.C:
		case <-w.quit:
		}
		w.idle.Add(-1)
		break
	}
	if t != nil {
		t.Stop()
	}
}

// stop ends the waiting workers and waits for every worker to return;
// the caller has waited for the functions they run.
func (w *workers) stop() {
	w.close.Do(func() { close(w.quit) })
	w.wg.Wait()
}
