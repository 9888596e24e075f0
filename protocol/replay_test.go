package protocol

import (
	"math"
	"math/rand/v2"
	"testing"
)

// replayNoLimit is a limit no test counter reaches, so that only the
// window decides.
const replayNoLimit = math.MaxUint64

// TestReplayInOrder accepts a long in-order stream, as a quiet link
// delivers it, and then rejects every counter a second time.
func TestReplayInOrder(t *testing.T) {
	var w replayWindow
	for c := uint64(0); c <= 100000; c++ {
		if !w.accept(c, replayNoLimit) {
			t.Fatalf("in-order counter %d rejected", c)
		}
		if w.accept(c, replayNoLimit) {
			t.Fatalf("counter %d accepted twice in a row", c)
		}
	}
	// Everything still inside the window is a duplicate; everything
	// older is out of the window. Both must be refused.
	for c := uint64(0); c <= 100000; c++ {
		if w.accept(c, replayNoLimit) {
			t.Fatalf("replayed counter %d accepted", c)
		}
	}
}

// TestReplayCounterZero checks the very first counter of a session, which
// is also the window's initial "newest": it must be accepted once.
func TestReplayCounterZero(t *testing.T) {
	var w replayWindow
	if !w.accept(0, replayNoLimit) {
		t.Fatalf("counter 0 rejected on a fresh window")
	}
	if w.accept(0, replayNoLimit) {
		t.Fatalf("counter 0 accepted twice")
	}
	w.reset()
	if !w.accept(0, replayNoLimit) {
		t.Fatalf("counter 0 rejected after reset")
	}
}

// TestReplayOutOfOrder delivers a block of counters in a shuffled order,
// as parallel decryption and reordering networks do: each is accepted
// exactly once, however late, as long as it is within ReplayWindowSize of
// the newest.
func TestReplayOutOfOrder(t *testing.T) {
	if ReplayWindowSize < 2048 {
		t.Fatalf("ReplayWindowSize %d is below the whitepaper's minimum of 2048", ReplayWindowSize)
	}
	r := rand.New(rand.NewPCG(1, 2))
	var w replayWindow
	const base = 1_000_000
	if !w.accept(base+ReplayWindowSize, replayNoLimit) {
		t.Fatalf("newest rejected")
	}
	order := r.Perm(ReplayWindowSize + 1)
	for _, i := range order {
		c := uint64(base + i)
		if c == base+ReplayWindowSize {
			continue
		}
		if !w.accept(c, replayNoLimit) {
			t.Fatalf("late counter %d (%d behind newest) rejected", c, base+ReplayWindowSize-c)
		}
	}
	for _, i := range order {
		if c := uint64(base + i); w.accept(c, replayNoLimit) {
			t.Fatalf("counter %d accepted a second time", c)
		}
	}
}

// TestReplayWindowEdge pins the boundary: exactly ReplayWindowSize behind
// the newest is accepted, one more is rejected, for newest at every
// position within a 64-bit block (the ring works in blocks, so an
// off-by-one would show at some positions only).
func TestReplayWindowEdge(t *testing.T) {
	for off := uint64(0); off < 2*replayBlockBits; off++ {
		newest := uint64(50_000) + off
		var w replayWindow
		if !w.accept(newest, replayNoLimit) {
			t.Fatalf("newest %d rejected", newest)
		}
		if w.accept(newest-ReplayWindowSize-1, replayNoLimit) {
			t.Fatalf("newest %d: counter %d behind accepted", newest, ReplayWindowSize+1)
		}
		if !w.accept(newest-ReplayWindowSize, replayNoLimit) {
			t.Fatalf("newest %d: counter exactly %d behind rejected", newest, ReplayWindowSize)
		}
		if !w.accept(newest-1, replayNoLimit) {
			t.Fatalf("newest %d: counter 1 behind rejected", newest)
		}
		if w.accept(newest, replayNoLimit) {
			t.Fatalf("newest %d accepted twice", newest)
		}
	}
}

// TestReplayJumpClearsRing checks the forward jump. Counters accepted
// before the jump sit in ring slots that the new window reuses; the jump
// must clear those slots, or in-window counters that were never seen
// would be refused as replays. Jumps are exercised just below, at and
// above the ring size, where a clearing loop bound is most likely wrong.
func TestReplayJumpClearsRing(t *testing.T) {
	ringBits := uint64(replayRingBlocks * replayBlockBits)
	for _, jump := range []uint64{
		ringBits - replayBlockBits, ringBits - 1, ringBits, ringBits + 1,
		ringBits + replayBlockBits, 3*ringBits + 17, 1 << 40,
	} {
		var w replayWindow
		// Fill the whole window so every ring bit is set.
		for c := uint64(0); c < ringBits; c++ {
			w.accept(c, replayNoLimit)
		}
		oldNewest := ringBits - 1
		newest := oldNewest + jump
		if !w.accept(newest, replayNoLimit) {
			t.Fatalf("jump %d: new newest rejected", jump)
		}
		// Every never-seen counter inside the new window is accepted
		// once, including those whose slots held old bits.
		lo := uint64(0)
		if newest > ReplayWindowSize {
			lo = newest - ReplayWindowSize
		}
		for c := lo; c < newest; c++ {
			fresh := c > oldNewest
			if got := w.accept(c, replayNoLimit); got != fresh {
				t.Fatalf("jump %d: counter %d (fresh=%v) accept = %v", jump, c, fresh, got)
			}
		}
		// Old counters outside the window stay rejected.
		for c := uint64(0); c < lo && c < ringBits; c++ {
			if w.accept(c, replayNoLimit) {
				t.Fatalf("jump %d: old counter %d accepted", jump, c)
			}
		}
	}
}

// TestReplayLimit checks that counters at or past the limit are refused
// even on a fresh window: RejectAfterMessages ends a session, and a
// counter there must not be recorded either.
func TestReplayLimit(t *testing.T) {
	var w replayWindow
	const limit = 1000
	if w.accept(limit, limit) || w.accept(limit+1, limit) || w.accept(math.MaxUint64, limit) {
		t.Fatalf("counter at or past the limit accepted")
	}
	if !w.accept(limit-1, limit) {
		t.Fatalf("counter just below the limit rejected")
	}
	// The refused counters did not move the window.
	if !w.accept(0, limit) {
		t.Fatalf("counter 0 rejected: a refused counter moved the window")
	}

	var w2 replayWindow
	if w2.accept(RejectAfterMessages, RejectAfterMessages) {
		t.Fatalf("RejectAfterMessages accepted")
	}
	if !w2.accept(RejectAfterMessages-1, RejectAfterMessages) {
		t.Fatalf("RejectAfterMessages-1 rejected")
	}
	if w2.accept(math.MaxUint64, RejectAfterMessages) {
		t.Fatalf("MaxUint64 accepted")
	}
}

// replayModel is the window's specification without the ring: a set of
// every counter ever accepted plus the distance rule.
type replayModel struct {
	newest uint64
	seen   map[uint64]bool
}

func (m *replayModel) accept(c, limit uint64) bool {
	if c >= limit || m.seen[c] {
		return false
	}
	if c <= m.newest && m.newest-c > ReplayWindowSize {
		return false
	}
	m.seen[c] = true
	if c > m.newest {
		m.newest = c
	}
	return true
}

// TestReplayAgainstModel drives the ring and the model with a long random
// stream mixing in-order traffic, reordering, duplicates, stale packets and
// jumps of many sizes, and requires identical verdicts.
func TestReplayAgainstModel(t *testing.T) {
	r := rand.New(rand.NewPCG(20260101, 7))
	var w replayWindow
	m := replayModel{seen: map[uint64]bool{}}
	const limit = 1 << 40
	var head uint64
	accepted := 0
	for i := range 400_000 {
		var c uint64
		switch k := r.IntN(10000); {
		case k < 5000: // next in order
			head++
			c = head
		case k < 7500: // reordered: somewhat behind the head
			c = head - min(head, uint64(r.IntN(ReplayWindowSize+2*replayBlockBits)))
		case k < 8500: // duplicate of something recent
			c = head - min(head, uint64(r.IntN(64)))
		case k < 9000: // slightly ahead
			c = head + uint64(r.IntN(3*replayBlockBits))
			head = max(head, c)
		case k < 9700: // jump of up to a few rings
			head += uint64(r.IntN(4 * replayRingBlocks * replayBlockBits))
			c = head
		case k < 9998: // anywhere in the past
			c = uint64(r.Int64N(int64(head + 1)))
		default: // near the limit, which also ends the session
			c = limit - 2 + uint64(r.IntN(4))
		}
		got, want := w.accept(c, limit), m.accept(c, limit)
		if got != want {
			t.Fatalf("step %d: counter %d (newest %d): ring says %v, model says %v", i, c, m.newest, got, want)
		}
		if got {
			accepted++
		}
		if m.newest >= limit-2 { // start a new session, as a rekey does
			w.reset()
			m = replayModel{seen: map[uint64]bool{}}
			head = 0
		}
	}
	// Guard against a degenerate stream that tests nothing.
	if accepted < 100_000 {
		t.Fatalf("only %d accepted; the stream does not exercise acceptance", accepted)
	}
}

// TestReplayNoAllocs enforces what BenchmarkReplayWindow reports: the
// per-packet check must not allocate.
func TestReplayNoAllocs(t *testing.T) {
	var w replayWindow
	c := uint64(0)
	if n := testing.AllocsPerRun(1000, func() {
		w.accept(c, RejectAfterMessages)
		c++
	}); n != 0 {
		t.Fatalf("accept allocates %v times per call", n)
	}
}

// BenchmarkReplayWindow measures the in-order case with an occasional
// late packet, the common mix on a busy session.
func BenchmarkReplayWindow(b *testing.B) {
	var w replayWindow
	b.ReportAllocs()
	c := uint64(0)
	for b.Loop() {
		c++
		w.accept(c, RejectAfterMessages)
		if c%16 == 0 {
			w.accept(c-100, RejectAfterMessages)
		}
	}
}
