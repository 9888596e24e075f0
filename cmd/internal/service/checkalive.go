package service

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/wgbore/wgbore/config"
)

// checkAlive is wireproxy's CheckAlive: it pings each address through the
// tunnel every interval and logs when one stops or starts answering, so an
// operator sees the far side go away without waiting for a user to
// complain. It logs changes only, not every ping. Every result also goes
// to tracker, when there is one, for /readyz and /metrics; the targets
// are registered there for as long as the pings run, so a reload that
// drops CheckAlive leaves none behind.
func (s *Service) checkAlive(ctx context.Context, addrs []netip.Addr, every time.Duration, tracker *aliveTracker) {
	if every <= 0 {
		every = config.DefaultCheckAliveInterval
	}
	tracker.start(addrs, every)
	defer tracker.stop()
	alive := make(map[netip.Addr]bool)
	tick := time.NewTicker(every)
	defer tick.Stop()
	errs := make([]error, len(addrs))
	rtts := make([]time.Duration, len(addrs))
	for {
		// One round pings every address at once, so silent ones do not
		// stretch the round to an interval each.
		var wg sync.WaitGroup
		for i, a := range addrs {
			wg.Go(func() {
				pctx, cancel := context.WithTimeout(ctx, every)
				rtts[i], errs[i] = s.tun.Ping(pctx, a)
				cancel()
			})
		}
		wg.Wait()
		if ctx.Err() != nil {
			return
		}
		for i, a := range addrs {
			tracker.record(a, rtts[i], errs[i])
			was, seen := alive[a]
			switch err := errs[i]; {
			case err == nil && (!seen || !was):
				s.log.Info("check alive: answering", "addr", a, "rtt", rtts[i])
			case err != nil && (!seen || was):
				s.log.Warn("check alive: not answering", "addr", a, "err", err)
			}
			alive[a] = errs[i] == nil
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// aliveTracker keeps the latest CheckAlive result per target, between
// the goroutine that pings and the HTTP handlers that report. A nil
// *aliveTracker records nothing, so checkAlive needs no special case.
type aliveTracker struct {
	now func() time.Time

	mu      sync.Mutex
	every   time.Duration
	targets []aliveTarget
}

// aliveTarget is one CheckAlive address and its latest ping.
type aliveTarget struct {
	Addr netip.Addr
	// Pinged is false until the first round has finished.
	Pinged bool
	// At is when the latest ping finished; Err is its failure, nil when
	// it answered in RTT.
	At  time.Time
	Err error
	RTT time.Duration
	// LastOK is when the target last answered; zero if never.
	LastOK time.Time
}

// newAliveTracker returns a tracker that stamps results with now, the
// clock /readyz compares them to.
func newAliveTracker(now func() time.Time) *aliveTracker {
	return &aliveTracker{now: now}
}

// start registers the targets one checkAlive pings, none pinged yet.
func (t *aliveTracker) start(addrs []netip.Addr, every time.Duration) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.every = every
	t.targets = make([]aliveTarget, len(addrs))
	for i, a := range addrs {
		t.targets[i] = aliveTarget{Addr: a}
	}
}

// stop forgets the targets: with no pings running there is nothing to
// report on.
func (t *aliveTracker) stop() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.every, t.targets = 0, nil
}

// record notes one ping of addr: rtt when err is nil.
func (t *aliveTracker) record(addr netip.Addr, rtt time.Duration, err error) {
	if t == nil {
		return
	}
	at := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.targets {
		tg := &t.targets[i]
		if tg.Addr != addr {
			continue
		}
		tg.Pinged, tg.At, tg.Err, tg.RTT = true, at, err, rtt
		if err == nil {
			tg.LastOK = at
		} else {
			tg.RTT = 0
		}
	}
}

// snapshot returns the interval and a copy of the targets; no targets
// means CheckAlive is not running.
func (t *aliveTracker) snapshot() (time.Duration, []aliveTarget) {
	if t == nil {
		return 0, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.every, slices.Clone(t.targets)
}
