package proxy

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"
)

// connTracker is the bookkeeping a TCP server needs to stop: the
// listeners its Serve calls accept on, the connections Close must close,
// and a WaitGroup counting every goroutine it starts, so Close and
// Shutdown can wait for all of them.
//
// Shutdown and Close set their flags under the same lock that admits a
// listener, a connection or a goroutine. Whatever they do not see is
// therefore refused, and the WaitGroup never grows from zero while it is
// being waited on.
type connTracker struct {
	mu sync.Mutex
	// draining is set by Shutdown and Close: no new listener, connection
	// or goroutine is admitted. closed is set by Close alone: connections
	// are torn down, and one that arrives later is closed at once.
	draining, closed bool
	listeners        map[net.Listener]struct{}
	// conns maps each connection to whether it is busy: closeIdle, for
	// Shutdown, ends the others.
	conns map[net.Conn]bool

	wg sync.WaitGroup
}

func newConnTracker() *connTracker {
	return &connTracker{
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]bool),
	}
}

func (t *connTracker) isDraining() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.draining
}

// addListener registers l for Shutdown and Close to close. It reports
// false once either has begun.
func (t *connTracker) addListener(l net.Listener) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		return false
	}
	t.listeners[l] = struct{}{}
	return true
}

func (t *connTracker) removeListener(l net.Listener) {
	t.mu.Lock()
	delete(t.listeners, l)
	t.mu.Unlock()
}

// enter counts a goroutine about to start; the caller runs it and calls
// t.wg.Done when it ends. It reports false once Shutdown or Close has
// begun.
func (t *connTracker) enter() bool {
	return t.start(nil)
}

// start counts the goroutine about to serve c, as enter does, and
// registers c, idle, for Close and closeIdle. It reports false, leaving c
// to the caller, once Shutdown or Close has begun.
func (t *connTracker) start(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		return false
	}
	if c != nil {
		t.conns[c] = false
	}
	t.wg.Add(1)
	return true
}

// track registers c, busy, for Close. It reports false, having closed c,
// once Close has begun; Shutdown alone still lets a relay that was
// dialing connect.
func (t *connTracker) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		c.Close()
		return false
	}
	t.conns[c] = true
	return true
}

// markBusy marks c, registered by start, as busy, so closeIdle leaves it
// be. It reports false once Shutdown or Close has begun: a new relay
// would only prolong the wait.
func (t *connTracker) markBusy(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		return false
	}
	if _, ok := t.conns[c]; ok {
		t.conns[c] = true
	}
	return true
}

// replace puts with, busy, in c's place, for a relay that has taken c
// over and closes it through with. It reports false once Close has
// begun, which has closed c already.
func (t *connTracker) replace(c, with net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	delete(t.conns, c)
	t.conns[with] = true
	return true
}

// untrack forgets c and closes it. When the last connection goes, the
// map is made anew: a Go map keeps the buckets of its largest size, so
// after a burst of thousands of connections it would hold them for the
// life of the server.
func (t *connTracker) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	if len(t.conns) == 0 {
		t.conns = make(map[net.Conn]bool)
	}
	t.mu.Unlock()
	c.Close()
}

func (t *connTracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// drain, for Shutdown, admits nothing new and closes every listener;
// the connections carry on.
func (t *connTracker) drain() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.draining = true
	for l := range t.listeners {
		l.Close()
	}
}

// closeIdle closes the connections not marked busy. After drain, none
// can become busy, so none is missed.
func (t *connTracker) closeIdle() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for c, busy := range t.conns {
		if !busy {
			c.Close()
		}
	}
}

// closeAll, for Close, admits nothing new and closes every listener and
// connection, which ends the goroutines serving them; the caller then
// waits on t.wg. It reports false when an earlier call already did.
func (t *connTracker) closeAll() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.draining = true
	t.closed = true
	for l := range t.listeners {
		l.Close()
	}
	for c := range t.conns {
		c.Close()
	}
	return true
}

// acceptLoop accepts on l until it fails, handing each connection to
// handle, and closes l when it returns. handle reports false, leaving
// the connection to be closed here, once Shutdown or Close has begun.
// acceptLoop returns nil when l was closed by Shutdown or Close (or is
// given after them), and l's error otherwise.
//
// Running out of descriptors is transient: Accept is retried after a
// pause, doubling from 5 ms up to 1 s, which gives the connections in
// flight a moment to release some; each retry is logged at debug level
// as msg. ctx ending the pause ends the loop with nil.
func (t *connTracker) acceptLoop(ctx context.Context, l net.Listener, log *slog.Logger, msg string, handle func(net.Conn) bool) error {
	if !t.addListener(l) {
		l.Close()
		return nil
	}
	defer t.removeListener(l)
	defer l.Close()

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if t.isDraining() {
				return nil
			}
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				log.Debug(msg, "err", err, "retry_in", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return err
		}
		backoff = 0
		if !handle(c) {
			c.Close()
			return nil
		}
	}
}
