package proxy

import (
	"log/slog"
	"net"
	"sync"

	"github.com/wgbore/wgbore/proxy/relay"
)

// defaultHandOverFrom is how many connections a proxy must hold before
// it hands new relays over. Below it, the goroutines that idle relays
// park cost little memory all together, while the poller's hops cost
// CPU on every connection's setup and traffic.
const defaultHandOverFrom = 64

// handOver turns a proxy's relay, once its client and target are
// connected, into one that needs no goroutine while both are idle: the
// tunnel's connections notify, and a client's TCP socket does once a
// poller watches it (Linux). The goroutine that served the request, with
// the stack that dialing grew, then ends: a parked goroutine per idle
// connection was the largest part of the memory that idle connections
// held.
type handOver struct {
	// from is the number of open connections from which relays are
	// handed over: defaultHandOverFrom, unless a test says otherwise.
	from uint64
	log  *slog.Logger

	// poller is started by the first hand-over and stopped by close;
	// nil where there is none (see relay.Poller).
	pollerOnce sync.Once
	poller     *relay.Poller
}

// try hands the relay between the client connection lc and target over
// when the proxy holds at least from connections (active, counting this
// one) and both sides can notify. The relay then owns lc, its slot
// under MaxConnections and its place in t, where the socket it watches
// replaces lc, and it holds a count of t's WaitGroup until it ends: the
// caller must hold one while it calls. try reports false, changing
// nothing, where the relay must run on the caller's goroutine instead.
func (o *handOver) try(t *connTracker, active uint64, lc *limitedConn, target net.Conn) bool {
	if active < o.from {
		return false
	}
	tunnel, ok := target.(relay.ReadNotifier)
	if !ok {
		return false
	}
	o.pollerOnce.Do(o.startPoller)
	if o.poller == nil {
		return false
	}
	watched := o.poller.Watch(lc.Conn)
	if watched == nil {
		return false
	}
	if !t.replace(lc, watched) {
		// Close has closed both ends; the caller's relay ends at once.
		watched.Close()
		return false
	}
	t.wg.Add(1)
	relay.Start(watched, tunnel, &t.wg, nil, func() {
		t.untrack(target)
		t.untrack(watched)
		lc.Close()
		t.wg.Done()
	})
	return true
}

func (o *handOver) startPoller() {
	p, err := relay.NewPoller()
	if err != nil {
		o.log.Debug("no poller for client sockets: each idle connection keeps a goroutine", "err", err)
		return
	}
	o.poller = p
}

// close stops the poller; the caller has waited for every relay, so
// none is left to start it or use it.
func (o *handOver) close() {
	o.pollerOnce.Do(func() {})
	if o.poller != nil {
		o.poller.Close()
	}
}
