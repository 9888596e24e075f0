package service

import (
	"context"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/cgroup"
	"github.com/wgbore/wgbore/cmd/internal/membudget"
	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/proxy"
)

// minTCPBufferMax is the least a budget may cut a TCP connection's
// largest buffer to: a few round trips' worth of full segments, so a
// bulk transfer under a small budget still fills a fast local path.
const minTCPBufferMax = 256 << 10

// newBudget makes the process's memory budget: -memory-limit
// (o.MemoryLimit), else [Interface] MemoryLimit, else the limit of the
// container (the cgroup found under o.Root); nil when none is set. It
// applies the Go runtime's soft limit and logs what the budget holds.
func newBudget(cfg *config.Config, o Options) *membudget.Budget {
	limit, source := o.MemoryLimit, "-memory-limit"
	if limit == 0 {
		limit, source = cfg.Interface.MemoryLimit, "MemoryLimit"
	}
	if limit == 0 && o.Root != nil {
		if l, ok := cgroup.MemoryLimit(o.Root); ok {
			limit, source = l, "the container's limit"
		}
	}
	b := membudget.New(limit, membudget.Overhead())
	if b == nil {
		return nil
	}
	soft := b.Apply()
	o.Logger.Info("memory budget", "limit", config.FormatSize(limit), "from", source,
		"go_soft_limit", config.FormatSize(soft), "default_max_connections", b.Connections(proxy.DefaultMaxConnections))
	return b
}

// admit is what the front ends ask before each new connection: nil, so
// that they skip the check, when there is no budget.
func (s *Service) admit() func() bool {
	if s.budget == nil {
		return nil
	}
	return s.budget.Admit
}

// maxConnections is a section's MaxConnections: as configured, or the
// default scaled to the budget.
func (s *Service) maxConnections(configured int) int {
	if configured > 0 {
		return configured
	}
	return s.budget.Connections(proxy.DefaultMaxConnections)
}

// reclaimNow collects garbage and gives the free memory back to the OS
// at once, after an event that made much garbage in one go (a reload).
func (s *Service) reclaimNow() {
	s.tun.Trim()
	debug.FreeOSMemory()
}

// startReclaim starts the reclaimer, which gives memory back to the
// OS when a burst of connections ends, budget or not.
func (s *Service) startReclaim() {
	ctx, cancel := context.WithCancel(context.Background())
	s.reclaimStop = cancel
	tick := time.NewTicker(membudget.ReclaimEvery)
	r := membudget.Reclaimer{
		// Peers and proxy connections too: an idle peer holds no
		// goroutine, nor, on Linux, does an idle SOCKS5 or CONNECT
		// relay once many are open, so a reload that removes many peers,
		// or a mass close, would otherwise not count as a fall (the
		// endpoints stay in TIME_WAIT a while).
		Load: func() int64 {
			n := int64(runtime.NumGoroutine()) + int64(s.tun.TCPEndpoints()) + int64(s.tun.Engine().NumPeers())
			for _, st := range s.listenerStats() {
				n += int64(st.Active)
			}
			return n
		},
		Trim: s.tun.Trim,
		Release: func() {
			if err := membudget.ReleaseBinary(); err != nil {
				s.log.Debug("cannot release the binary's pages", "err", err)
			}
		},
		Tick:        tick.C,
		Settle:      membudget.ReclaimSettle,
		Allocated:   membudget.AllocatedBytes,
		Collections: membudget.AutomaticCollections,
	}
	s.serving.Go(func() {
		defer tick.Stop()
		r.Run(ctx)
	})
}
