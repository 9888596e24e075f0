package proxy

import "sync/atomic"

// ConnStats counts the clients of one server, for metrics. For a
// UDPForwarder a client is a session: UDP has no connection, and a
// session is what holds a socket and a goroutine.
type ConnStats struct {
	// Active are open now.
	Active uint64
	// Total were accepted since the server was made; it never goes down,
	// so a scraper can compute a rate from it.
	Total uint64
	// Refused arrived while the listener was at its MaxConnections, or
	// were turned away by the server's Admit; it never goes down either.
	Refused uint64
}

// connCounter is shared by every listener of one server, so Stats sums
// them without a lock; the data path never touches it, only accept and
// close do.
type connCounter struct {
	active, total, refusedN atomic.Uint64
}

func (c *connCounter) refused() { c.refusedN.Add(1) }

func (c *connCounter) opened() {
	c.total.Add(1)
	c.active.Add(1)
}

// closed undoes one opened; adding the two's complement of 1 is how
// atomic.Uint64 subtracts.
func (c *connCounter) closed() { c.active.Add(^uint64(0)) }

func (c *connCounter) stats() ConnStats {
	// opened bumps Total first and this reads it last, so a snapshot
	// never shows more Active than Total.
	a := c.active.Load()
	return ConnStats{Active: a, Total: c.total.Load(), Refused: c.refusedN.Load()}
}
