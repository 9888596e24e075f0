package proxy

import (
	"net"
	"sync"
	"sync/atomic"
)

// DefaultMaxConnections caps the connections one listener serves at once
// when its configuration does not say. Each costs a host descriptor, a
// tunnel endpoint with its buffers and two goroutines, so the cap keeps a
// runaway client from exhausting the process, while staying far above
// what a person or a build farm behind one proxy opens.
const DefaultMaxConnections = 1024

// limitListener accepts at most max connections at a time. Past the cap it
// stops calling Accept, so further clients wait in the kernel's backlog
// instead of being refused: a burst slows down rather than fails, and the
// handshake timeouts of the servers free the slots a slowloris holds.
type limitListener struct {
	net.Listener
	slots chan struct{}
	done  chan struct{}
	once  sync.Once
	// stats is the server's, shared by all its listeners.
	stats *connCounter
}

// limitConnections wraps l so that at most max of its connections are
// open at once; max <= 0 means DefaultMaxConnections. It counts them in
// stats, where a server that serves several listeners sums them.
func limitConnections(l net.Listener, max int, stats *connCounter) net.Listener {
	if max <= 0 {
		max = DefaultMaxConnections
	}
	return &limitListener{Listener: l, slots: make(chan struct{}, max), done: make(chan struct{}), stats: stats}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	l.stats.opened()
	return &limitedConn{Conn: c, l: l}, nil
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitedConn gives its slot back, and leaves the count of active
// connections, on the first Close. It keeps CloseWrite reachable,
// because relays pass half-closes on through it.
type limitedConn struct {
	net.Conn
	l *limitListener
	// released is a flag rather than a sync.Once with a closure, so a
	// connection costs one allocation, not two.
	released atomic.Bool
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	if c.released.CompareAndSwap(false, true) {
		<-c.l.slots
		c.l.stats.closed()
	}
	return err
}

func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
