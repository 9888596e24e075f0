package proxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxConnections caps the connections one listener serves at once
// when its configuration does not say. Each costs a host descriptor, a
// tunnel endpoint with its buffers and, while it moves data (or always,
// for a relay that idles on its goroutine), goroutines, so the cap keeps a
// runaway client from exhausting the process, while staying far above
// what a person or a build farm behind one proxy opens.
const DefaultMaxConnections = 1024

// DefaultDialTimeout bounds a proxy's dial into the tunnel when its
// configuration does not say. A WireGuard handshake that has to be
// retried (RekeyTimeout, 5 s, with jitter) must fit inside it, so it is
// generous; a client behind a dead path waits this long for its failure.
const DefaultDialTimeout = 30 * time.Second

// limitListener accepts at most max connections at a time. Past the cap
// it still accepts, and refuses at once: a client told "too many" by the
// protocol it speaks can report it or retry, where one left in the
// kernel's backlog just hangs. Refusals run in goroutines of their own,
// at most maxRefusing at a time and each for at most refuseTimeout, so a
// flood of them costs a bounded amount; past that, excess connections
// are closed without a word.
type limitListener struct {
	net.Listener
	slots chan struct{}
	// admit, when set, may refuse a connection that has a slot.
	admit func() bool
	// stats is the server's, shared by all its listeners.
	stats *connCounter
	// refuse tells a client in its own protocol that the listener is
	// full; nil just closes the connection.
	refuse func(net.Conn)

	refusing   sync.WaitGroup
	refusingMu sync.Mutex
	refusals   map[net.Conn]struct{}
}

const (
	// maxRefusing covers a burst of a few hundred clients at once; each
	// refusal is a goroutine with a small stack for up to two seconds.
	maxRefusing   = 256
	refuseTimeout = 2 * time.Second
)

// limitConnections wraps l so that at most max of its connections are
// open at once, and only those admit (when set) lets in; max <= 0 means
// DefaultMaxConnections. It counts them in stats, where a server that
// serves several listeners sums them, and answers the excess with
// refuse.
func limitConnections(l net.Listener, max int, admit func() bool, stats *connCounter, refuse func(net.Conn)) net.Listener {
	if max <= 0 {
		max = DefaultMaxConnections
	}
	return &limitListener{Listener: l, slots: make(chan struct{}, max), admit: admit, stats: stats,
		refuse: refuse, refusals: map[net.Conn]struct{}{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.admit == nil || l.admit() {
			select {
			case l.slots <- struct{}{}:
				l.stats.opened()
				return &limitedConn{Conn: c, l: l}, nil
			default:
			}
		}
		l.stats.refused()
		l.refuseConn(c)
	}
}

// refuseConn answers and closes a connection over the cap.
func (l *limitListener) refuseConn(c net.Conn) {
	l.refusingMu.Lock()
	if l.refuse == nil || len(l.refusals) >= maxRefusing || l.refusals == nil {
		l.refusingMu.Unlock()
		c.Close()
		return
	}
	l.refusals[c] = struct{}{}
	l.refusing.Add(1)
	l.refusingMu.Unlock()
	go func() {
		defer l.refusing.Done()
		c.SetDeadline(time.Now().Add(refuseTimeout))
		l.refuse(c)
		c.Close()
		l.refusingMu.Lock()
		delete(l.refusals, c)
		l.refusingMu.Unlock()
	}()
}

// Close stops accepting, cuts refusals short and waits for them, so a
// server's Close leaves none of their goroutines behind.
func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.refusingMu.Lock()
	for c := range l.refusals {
		c.Close()
	}
	l.refusals = nil // no more refusals: anything left is just closed
	l.refusingMu.Unlock()
	l.refusing.Wait()
	return err
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
