package main

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/wgbore/wgbore/config"
)

// checkAlive is wireproxy's CheckAlive: it pings each address through the
// tunnel every interval and logs when one stops or starts answering, so an
// operator sees the far side go away without waiting for a user to
// complain. It logs changes only, not every ping.
func (s *service) checkAlive(ctx context.Context, addrs []netip.Addr, every time.Duration) {
	if every <= 0 {
		every = config.DefaultCheckAliveInterval
	}
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
