package protocol

import (
	"net/netip"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
)

// rlStart is an arbitrary fixed start for the manual clock.
var rlStart = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func rlAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// rlCount calls allow n times and reports how many were allowed.
func rlCount(r *rateLimiter, a netip.Addr, n int) int {
	ok := 0
	for range n {
		if r.allow(a) {
			ok++
		}
	}
	return ok
}

// TestRateLimiterBurst checks that a new source gets exactly
// handshakeBurst (5) handshakes back to back, then none until time passes.
func TestRateLimiterBurst(t *testing.T) {
	if handshakeBurst != 5 || handshakesPerSecond != 20 {
		t.Fatalf("limits changed to burst %d, rate %d/s; this test assumes 5 and 20", handshakeBurst, handshakesPerSecond)
	}
	clk := clock.NewManual(rlStart)
	r := newRateLimiter(clk)
	a := rlAddr("192.0.2.1")
	for i := range 5 {
		if !r.allow(a) {
			t.Fatalf("handshake %d of the burst denied", i+1)
		}
	}
	for i := range 100 {
		if r.allow(a) {
			t.Fatalf("handshake %d past the burst allowed with no time passing", i+6)
		}
	}
}

// TestRateLimiterRefill checks the 20/s refill: a token every 50 ms, no
// more than the burst saved up, and about 20 per second under a steady
// flood.
func TestRateLimiterRefill(t *testing.T) {
	clk := clock.NewManual(rlStart)
	r := newRateLimiter(clk)
	a := rlAddr("192.0.2.1")
	if got := rlCount(r, a, 10); got != 5 {
		t.Fatalf("burst allowed %d, want 5", got)
	}
	clk.Advance(45 * time.Millisecond) // 0.9 tokens
	if r.allow(a) {
		t.Fatalf("allowed after 45 ms, before a token refilled")
	}
	clk.Advance(10 * time.Millisecond) // 1.1 tokens
	if !r.allow(a) {
		t.Fatalf("denied after 55 ms, a token should have refilled")
	}
	if r.allow(a) {
		t.Fatalf("two allowed from one refilled token")
	}

	// A long pause fills the bucket to the burst and no further.
	clk.Advance(900 * time.Millisecond)
	if got := rlCount(r, a, 20); got != 5 {
		t.Fatalf("after 0.9 s idle %d allowed, want the burst of 5", got)
	}

	// A flood every 10 ms for 10 s gets the rate: 200 handshakes.
	allowed := 0
	for range 1000 {
		clk.Advance(10 * time.Millisecond)
		allowed += rlCount(r, a, 3)
	}
	if allowed < 199 || allowed > 201 {
		t.Fatalf("steady flood: %d allowed in 10 s, want about 200", allowed)
	}
}

// TestRateLimiterIndependentSources checks that one source exhausting its
// bucket does not affect another, for IPv4 and IPv6.
func TestRateLimiterIndependentSources(t *testing.T) {
	clk := clock.NewManual(rlStart)
	r := newRateLimiter(clk)
	a, b := rlAddr("192.0.2.1"), rlAddr("192.0.2.2")
	if got := rlCount(r, a, 50); got != 5 {
		t.Fatalf("source a: %d allowed, want 5", got)
	}
	if got := rlCount(r, b, 50); got != 5 {
		t.Fatalf("source b after a's flood: %d allowed, want 5", got)
	}
	c := rlAddr("2001:db8:1:1::1")
	if got := rlCount(r, c, 50); got != 5 {
		t.Fatalf("IPv6 source: %d allowed, want 5", got)
	}
	if r.size() != 3 {
		t.Fatalf("size() = %d, want 3 buckets", r.size())
	}
}

// TestRateLimiterIPv6Prefix checks that IPv6 sources are counted per /64:
// one host usually holds a whole /64 and could otherwise rotate through
// 2^64 addresses, each with a fresh bucket. Different /64s, even
// neighbours, stay independent. IPv4-mapped addresses count as IPv4.
func TestRateLimiterIPv6Prefix(t *testing.T) {
	clk := clock.NewManual(rlStart)
	r := newRateLimiter(clk)
	same := []netip.Addr{
		rlAddr("2001:db8:1:2::1"),
		rlAddr("2001:db8:1:2::2"),
		rlAddr("2001:db8:1:2:ffff:ffff:ffff:ffff"),
		rlAddr("2001:db8:1:2:1234::5%eth0"),
	}
	allowed := 0
	for i := range 20 {
		if r.allow(same[i%len(same)]) {
			allowed++
		}
	}
	if allowed != 5 {
		t.Fatalf("20 handshakes spread over one /64: %d allowed, want 5 (one bucket)", allowed)
	}
	if r.size() != 1 {
		t.Fatalf("one /64 made %d buckets", r.size())
	}
	for _, other := range []string{"2001:db8:1:3::1", "2001:db8:1:1:ffff:ffff:ffff:ffff", "2001:db8:2:2::1"} {
		if got := rlCount(r, rlAddr(other), 10); got != 5 {
			t.Fatalf("%s shares a bucket with 2001:db8:1:2::/64: %d allowed", other, got)
		}
	}

	v4, mapped := rlAddr("198.51.100.7"), rlAddr("::ffff:198.51.100.7")
	if got := rlCount(r, v4, 3) + rlCount(r, mapped, 10); got != 5 {
		t.Fatalf("IPv4 and its mapped form: %d allowed together, want 5", got)
	}
	// The /64 rule must not lump IPv4 sources together.
	if got := rlCount(r, rlAddr("198.51.100.8"), 10); got != 5 {
		t.Fatalf("neighbouring IPv4 address: %d allowed, want 5", got)
	}
}

// TestRateLimiterSweep checks that a source idle for a second is
// forgotten, so the table is as small as the set of active sources, while
// an active one is kept. Sweeping happens on the next allow() call.
func TestRateLimiterSweep(t *testing.T) {
	clk := clock.NewManual(rlStart)
	r := newRateLimiter(clk)
	for i := range 100 {
		r.allow(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
	}
	active := rlAddr("192.0.2.1")
	r.allow(active)
	if r.size() != 101 {
		t.Fatalf("size() = %d after 101 sources, want 101", r.size())
	}
	clk.Advance(600 * time.Millisecond)
	r.allow(active)
	if r.size() != 101 {
		t.Fatalf("swept before a second passed: size() = %d", r.size())
	}
	clk.Advance(400 * time.Millisecond)
	// One second since the 100 went quiet; the active source last
	// spoke 400 ms ago.
	r.allow(rlAddr("192.0.2.99"))
	if got := r.size(); got != 2 {
		t.Fatalf("after a second: size() = %d, want 2 (the active source and the new one)", got)
	}
	clk.Advance(5 * time.Second)
	r.allow(active)
	if got := r.size(); got != 1 {
		t.Fatalf("after 5 s idle: size() = %d, want 1", got)
	}
	// A forgotten source comes back with a full burst.
	if got := rlCount(r, rlAddr("10.0.0.5"), 10); got != 5 {
		t.Fatalf("returning source: %d allowed, want 5", got)
	}
}
