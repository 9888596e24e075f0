package membudget

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Reclaimer gives memory back to the operating system when a burst of
// connections, or of any work that allocates, ends.
//
// The Go runtime returns free memory only as far as its heap goal
// allows, and that goal was set by the last collection, taken while the
// burst's connections were alive; the next forced one may be two
// minutes away. A steep fall in the count of things that hold memory is
// a cheap sign that much of the heap has just become garbage: two
// collections then (the second for what buffer pools kept through the
// first), and a return of every free page, bring the process back to
// what is still in use. A burst of work that leaves the count
// where it was (a thousand peers' handshakes at once) leaves its garbage
// in the heap all the same; Allocated catches that kind once it is over.
type Reclaimer struct {
	// Load counts what holds memory: goroutines, open TCP endpoints
	// (those in TIME_WAIT too, which keep their state after the
	// connection closes), peers.
	Load func() int64
	// Trim, if set, drops caches that would otherwise outlive the burst,
	// just before the collection.
	Trim func()
	// Release, if set, runs after a reclaim that finds the process idle
	// again, and after the runtime's own collection in an idle process,
	// to give back what the runtime does not own (the binary's pages:
	// ReleaseBinary).
	Release func()
	// Tick paces the looks at Load; a look is a few loads, so once a
	// second costs nothing while idle and is soon enough after a burst.
	Tick <-chan time.Time
	// Settle is the number of ticks after which Run reclaims once
	// whatever the load, when start-up is over and its garbage and pages
	// are no longer needed; 0 skips it.
	Settle int
	// Allocated, if set, counts the bytes allocated since the process
	// started (AllocatedBytes). When ticks in a row have allocated
	// allocBurst or more between them and a tick then sees almost
	// nothing allocated, Run reclaims, at most once per allocSpacing
	// ticks or more.
	Allocated func() uint64
	// Collections, if set, counts the collections the Go runtime starts
	// by itself (AutomaticCollections). One that comes after none for
	// idleCollections ticks or more, while the load is near where it
	// settled, is the one the runtime forces every two minutes in a
	// process that allocates too little to need any: its look at every
	// stack and live object faults back in much of the binary's
	// read-only data, which nothing else reads until the next one. Run
	// gives those pages back after it (Release), and leaves the heap to
	// the runtime. It needs Settle: "near where it settled" means nothing
	// before.
	Collections func() uint64
}

const (
	// ReclaimEvery is the pace a process gives a Reclaimer's Tick: a
	// second is soon after a burst, and costs nothing while idle.
	ReclaimEvery = time.Second
	// ReclaimSettle is the Settle that goes with ReclaimEvery: by then
	// the first handshakes are done (up waits about 6 s for its summary)
	// and the pages only start-up needed can go.
	ReclaimSettle = 8
)

const (
	// allocBurst is the allocation of a burst that is worth a
	// collection once the burst stops: far less than a burst of
	// connections or handshakes makes.
	allocBurst = 8 << 20
	// allocQuiet is what a tick may see allocated and still count as
	// the end of a burst.
	allocQuiet = 256 << 10
	// allocSpacing is the fewest ticks between two reclaims after bursts
	// of allocation. It doubles, up to allocSpacingMax, while such bursts
	// keep coming (a stream fetching a segment every few seconds), so
	// that a busy process is not collected again and again, and it is
	// back at allocSpacing once they have stopped for allocSpacingMax.
	allocSpacing    = 8
	allocSpacingMax = 128
	// idleCollections is the fewest ticks between two of the runtime's
	// own collections for the second to count as idle: at ReclaimEvery's
	// pace, a little less than the two minutes after which it forces one.
	idleCollections = 100
	// releaseAgain is how many ticks after a reclaim near idle it is
	// repeated, once, binary's pages and all, if the process is still
	// idle and not allocating: the end of a burst runs code that an idle
	// process does not, some of it seconds after the load has come to
	// rest, and the pages it faults in would stay resident until the
	// runtime's next forced collection; what it allocated meanwhile
	// (the last TIME_WAIT endpoints' teardown) is garbage by then too.
	releaseAgain = 5
)

// AutomaticCollections is the Go runtime's count of the collections it
// started by itself, for Reclaimer.Collections: those that runtime.GC
// and debug.FreeOSMemory start are not among them.
func AutomaticCollections() uint64 { return runtimeCount("/gc/cycles/automatic:gc-cycles") }

// AllocatedBytes is the Go runtime's count of the bytes allocated on the
// heap since the process started, for Reclaimer.Allocated.
func AllocatedBytes() uint64 { return runtimeCount("/gc/heap/allocs:bytes") }

// runtimeCount reads one of the runtime's cumulative counts; 0 if this
// Go does not keep it.
func runtimeCount(name string) uint64 {
	s := [1]metrics.Sample{{Name: name}}
	metrics.Read(s[:])
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// Run looks at Load on every tick until ctx is done. It reclaims once a
// steep fall from the high since the last reclaim has come to rest: in
// the middle of a mass close the collection would run against the very
// work that frees the memory, and what it freed would be taken again at
// once. The binary's pages go (Release) only at the settling reclaim and
// when the load is back near where it settled, since a busy process
// would fault its running code straight back in; and each of those
// reclaims is repeated a few ticks later, for what the end of the burst
// faulted in and allocated after it.
func (r Reclaimer) Run(ctx context.Context) {
	high := r.Load()
	prev, settled := high, int64(-1)
	var allocated, burst uint64
	if r.Allocated != nil {
		allocated = r.Allocated()
	}
	spacing, lastBurst := allocSpacing, -allocSpacingMax
	var collections uint64
	if r.Collections != nil {
		collections = r.Collections()
	}
	lastCollection := 0
	again := 0 // the tick of the repeat after a reclaim near idle
	for ticks := 1; ; ticks++ {
		select {
		case <-ctx.Done():
			return
		case <-r.Tick:
		}
		n := r.Load()
		// A burst of allocation is counted over ticks that each allocate
		// more than allocQuiet, and ends with a tick that does not: an
		// idle process's trickle never adds up to one.
		quiet := true
		if r.Allocated != nil {
			a := r.Allocated()
			if since := a - allocated; since > allocQuiet {
				burst += since
				quiet = false
			}
			allocated = a
		}
		nearIdle := settled >= 0 && n <= 2*settled+16
		idleCollection := false
		if r.Collections != nil {
			if c := r.Collections(); c != collections {
				idleCollection = c == collections+1 && ticks-lastCollection >= idleCollections
				collections, lastCollection = c, ticks
			}
		}
		switch {
		case ticks == r.Settle:
			r.reclaim(true)
			high, settled, burst = n, n, 0
			again = ticks + releaseAgain
		case fell(high, n) && !falling(prev, n):
			r.reclaim(nearIdle)
			high, burst = n, 0
			if nearIdle {
				again = ticks + releaseAgain
			}
		case quiet && burst >= allocBurst && ticks-lastBurst >= spacing:
			// Not the binary's pages: a process with bursts of work is
			// not idle.
			r.reclaim(false)
			high = max(high, n)
			if ticks-lastBurst >= allocSpacingMax {
				spacing = allocSpacing
			} else {
				spacing = min(2*spacing, allocSpacingMax)
			}
			lastBurst = ticks
		case ticks == again && nearIdle && quiet:
			// On this tick a rise of the load (n > high) waits for the
			// next; an allocation burst's reclaim, above, takes the
			// repeat's place.
			r.reclaim(true)
			high = n
		case idleCollection && nearIdle && quiet:
			if r.Release != nil {
				r.Release()
			}
			high = max(high, n)
		case n > high:
			high = n
		}
		if quiet {
			burst = 0
		}
		prev = n
	}
}

func (r Reclaimer) reclaim(release bool) {
	if r.Trim != nil {
		r.Trim()
	}
	// What the burst's sync.Pools held (gVisor's buffer chunks and
	// packet buffers, the relays' copy buffers) outlives one collection,
	// and scattered among the burst's garbage it keeps whole spans from
	// going back. So two collections: the first moves the pools' contents
	// to their victims, the second (FreeOSMemory's) drops and frees the
	// victims, and then the free pages are returned.
	runtime.GC()
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
