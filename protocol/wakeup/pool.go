// Package wakeup runs short callbacks, woken by events, on a bounded
// number of goroutines.
//
// A goroutine per wake-up is cheap one at a time, and it is what Go's
// own timers and most event loops do. But some events come to thousands
// of connections at once: a mass close wakes every relay, and the
// timers its segments armed fire together. Thousands of goroutines then
// start within milliseconds, each with its stack and buffers, for work
// that a few cores do one piece at a time anyway. That memory is the
// process's peak, higher than while the connections were open, and the
// runtime keeps a record of every goroutine that ever ran at once for
// the rest of the process's life. A Pool runs the same work on a few
// goroutines that take the next callback as they finish one.
//
// A callback may block (on a lock, on a write to a slow reader), and one
// that waits for another callback queued behind it would then wait
// forever. So when the queue has not moved for the stall time, one more
// goroutine starts on it, past the bound, and another after each further
// stall: the bound saves memory, never liveness.
//
// A goroutine that finds the queue empty waits a moment for the next
// callback before it leaves. Events of a busy flow come a few at a time,
// with gaps far shorter than that moment, and a goroutine started anew
// for each one costs more than the callback's work: its start, and the
// growth of its stack from the runtime's starting size to the depth a
// callback reaches, which the runtime gives back when the goroutine ends.
// A reused goroutine keeps the profiler labels of the one that started
// it, so labels tell little about a pool's callbacks.
package wakeup

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
)

// Stall is a stall time for callbacks that move what has arrived:
// far longer than such a callback takes, short beside any round trip a
// queued one may wait on.
const Stall = time.Millisecond

// PerCores is a pool size for callbacks that mostly move what has
// arrived but may wait on a lock or a write: a few per core keep every
// core busy while some of them wait.
func PerCores() int { return max(32, 16*runtime.GOMAXPROCS(0)) }

// Linger is how long a goroutine that has run out of callbacks waits
// for the next before it leaves: far longer than the gaps between the
// events of a moving flow, short beside a flow's idle spells, so that an
// idle process holds none of the pool's goroutines.
const Linger = 20 * time.Millisecond

// queueKeep is the largest queue capacity kept once the queue is empty;
// a mass close's longer queue goes back to the heap.
const queueKeep = 256

// Pool runs callbacks on at most its limit of goroutines while they
// move, and on more only while they do not. The zero value is not
// usable; make one with New.
type Pool struct {
	limit int
	stall time.Duration
	clock clock.Clock

	mu      sync.Mutex
	queue   []func()
	head    int
	running int
	pops    uint64 // callbacks taken off the queue, to see it move
	watched uint64 // pops when the stall timer was set
	timer   clock.Timer
	timing  bool

	// parked holds the goroutines waiting for a callback, oldest first; a
	// callback goes to the newest, so the oldest are the ones that
	// leave. reaper makes those idle for Linger leave.
	parked  []*idler
	reaper  clock.Timer
	reaping bool

	started atomic.Int64
	live    atomic.Int64
}

// idler is a goroutine of the pool waiting for its next callback; nil
// on next tells it to leave.
type idler struct {
	next  chan func()
	since time.Time
}

// New makes a Pool of limit goroutines (at least one) that adds one more
// whenever its queue has not moved for stall, as clk measures it. clk
// also times Linger: under a clock that a test moves by hand, the
// goroutines stay until it has moved that far.
func New(limit int, stall time.Duration, clk clock.Clock) *Pool {
	return &Pool{limit: max(limit, 1), stall: stall, clock: clk}
}

// Go runs f on a goroutine of the pool while fewer than the limit run
// (one waiting for a callback, else a new one), else on the next one
// free. It never blocks, so it may be called from an event loop or with
// a lock held.
func (p *Pool) Go(f func()) {
	p.mu.Lock()
	if p.running < p.limit {
		p.running++
		p.runLocked(f)
		return
	}
	if p.head > 0 && p.head >= len(p.queue)/2 {
		// A queue that never quite empties would otherwise keep every
		// slot it ever used ahead of its head.
		n := copy(p.queue, p.queue[p.head:])
		clear(p.queue[n:])
		p.queue, p.head = p.queue[:n], 0
	}
	p.queue = append(p.queue, f)
	if !p.timing {
		p.watchLocked()
	}
	p.mu.Unlock()
}

// Waiting reports whether callbacks wait for a goroutine: one that could
// wait a moment for more work of its own should leave instead.
func (p *Pool) Waiting() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.head < len(p.queue)
}

// Started is the number of goroutines the pool has ever started.
func (p *Pool) Started() int64 { return p.started.Load() }

// Goroutines is the number of the pool's goroutines now, those waiting
// for a callback included.
func (p *Pool) Goroutines() int64 { return p.live.Load() }

// runLocked runs f on the goroutine that began waiting last, or else on
// a new one, and unlocks p.mu. The caller has counted it in running.
func (p *Pool) runLocked(f func()) {
	if n := len(p.parked); n > 0 {
		w := p.parked[n-1]
		p.parked[n-1] = nil
		p.parked = p.parked[:n-1]
		p.mu.Unlock()
		// The idler is waiting on an empty channel of one slot: this
		// never blocks.
		w.next <- f
		return
	}
	p.mu.Unlock()
	p.started.Add(1)
	p.live.Add(1)
	go p.loop(f)
}

// loop runs f, then whatever is queued, then waits up to Linger for
// another callback, and leaves when none comes.
func (p *Pool) loop(f func()) {
	defer p.live.Add(-1)
	var w *idler
	for f != nil {
		f()
		p.mu.Lock()
		if f = p.popLocked(); f != nil {
			p.mu.Unlock()
			continue
		}
		p.running--
		if w == nil {
			w = &idler{next: make(chan func(), 1)}
		}
		w.since = p.clock.Now()
		p.parked = append(p.parked, w)
		if !p.reaping {
			p.reapLocked(Linger)
		}
		p.mu.Unlock()
		f = <-w.next
	}
}

// reapLocked sets the reaper to run after d.
func (p *Pool) reapLocked(d time.Duration) {
	p.reaping = true
	if p.reaper == nil {
		p.reaper = p.clock.AfterFunc(d, p.reap)
	} else {
		p.reaper.Reset(d)
	}
}

// reap makes the goroutines idle for Linger leave, and sets itself
// again for the oldest of the rest.
func (p *Pool) reap() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	n := 0
	for n < len(p.parked) && now.Sub(p.parked[n].since) >= Linger {
		p.parked[n].next <- nil
		n++
	}
	rest := copy(p.parked, p.parked[n:])
	clear(p.parked[rest:])
	p.parked = p.parked[:rest]
	if rest == 0 {
		p.reaping = false
		if cap(p.parked) > queueKeep {
			p.parked = nil
		}
		return
	}
	p.reapLocked(p.parked[0].since.Add(Linger).Sub(now))
}

func (p *Pool) popLocked() func() {
	if p.head == len(p.queue) {
		return nil
	}
	f := p.queue[p.head]
	p.queue[p.head] = nil
	p.head++
	p.pops++
	if p.head == len(p.queue) {
		if cap(p.queue) > queueKeep {
			p.queue = nil
		} else {
			p.queue = p.queue[:0]
		}
		p.head = 0
	}
	return f
}

// watchLocked sets the stall timer for the queue as it is now.
func (p *Pool) watchLocked() {
	p.timing = true
	p.watched = p.pops
	if p.timer == nil {
		p.timer = p.clock.AfterFunc(p.stall, p.check)
	} else {
		p.timer.Reset(p.stall)
	}
}

// check runs when the stall timer fires: if the queue has not moved
// since the timer was set, one more goroutine takes its head.
func (p *Pool) check() {
	p.mu.Lock()
	p.timing = false
	var f func()
	if p.pops == p.watched {
		if f = p.popLocked(); f != nil {
			p.running++
		}
	}
	if p.head < len(p.queue) {
		p.watchLocked()
	}
	if f == nil {
		p.mu.Unlock()
		return
	}
	p.runLocked(f)
}
