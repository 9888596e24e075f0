// Package relay copies bytes and datagrams between two connections for
// the proxies, the port forwarders and server mode's egress, with
// buffers that a flow holds only while it has something to move.
//
// An idle relay is the common case: a browser's keep-alive connections,
// a sidecar's pooled database connections, a server's thousands of
// peers' flows. A blocked Read holds its buffer, and buffers sized for
// bulk transfer (io.Copy's 32 KiB, two per relay) are then mostly held by
// relays that have nothing to move. So:
//   - A host TCP or UDP socket (on Unix) is waited on through its
//     syscall.RawConn, and a pooled buffer is taken only once the socket
//     is readable: an idle direction holds no buffer at all. On Linux a
//     [Poller] makes such a socket a ReadNotifier, as below.
//   - Copies woken by a notification start with a small pooled buffer
//     and move to a large one only when a read fills it: most wake-ups
//     bring a few bytes or the end of the stream.
//   - A tunnel connection that can notify when it is readable (a
//     [ReadNotifier], as netstack's connections are) is read only when
//     it has bytes, on a goroutine of a pool that all relays share, so
//     an idle direction holds neither a buffer nor a goroutine, and a
//     mass close does not start a goroutine for every relay at once.
//   - Any other reader is read into a small buffer of the relay's own
//     until a read fills it, and into a pooled large one only while bytes
//     stream.
package relay

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/wakeup"
)

const (
	// smallBuffer is the buffer a copy loop reads into until a read
	// fills it. 2 KiB holds a full-sized tunnel segment (MSS 1380 at
	// the default MTU), so one packet's worth of interactive traffic
	// never needs the large buffer.
	smallBuffer = 2 << 10

	// largeBuffer is io.Copy's size: a bulk transfer through the proxy
	// moved as many MB/s with it as io.Copy did.
	largeBuffer = 32 << 10

	// datagramBuffer holds the largest UDP payload (65,507 bytes over
	// IPv4), so no datagram is cut short.
	datagramBuffer = 64 << 10
)

// drains runs every relay's drains: a mass close wakes them all at once,
// and the bound is on the process's memory, as the buffer pools are.
// It is never replaced; a test passes a pool of its own.
var drains = wakeup.New(wakeup.PerCores(), wakeup.Stall, clock.System{})

var (
	smallBuffers    = &bufferPool{size: smallBuffer}
	largeBuffers    = &bufferPool{size: largeBuffer}
	datagramBuffers = &bufferPool{size: datagramBuffer}
)

// bufferPool is a sync.Pool of buffers of one size that counts the
// buffers taken and not yet given back, so that a test can see an idle
// relay hold none, and those ever taken.
type bufferPool struct {
	size int
	pool sync.Pool
	out  atomic.Int64
	gets atomic.Int64 // every buffer ever taken
}

func (p *bufferPool) get() *[]byte {
	p.out.Add(1)
	p.gets.Add(1)
	if b, ok := p.pool.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, p.size)
	return &b
}

func (p *bufferPool) put(b *[]byte) {
	p.out.Add(-1)
	p.pool.Put(b)
}

// Copy copies src to dst until src ends, as io.Copy does (a clean EOF is
// a nil error), holding buffers only while src has bytes: see the
// package doc.
func Copy(dst io.Writer, src io.Reader) (written int64, err error) {
	if tc, ok := src.(*net.TCPConn); ok {
		if handled, written, err := copyRaw(dst, tc); handled {
			return written, err
		}
	}
	small := make([]byte, smallBuffer)
	var large *[]byte
	defer func() {
		if large != nil {
			largeBuffers.put(large)
		}
	}()
	buf := small
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if werr := writeAll(dst, buf[:n], &written); werr != nil {
				return written, werr
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return written, nil
			}
			return written, rerr
		}
		switch {
		case large == nil && n == len(small):
			large = largeBuffers.get()
			buf = *large
		case large != nil && n < len(small):
			largeBuffers.put(large)
			large, buf = nil, small
		}
	}
}

func writeAll(dst io.Writer, b []byte, written *int64) error {
	m, err := dst.Write(b)
	*written += int64(m)
	if err == nil && m != len(b) {
		err = io.ErrShortWrite
	}
	return err
}

// OneWay copies src to dst, then passes the end of src's stream on as a
// half-close of dst, so a protocol that stops sending in one direction
// while still reading the other keeps working. After a failure, or
// without a half-close, it closes both.
func OneWay(dst, src net.Conn) {
	_, err := Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		cw.CloseWrite()
		return
	}
	// Without a half-close, or after a failure, the whole conn goes: the
	// other direction cannot usefully continue.
	dst.Close()
	src.Close()
}

// ReadNotifier is a connection that can say when it has something to
// read and be read without waiting, as the tunnel's connections
// (netstack.TCPConn, and the UDP flows netstack hands server mode) can.
// The relay copies from one without a goroutine parked in Read.
type ReadNotifier interface {
	net.Conn
	// NotifyReadable calls f whenever data, the end of the stream or an
	// error may have become ready, until stop is called. f must not
	// block.
	NotifyReadable(f func()) (stop func())
	// Readable reports whether TryRead would return something other
	// than wouldBlock.
	Readable() bool
	// TryRead reads what has arrived (one datagram, for a datagram
	// connection) without waiting.
	TryRead(b []byte) (n int, wouldBlock bool, err error)
}

// Both copies both ways between client and upstream, passing half-closes
// on, and returns once both directions have finished. The calling
// goroutine, which must hold a count of wg, copies client to upstream.
// The other direction runs on a goroutine counted in wg, or, when
// upstream is a ReadNotifier, on goroutines (counted too) started only
// while upstream has bytes for the client.
func Both(client, upstream net.Conn, wg *sync.WaitGroup) {
	finished := startOther(client, upstream, wg, nil, func() { OneWay(client, upstream) })
	OneWay(upstream, client)
	<-finished
}

// startOther starts a relay's second direction, upstream to client: from
// notifications when upstream is a ReadNotifier (a datagram copy when
// moved is set), else on a goroutine counted in wg that runs copy. The
// channel it returns is closed when that direction has finished.
func startOther(client, upstream net.Conn, wg *sync.WaitGroup, moved func(), copy func()) chan struct{} {
	if nr, ok := upstream.(ReadNotifier); ok {
		return fromNotifier(drains, client, nr, wg, moved)
	}
	finished := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(finished)
		copy()
	}()
	return finished
}

// Datagrams copies datagrams both ways between a and b, keeping their
// boundaries, until either side is closed for good, and calls moved
// after each datagram. UDP has no end of stream: the caller ends the
// relay by closing a or b, after an idle timeout of its own (moved lets
// it watch activity). A connected UDP socket reports an ICMP error from
// the destination as a read or write error once; that ends nothing,
// since the next datagram may be answered. As with Both, the calling
// goroutine must hold a count of wg; it copies a to b, and b to a runs
// as Both runs its second direction.
func Datagrams(a, b net.Conn, wg *sync.WaitGroup, moved func()) {
	if moved == nil {
		moved = func() {}
	}
	finished := startOther(a, b, wg, moved, func() { copyDatagrams(a, b, moved) })
	copyDatagrams(b, a, moved)
	<-finished
}

// Start relays both ways between a and b, both ReadNotifiers (a tunnel
// connection, a host socket a Poller watches), without a goroutine of its
// own while neither has anything to move: each direction runs on
// goroutines started when its source has something, as Both's second
// direction does. With moved set the relay is of datagrams, as
// Datagrams; without, of a stream, as Both, half-closes included. done
// runs once both directions have finished, on the goroutine that
// finished last. The caller must hold a count of wg until then (done
// may release it): the directions count their goroutines in wg.
func Start(a, b ReadNotifier, wg *sync.WaitGroup, moved func(), done func()) {
	var left atomic.Int32
	left.Store(2)
	end := func() {
		if left.Add(-1) == 0 {
			done()
		}
	}
	startNotified(drains, b, a, wg, moved, end)
	startNotified(drains, a, b, wg, moved, end)
}

// copyDatagrams moves datagrams from src to dst until either fails for
// good, then closes both.
func copyDatagrams(dst, src net.Conn, moved func()) {
	defer src.Close()
	defer dst.Close()
	if uc, ok := src.(*net.UDPConn); ok && datagramsRaw(dst, uc, moved) {
		return
	}
	bp := datagramBuffers.get()
	defer datagramBuffers.put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if err != nil {
			if TransientUDPError(err) {
				continue
			}
			return
		}
		if !sendDatagram(dst, buf[:n], moved) {
			return
		}
	}
}

// sendDatagram writes one datagram to dst; it reports false once dst is
// no longer usable.
func sendDatagram(dst net.Conn, b []byte, moved func()) bool {
	if moved != nil {
		moved()
	}
	_, err := dst.Write(b)
	return err == nil || TransientUDPError(err)
}

// TransientUDPError is an error a UDP socket reports for one datagram (an
// ICMP error from the far end, a full buffer) rather than for the socket.
func TransientUDPError(err error) bool {
	for _, errno := range []syscall.Errno{syscall.ECONNREFUSED, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ENOBUFS, syscall.EMSGSIZE} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// notifiedCopy copies src to dst in drains run when src has something
// to read; each drains src, then leaves. armed is true while no drain
// is copying and a notification may start one, so exactly one drain at
// a time copies. The drains run on the shared pool of goroutines
// (drains), not on one goroutine each.
type notifiedCopy struct {
	dst   net.Conn
	src   ReadNotifier
	wg    *sync.WaitGroup
	armed atomic.Bool
	stop  func()
	// after runs once the copy has finished.
	after func()
	// datagrams is set for a datagram copy: moved is called after each
	// datagram, transient errors are skipped, and the end is a close.
	datagrams bool
	moved     func()
	// pool runs the drains; drainFunc is drain, made once.
	pool      *wakeup.Pool
	drainFunc func()
}

// fromNotifier starts copying src to dst as OneWay does, or as
// copyDatagrams does when moved is not nil, with drains on pool; the
// channel it returns is closed when the copy is over.
func fromNotifier(pool *wakeup.Pool, dst net.Conn, src ReadNotifier, wg *sync.WaitGroup, moved func()) chan struct{} {
	finished := make(chan struct{})
	startNotified(pool, dst, src, wg, moved, func() { close(finished) })
	return finished
}

// startNotified starts copying src to dst as fromNotifier does and runs
// after once the copy has finished.
func startNotified(pool *wakeup.Pool, dst net.Conn, src ReadNotifier, wg *sync.WaitGroup, moved, after func()) {
	c := &notifiedCopy{dst: dst, src: src, wg: wg, datagrams: moved != nil, moved: moved, after: after, pool: pool}
	c.drainFunc = c.drain
	// Armed only once stop is set: a notification that comes while
	// NotifyReadable registers (a socket already readable) must not
	// start a drain that could finish, and call stop, before it exists.
	c.stop = src.NotifyReadable(c.wake)
	c.armed.Store(true)
	// What arrived before the notification was set up, or while it was.
	if src.Readable() {
		c.wake()
	}
}

// wake runs on the tunnel stack's or the poller's goroutine: it must
// not block. It can count a drain in wg safely: armed is never set
// again once the copy has finished, so Both's caller still holds its
// count.
func (c *notifiedCopy) wake() {
	if c.armed.CompareAndSwap(true, false) {
		c.wg.Add(1)
		c.pool.Go(c.drainFunc)
	}
}

// drain copies what src has, with a pooled buffer it holds only while
// copying, then arms the notification again and returns, or finishes
// the copy at the end of src's stream or on an error.
func (c *notifiedCopy) drain() {
	defer c.wg.Done()
	// A stream's drain starts small, as Copy does: many wake-ups bring
	// a few bytes or just the end of the stream (a mass close wakes
	// every relay at once), and only a read that fills the small buffer
	// is worth the large one.
	pool := smallBuffers
	if c.datagrams {
		pool = datagramBuffers
	}
	bp := pool.get()
	defer func() { pool.put(bp) }()
	buf := *bp
	l, canLinger := c.src.(lingerer)
	lingerNext := false
	for {
		var n int
		var wouldBlock bool
		var err error
		lingered := lingerNext
		if lingerNext {
			n, wouldBlock, err = l.lingerRead(buf, lingerTime)
			lingerNext = false
		} else {
			n, wouldBlock, err = c.src.TryRead(buf)
		}
		if c.datagrams && err != nil && TransientUDPError(err) {
			continue
		}
		if err == nil && !wouldBlock && (n > 0 || c.datagrams) {
			if c.datagrams {
				if !sendDatagram(c.dst, buf[:n], c.moved) {
					c.finish(net.ErrClosed)
					return
				}
			} else {
				var written int64
				if werr := writeAll(c.dst, buf[:n], &written); werr != nil {
					c.finish(werr)
					return
				}
				if pool == smallBuffers && n == len(buf) {
					pool.put(bp)
					pool = largeBuffers
					bp = pool.get()
					buf = *bp
				}
			}
		}
		if err != nil {
			c.finish(err)
			return
		}
		if wouldBlock {
			if canLinger && !lingered && !c.pool.Waiting() {
				// Wait a moment for more before leaving: a busy flow
				// keeps its goroutine, as a parked Read would, unless
				// other drains wait for one.
				lingerNext = true
				continue
			}
			c.armed.Store(true)
			// Bytes that arrived between the read and the arming found
			// nothing armed to wake: take them now, unless a
			// notification since then has already started another
			// drain.
			if !c.src.Readable() || !c.armed.CompareAndSwap(true, false) {
				return
			}
		}
	}
}

// lingerer is a source that can wait a moment for more to read, more
// cheaply than a notification and a new goroutine: a host socket, on
// the runtime's own poller.
type lingerer interface {
	// lingerRead is TryRead that waits up to d, on the runtime's
	// poller as a Read would, for something to read; wouldBlock means
	// nothing came in time.
	lingerRead(b []byte, d time.Duration) (n int, wouldBlock bool, err error)
}

// lingerTime is how long a copy from a lingerer waits for more before
// its goroutine leaves: longer than the gaps within a burst, far shorter
// than a flow's idle spells.
const lingerTime = 5 * time.Millisecond

// finish ends the copy as OneWay does: the end of src's stream is passed
// on as a half-close, a failure closes both ends.
func (c *notifiedCopy) finish(err error) {
	c.stop()
	if err == io.EOF && !c.datagrams {
		if cw, ok := c.dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
			c.end()
			return
		}
	}
	c.dst.Close()
	c.src.Close()
	c.end()
}

func (c *notifiedCopy) end() { c.after() }
