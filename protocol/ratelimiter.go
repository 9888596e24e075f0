package protocol

import (
	"net/netip"
	"sync"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
)

// The handshake rate limit per source: a token bucket refilled at
// handshakesPerSecond with room for a short burst. It only applies under
// load, after the source has proven with MAC2 that it receives at its
// address, so it throttles real sources, not spoofed ones.
const (
	handshakesPerSecond = 20
	handshakeBurst      = 5
	// rateLimiterForget drops a source's bucket once it has been full this
	// long, so the table stays as small as the set of active sources.
	rateLimiterForget = time.Second
)

type rateLimiter struct {
	clock clock.Clock
	mu    sync.Mutex
	// buckets is keyed by IPv4 address or IPv6 /64: one host usually
	// owns a whole /64, and counting its addresses apart would give it
	// 2^64 buckets.
	buckets map[netip.Addr]*tokenBucket
	swept   time.Time
}

type tokenBucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(clk clock.Clock) *rateLimiter {
	return &rateLimiter{clock: clk, buckets: make(map[netip.Addr]*tokenBucket)}
}

func rateLimitKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// allow spends one token of src's bucket, if there is one.
func (r *rateLimiter) allow(src netip.Addr) bool {
	now := r.clock.Now()
	key := rateLimitKey(src)
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.swept) >= rateLimiterForget {
		r.sweepLocked(now)
	}
	b, ok := r.buckets[key]
	if !ok {
		r.buckets[key] = &tokenBucket{tokens: handshakeBurst - 1, last: now}
		return true
	}
	b.tokens += now.Sub(b.last).Seconds() * handshakesPerSecond
	if b.tokens > handshakeBurst {
		b.tokens = handshakeBurst
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (r *rateLimiter) sweepLocked(now time.Time) {
	r.swept = now
	for k, b := range r.buckets {
		if now.Sub(b.last) >= rateLimiterForget {
			delete(r.buckets, k)
		}
	}
}

func (r *rateLimiter) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buckets)
}
