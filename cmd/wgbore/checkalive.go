package main

import (
	"context"
	"net/netip"
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
	for {
		for _, a := range addrs {
			pctx, cancel := context.WithTimeout(ctx, every)
			rtt, err := s.tun.Ping(pctx, a)
			cancel()
			if ctx.Err() != nil {
				return
			}
			was, seen := alive[a]
			switch {
			case err == nil && (!seen || !was):
				s.log.Info("check alive: answering", "addr", a, "rtt", rtt)
			case err != nil && (!seen || was):
				s.log.Warn("check alive: not answering", "addr", a, "err", err)
			}
			alive[a] = err == nil
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
