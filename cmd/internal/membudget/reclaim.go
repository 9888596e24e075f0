package membudget

import (
	"context"
	"runtime/debug"
	"time"
)

// Reclaimer gives memory back to the operating system when a burst of
// connections ends.
//
// The Go runtime returns free memory only as far as its heap goal
// allows, and that goal was set by the last collection, taken while the
// burst's connections were alive; the next forced one may be two
// minutes away. A steep fall in the count of things that hold memory is
// a cheap sign that much of the heap has just become garbage: a
// collection then, and a return of every free page, bring the process
// back to what is still in use.
type Reclaimer struct {
	// Load counts what holds memory: goroutines, open TCP endpoints
	// (those in TIME_WAIT too, which keep their state after the
	// connection closes), peers.
	Load func() int64
	// Trim, if set, drops caches that would otherwise outlive the burst,
	// just before the collection.
	Trim func()
	// Release, if set, runs after a collection that finds the process
	// idle again, to give back what the runtime does not own (the
	// binary's pages: ReleaseBinary).
	Release func()
	// Tick paces the looks at Load; a look is a few loads, so once a
	// second costs nothing while idle and is soon enough after a burst.
	Tick <-chan time.Time
	// Settle is the number of ticks after which Run reclaims once
	// whatever the load, when start-up is over and its garbage and pages
	// are no longer needed; 0 skips it.
	Settle int
}

// Run looks at Load on every tick until ctx is done. It reclaims once a
// steep fall from the high since the last reclaim has come to rest: in
// the middle of a mass close the collection would run against the very
// work that frees the memory, and what it freed would be taken again at
// once. The binary's pages go (Release) only at the settling reclaim and
// when the load is back near where it settled, since a busy process
// would fault its running code straight back in.
func (r Reclaimer) Run(ctx context.Context) {
	high := r.Load()
	prev, settled := high, int64(-1)
	for ticks := 1; ; ticks++ {
		select {
		case <-ctx.Done():
			return
		case <-r.Tick:
		}
		n := r.Load()
		switch {
		case ticks == r.Settle:
			r.reclaim(true)
			high, settled = n, n
		case fell(high, n) && !falling(prev, n):
			r.reclaim(settled >= 0 && n <= 2*settled+16)
			high = n
		case n > high:
			high = n
		}
		prev = n
	}
}

func (r Reclaimer) reclaim(release bool) {
	if r.Trim != nil {
		r.Trim()
	}
	debug.FreeOSMemory()
	if release && r.Release != nil {
		r.Release()
	}
}

// fell reports whether the load has fallen far enough from its high to
// be worth a collection: by a quarter, and by more than what a handful
// of connections hold.
func fell(high, now int64) bool {
	return high-now >= 64 && now <= high*3/4
}

// falling reports whether the load is still dropping: by more than a
// twentieth since the last look.
func falling(prev, now int64) bool {
	return now*20 < prev*19
}
