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

	started atomic.Int64
}

// New makes a Pool of limit goroutines (at least one) that adds one more
// whenever its queue has not moved for stall, as clk measures it.
func New(limit int, stall time.Duration, clk clock.Clock) *Pool {
	return &Pool{limit: max(limit, 1), stall: stall, clock: clk}
}

// Go runs f on a goroutine of the pool: a new one while fewer than the
// limit run, else the next one free. It never blocks, so it may be
// called from an event loop or with a lock held.
func (p *Pool) Go(f func()) {
	p.mu.Lock()
	if p.running < p.limit {
		p.running++
		p.mu.Unlock()
		p.start(f)
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

func (p *Pool) start(f func()) {
	p.started.Add(1)
	go p.loop(f)
}

// loop runs f, then whatever is queued, and leaves when the queue is
// empty.
func (p *Pool) loop(f func()) {
	for f != nil {
		f()
		p.mu.Lock()
		f = p.popLocked()
		if f == nil {
			p.running--
		}
		p.mu.Unlock()
	}
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
	p.mu.Unlock()
	if f != nil {
		p.start(f)
	}
}
