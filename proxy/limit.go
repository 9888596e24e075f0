package proxy

import (
	"net"
	"sync"
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
}

// limitConnections wraps l so that at most max of its connections are
// open at once; max <= 0 means DefaultMaxConnections.
func limitConnections(l net.Listener, max int) net.Listener {
	if max <= 0 {
		max = DefaultMaxConnections
	}
	return &limitListener{Listener: l, slots: make(chan struct{}, max), done: make(chan struct{})}
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
	return &limitedConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitedConn gives its slot back on the first Close. It keeps
// CloseWrite reachable, because relays pass half-closes on through it.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
