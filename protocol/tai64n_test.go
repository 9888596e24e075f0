package protocol

import (
	"bytes"
	"encoding/hex"
	"math/rand/v2"
	"testing"
	"time"
)

// TestTimestampLayout pins the wire encoding to literal bytes: TAI64
// seconds (2^62 + 10 + Unix seconds) big-endian, then the whitened
// nanoseconds big-endian. A responder compares these bytes against the
// last initiation's, and other WireGuard implementations do the same, so
// the layout must match theirs exactly.
func TestTimestampLayout(t *testing.T) {
	for _, tc := range []struct {
		t    time.Time
		want string
	}{
		// The Unix epoch is label 2^62 + 10.
		{time.Unix(0, 0), "400000000000000a" + "00000000"},
		// 1700000000 = 0x6553f100. 123456789 ns = 0x075bcd15, whitened
		// (low 24 bits cleared) to 0x07000000.
		{time.Unix(1700000000, 123456789), "400000006553f10a" + "07000000"},
		// The largest nanosecond value keeps its top bits: 999999999 =
		// 0x3b9ac9ff -> 0x3b000000.
		{time.Unix(1700000000, 999999999), "400000006553f10a" + "3b000000"},
		// Under 2^24 ns whitens to zero.
		{time.Unix(1, 16777215), "400000000000000b" + "00000000"},
		{time.Unix(1, 16777216), "400000000000000b" + "01000000"},
	} {
		ts := makeTimestamp(tc.t)
		if got := hex.EncodeToString(ts[:]); got != tc.want {
			t.Errorf("makeTimestamp(%v) = %s, want %s", tc.t.UTC(), got, tc.want)
		}
	}
	// The time zone of the time.Time is irrelevant.
	at := time.Unix(1700000000, 500000000)
	if makeTimestamp(at.In(time.FixedZone("x", -7*3600))) != makeTimestamp(at.UTC()) {
		t.Fatalf("timestamp depends on the time zone")
	}
}

// TestTimestampWhitening checks the ~16 ms granularity: two times inside
// one 2^24 ns bucket encode identically (so the responder learns little
// about our clock), while times 20 ms apart, the initiation rate limit,
// always encode strictly increasing (so an honest retry is never taken
// for a replay).
func TestTimestampWhitening(t *testing.T) {
	sec := time.Unix(1767225600, 0) // 2026-01-01
	a := makeTimestamp(sec.Add(1 * time.Millisecond))
	b := makeTimestamp(sec.Add(11 * time.Millisecond))
	if a != b {
		t.Fatalf("1 ms and 11 ms into a second encode differently: %x vs %x", a, b)
	}
	if a.after(b) || b.after(a) {
		t.Fatalf("equal timestamps compare as ordered")
	}
	c := makeTimestamp(sec.Add(21 * time.Millisecond))
	if !c.after(a) {
		t.Fatalf("21 ms not after 1 ms: %x vs %x", c, a)
	}

	// Every start offset within a second, including across the second
	// boundary where the last bucket is cut short.
	r := rand.New(rand.NewPCG(7, 8))
	for range 20000 {
		t0 := sec.Add(time.Duration(r.Int64N(int64(10 * time.Second))))
		t1 := t0.Add(20 * time.Millisecond)
		if !makeTimestamp(t1).after(makeTimestamp(t0)) {
			t.Fatalf("%v and 20 ms later do not increase: %x, %x", t0, makeTimestamp(t0), makeTimestamp(t1))
		}
	}
}

// TestTimestampMonotonic checks that a later time never encodes to an
// earlier timestamp, and that after() agrees with time order, over random
// steps including ones that cross seconds and the bucket boundary.
func TestTimestampMonotonic(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	now := time.Unix(1767225600, 0)
	prev := makeTimestamp(now)
	for i := range 100000 {
		step := time.Duration(r.Int64N(int64(50 * time.Millisecond)))
		if i%1000 == 0 {
			step = time.Duration(r.Int64N(int64(1000 * time.Hour)))
		}
		now = now.Add(step)
		cur := makeTimestamp(now)
		if prev.after(cur) {
			t.Fatalf("step %d: time went forward by %v but timestamp went back: %x -> %x", i, step, prev, cur)
		}
		if bytes.Compare(cur[:], prev[:]) > 0 != cur.after(prev) {
			t.Fatalf("after() disagrees with byte order")
		}
		if step >= 20*time.Millisecond && !cur.after(prev) {
			t.Fatalf("step %d: %v later but not after", i, step)
		}
		prev = cur
	}
	// Across the 32-bit seconds boundary that TAI64 was designed for.
	before := makeTimestamp(time.Unix(1<<32-1, 999999999))
	after := makeTimestamp(time.Unix(1<<32, 0))
	if !after.after(before) {
		t.Fatalf("no increase across 2^32 seconds")
	}
}
