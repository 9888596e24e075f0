package membudget

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestNoBudget(t *testing.T) {
	var b *Budget = New(0, 0)
	if b != nil {
		t.Fatal("New(0) made a budget")
	}
	if !b.Admit() || b.Refused() != 0 || b.Limit() != 0 {
		t.Fatal("no budget must admit everything and refuse nothing")
	}
	if b.Connections(1024) != 1024 || b.BufferMax(8<<20, 4<<10) != 8<<20 {
		t.Fatal("no budget must leave the defaults alone")
	}
}

func TestAdmit(t *testing.T) {
	// This test process holds a few MiB: a budget of 1 GiB admits, one
	// of 4 MiB does not.
	roomy := New(1<<30, Overhead())
	if !roomy.Admit() {
		t.Fatalf("1 GiB budget refused with %d bytes in use", roomy.InUse())
	}
	tight := New(4<<20, Overhead())
	for range 3 {
		if tight.Admit() {
			t.Fatalf("4 MiB budget admitted with %d bytes in use", tight.InUse())
		}
	}
	if tight.Refused() != 3 {
		t.Fatalf("Refused = %d, want 3", tight.Refused())
	}
	if roomy.Refused() != 0 {
		t.Fatalf("roomy budget counted %d refusals", roomy.Refused())
	}
}

func TestScaling(t *testing.T) {
	b := New(64<<20, 10<<20)
	c := b.Connections(20000)
	if c <= 16 || c >= 20000 {
		t.Fatalf("64 MiB budget scales 20000 connections to %d", c)
	}
	if b.Connections(100) != 100 {
		t.Fatal("a default below what the budget holds must stay")
	}
	if New(16<<20, 16<<20).Connections(1024) != 16 {
		t.Fatal("a budget that the overhead fills must still allow a few connections")
	}
	if got := b.BufferMax(8<<20, 4<<10); got != 4<<20 {
		t.Fatalf("BufferMax = %d, want a sixteenth of 64 MiB", got)
	}
	if got := New(16<<20, 0).BufferMax(8<<20, 2<<20); got != 2<<20 {
		t.Fatalf("BufferMax = %d, want the floor", got)
	}
}

func TestFell(t *testing.T) {
	for _, tc := range []struct {
		high, now int64
		want      bool
	}{
		{10000, 5000, true},
		{10000, 7500, true},
		{10000, 7600, false},
		{100, 50, false}, // a handful of connections is not a burst
		{200, 100, true},
		{0, 0, false},
	} {
		if got := fell(tc.high, tc.now); got != tc.want {
			t.Errorf("fell(%d, %d) = %v, want %v", tc.high, tc.now, got, tc.want)
		}
	}
}

func TestReclaimer(t *testing.T) {
	loads := make(chan int64, 1)
	loads <- 0
	tick := make(chan time.Time)
	trimmed := make(chan int64, 10)
	last := int64(0)
	released := make(chan int64, 10)
	r := Reclaimer{
		Load:    func() int64 { last = <-loads; return last },
		Trim:    func() { trimmed <- last },
		Release: func() { released <- last },
		Tick:    tick,
		Settle:  1,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	step := func(load int64) {
		tick <- time.Time{}
		loads <- load
	}
	// Settled at 100; a burst up to 5000; down by a little; most of the
	// way down in two steps, then at rest; down again to idle, at rest.
	for _, l := range []int64{100, 1000, 5000, 4800, 3000, 1000, 1000, 150, 150} {
		step(l)
	}
	tick <- time.Time{} // the last load is read once this tick is taken
	loads <- 150
	var got, rel []int64
	for len(trimmed) > 0 {
		got = append(got, <-trimmed)
	}
	for len(released) > 0 {
		rel = append(rel, <-released)
	}
	// The settling reclaim at 100; none while 4800 → 1000 is still
	// falling; one when it rests at 1000, and one when 150 rests. The
	// binary's pages go at settling and back near idle only.
	if want := []int64{100, 1000, 150}; !slices.Equal(got, want) {
		t.Fatalf("reclaimed at loads %v, want %v", got, want)
	}
	if want := []int64{100, 150}; !slices.Equal(rel, want) {
		t.Fatalf("released the binary at loads %v, want %v", rel, want)
	}
}

// A reclaim frees what sync.Pools held when it began, not only what was
// garbage then: the pools' contents are the scattered survivors of a
// burst that would keep their spans from going back.
func TestReclaimEmptiesPools(t *testing.T) {
	type buf struct{ b [4096]byte }
	var pool sync.Pool
	held := make(map[*buf]bool)
	for range 64 {
		b := new(buf)
		held[b] = true
		pool.Put(b)
	}
	Reclaimer{}.reclaim(false)
	if b, ok := pool.Get().(*buf); ok && held[b] {
		t.Fatal("a buffer put in a pool before the reclaim is still there after it")
	}
}

func TestReclaimerSettles(t *testing.T) {
	tick := make(chan time.Time)
	reclaims := make(chan struct{}, 10)
	r := Reclaimer{
		Load:    func() int64 { return 10 }, // never falls
		Release: func() { reclaims <- struct{}{} },
		Tick:    tick,
		Settle:  3,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	for range 6 {
		tick <- time.Time{}
	}
	cancel()
	<-done
	if n := len(reclaims); n != 1 {
		t.Fatalf("%d reclaims in 6 ticks with Settle 3 and a steady load, want 1", n)
	}
}

// onAllocations runs a Reclaimer whose load never moves and whose
// allocation count the test sets: step adds to it and ticks, stop ends
// the run and returns the counts at which it reclaimed, and how often it
// released the binary's pages.
func onAllocations(t *testing.T) (step func(add uint64), stop func() (reclaimedAt []uint64, released int)) {
	t.Helper()
	allocs := make(chan uint64)
	tick := make(chan time.Time)
	reclaims := make(chan uint64, 200)
	releases := make(chan struct{}, 200)
	var last uint64
	r := Reclaimer{
		Load:      func() int64 { return 100 }, // never falls
		Allocated: func() uint64 { last = <-allocs; return last },
		Trim:      func() { reclaims <- last },
		Release:   func() { releases <- struct{}{} },
		Tick:      tick,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	allocs <- 0
	total := uint64(0)
	step = func(add uint64) {
		tick <- time.Time{}
		total += add
		allocs <- total
	}
	stop = func() ([]uint64, int) {
		tick <- time.Time{} // the last values are read once this tick is taken
		allocs <- total
		cancel()
		<-done
		var got []uint64
		for len(reclaims) > 0 {
			got = append(got, <-reclaims)
		}
		return got, len(releases)
	}
	return step, stop
}

// TestReclaimerAfterAllocationBurst: a burst of allocation that leaves
// the load where it was (a storm of handshakes) is reclaimed once it
// stops, and an idle trickle that adds up to as much over time is not.
func TestReclaimerAfterAllocationBurst(t *testing.T) {
	const mib = 1 << 20
	step, stop := onAllocations(t)
	total := uint64(0)
	add := func(n uint64) { total += n; step(n) }
	// A trickle of 200 KiB a tick for 100 ticks: 20 MiB, never a burst.
	for range 100 {
		add(200 << 10)
	}
	trickled := total
	add(0)
	// A burst of 4 + 6 MiB, still busy; then quiet: one reclaim.
	add(4 * mib)
	add(6 * mib)
	burst := total
	add(0)
	add(0)
	// A burst too small to be worth it.
	add(3 * mib)
	add(0)
	got, _ := stop()
	if want := []uint64{burst}; !slices.Equal(got, want) {
		t.Fatalf("reclaimed with %v bytes allocated, want once, at %d (the trickle ended at %d)", got, want[0], trickled)
	}
}

// TestReclaimerSpacesRecurringBursts: bursts of allocation that keep
// coming (a stream fetching a segment every few seconds) are reclaimed
// ever more rarely, and never with the binary's pages.
func TestReclaimerSpacesRecurringBursts(t *testing.T) {
	const mib = 1 << 20
	step, stop := onAllocations(t)
	// A 9 MiB burst every third tick, for 99 ticks.
	for ticks := 1; ticks <= 99; ticks++ {
		if ticks%3 == 1 {
			step(9 * mib)
		} else {
			step(0)
		}
	}
	got, released := stop()
	// Spaced 8, 16, 32 ticks and more apart: four, not 33.
	if len(got) > 4 {
		t.Fatalf("reclaimed with %v bytes allocated, want at most 4 reclaims in 99 ticks of recurring bursts", got)
	}
	if len(got) == 0 {
		t.Fatal("no reclaim after recurring bursts")
	}
	if released != 0 {
		t.Fatalf("the binary's pages were released %d times after bursts of work", released)
	}
}

// TestReclaimerReleasesAfterIdleCollection: the runtime's own collection
// of an idle process, the first in idleCollections ticks, is followed by
// a release of the binary's pages; collections closer together, two at
// once, one while the load is far above where it settled, or one while
// the process allocates are not. None of them is a reclaim of the heap.
func TestReclaimerReleasesAfterIdleCollection(t *testing.T) {
	tick := make(chan time.Time)
	type state struct {
		tick        int
		load        int64
		collections uint64
		allocated   uint64
	}
	states := make(chan state)
	var cur state
	// Room for a release or a reclaim on every tick: a regression
	// that made them all would fail the test, not block the Reclaimer.
	releases := make(chan int, 800)
	trims := make(chan int, 800)
	r := Reclaimer{
		Load:        func() int64 { cur = <-states; return cur.load },
		Collections: func() uint64 { return cur.collections },
		Allocated:   func() uint64 { return cur.allocated },
		Trim:        func() { trims <- cur.tick },
		Release:     func() { releases <- cur.tick },
		Tick:        tick,
		Settle:      1,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	states <- state{load: 10}
	s := state{load: 10}
	collectAt := map[int]uint64{50: 1, 150: 1, 170: 1, 300: 2, 420: 1, 540: 1, 660: 1}
	for ticks := 1; ticks <= 700; ticks++ {
		s.tick = ticks
		s.collections += collectAt[ticks]
		switch {
		case ticks >= 400 && ticks < 430:
			s.load = 500 // busy, far above the settled 10
		case ticks >= 530 && ticks < 545:
			s.allocated += 1 << 20 // allocating more than a trickle
			s.load = 10
		default:
			s.load = 10
		}
		tick <- time.Time{}
		states <- s
	}
	cancel()
	<-done
	var got []int
	for len(releases) > 0 {
		got = append(got, <-releases)
	}
	// The settling release at 1, and again releaseAgain ticks later; at
	// 150, exactly idleCollections ticks after the collection at 50; at
	// 431, the reclaim once the load has fallen back near idle, and again
	// at 436; at 660, 120 ticks after the one at 540. Not at 170 (20
	// after), 300 (two at once), 420 (busy) or 540 (allocating).
	if want := []int{1, 1 + releaseAgain, 150, 431, 431 + releaseAgain, 660}; !slices.Equal(got, want) {
		t.Fatalf("released the binary's pages at ticks %v, want %v", got, want)
	}
	var trimmed []int
	for len(trims) > 0 {
		trimmed = append(trimmed, <-trims)
	}
	// The heap is reclaimed at settling and after the fall, each with its
	// repeat, and after the allocation burst: never for an idle
	// collection.
	if want := []int{1, 1 + releaseAgain, 431, 431 + releaseAgain, 545}; !slices.Equal(trimmed, want) {
		t.Fatalf("reclaimed the heap at ticks %v, want %v", trimmed, want)
	}
}

// TestReclaimerReleasesAgain: the reclaim that ends a burst, binary's
// pages and all, is repeated once, releaseAgain ticks later, for what the
// burst's end faulted in and allocated after it; not if by then the load
// has risen again or the process is allocating, and never a third time.
func TestReclaimerReleasesAgain(t *testing.T) {
	type state struct {
		at        int // ticks since the reclaim; -1 before it
		load      int64
		allocated uint64
	}
	// Each case: the loads and allocations of the ticks after the fall
	// back to idle; the ticks (counted from the reclaim) at which the
	// binary's pages go.
	cases := []struct {
		name  string
		after func(i int) state
		want  []int
	}{
		{"idle", func(int) state { return state{load: 10} }, []int{0, releaseAgain}},
		{"busy again", func(i int) state {
			if i >= releaseAgain-1 && i <= releaseAgain {
				return state{load: 40} // above the idle 10, below the fall's high
			}
			return state{load: 10}
		}, []int{0}},
		{"allocating", func(i int) state { return state{load: 10, allocated: uint64(i) << 20} }, []int{0}},
		// The fall rests at 30, still near the idle 10, and the last
		// 20 go later: the repeat comes all the same.
		{"stragglers", func(i int) state {
			if i < 3 {
				return state{load: 30}
			}
			return state{load: 10}
		}, []int{0, releaseAgain}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tick := make(chan time.Time)
			states := make(chan state)
			var cur state
			releases := make(chan int, 100)
			trims := make(chan int, 100)
			r := Reclaimer{
				Load:      func() int64 { cur = <-states; return cur.load },
				Allocated: func() uint64 { return cur.allocated },
				Release:   func() { releases <- cur.at },
				Trim:      func() { trims <- cur.at },
				Tick:      tick,
				Settle:    1,
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { r.Run(ctx); close(done) }()
			states <- state{at: -1, load: 10}
			// Settled at 10 (its release is drained below), then a burst
			// to 5000 and a fall back to 10 in one tick: reclaimed on the
			// tick after, when the load rests.
			for _, l := range []int64{10, 5000, 10} {
				tick <- time.Time{}
				states <- state{at: -1, load: l}
			}
			<-releases
			for i := range 4 * releaseAgain {
				tick <- time.Time{}
				s := c.after(i)
				s.at = i
				states <- s
			}
			tick <- time.Time{} // the last state is read once this tick is taken
			states <- state{at: 4 * releaseAgain, load: 10}
			cancel()
			<-done
			var got []int
			for len(releases) > 0 {
				got = append(got, <-releases)
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("released the binary's pages at ticks %v after the reclaim, want %v", got, c.want)
			}
			var trimmed []int
			for len(trims) > 0 {
				trimmed = append(trimmed, <-trims)
			}
			// The settling reclaim (before the burst; the fall's reclaim
			// takes its repeat's place), the one at the fall, and its
			// repeat wherever the pages go again.
			wantTrims := append([]int{-1}, c.want...)
			if !slices.Equal(trimmed, wantTrims) {
				t.Fatalf("reclaimed the heap at ticks %v after the reclaim, want %v", trimmed, wantTrims)
			}
		})
	}
}
