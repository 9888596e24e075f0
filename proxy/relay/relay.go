package proxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// A relay's two copy loops read into a small buffer of their own while
// a flow trickles or idles, and into a pooled large one only while bytes
// stream. A blocked Read holds its buffer, so buffers sized for bulk
// transfer (io.Copy's 32 KiB, two per relay) are mostly held by relays
// that have nothing to move: with 10,000 idle SOCKS5 connections,
// go-socks5's pooled 32 KiB buffers were 72 KiB of heap per connection
// (of which the touched pages, about 8 KiB, were resident).
const (
	// relaySmallBuffer is the buffer a copy loop reads into until a read
	// fills it. 2 KiB holds a full-sized tunnel segment (MSS 1380 at
	// the default MTU), so one packet's worth of interactive traffic
	// never needs the large buffer.
	relaySmallBuffer = 2 << 10

	// relayLargeBuffer is io.Copy's size: a bulk transfer through the
	// proxy moved as many MB/s with it as io.Copy did.
	relayLargeBuffer = 32 << 10
)

var relayBuffers = sync.Pool{New: func() any { return new([relayLargeBuffer]byte) }}

// relayCopy copies src to dst until src ends, as io.Copy does (a clean
// EOF is a nil error), with buffers that cost little while src idles:
// reads go to a small buffer until one fills it, then to a pooled large
// one until a read returns less than the small one holds, which puts
// the large buffer back. A flow that idles after a burst thus holds the
// large buffer only if its last read was large.
func relayCopy(dst io.Writer, src io.Reader) (written int64, err error) {
	small := make([]byte, relaySmallBuffer)
	var large *[relayLargeBuffer]byte
	defer func() {
		if large != nil {
			relayBuffers.Put(large)
		}
	}()
	buf := small
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			m, werr := dst.Write(buf[:n])
			written += int64(m)
			if werr != nil {
				return written, werr
			}
			if m != n {
				return written, io.ErrShortWrite
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
			large = relayBuffers.Get().(*[relayLargeBuffer]byte)
			buf = large[:]
		case large != nil && n < len(small):
			relayBuffers.Put(large)
			large, buf = nil, small
		}
	}
}

// relayTunnel copies src to dst, then passes the end of src's stream on as a
// half-close of dst, so a protocol that stops sending in one direction
// while still reading the other keeps working.
func relayTunnel(dst, src net.Conn) {
	_, err := relayCopy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		cw.CloseWrite()
		return
	}
	// Without a half-close, or after a failure, the whole conn goes: the
	// other direction cannot usefully continue.
	dst.Close()
	src.Close()
}

// readNotifier is a connection that can say when it has something to
// read and be read without waiting, as the tunnel's TCP connections
// (netstack.TCPConn) can. relayBoth copies from one without a goroutine
// parked in Read: an idle relay then costs one goroutine, not two.
type readNotifier interface {
	net.Conn
	NotifyReadable(f func()) (stop func())
	Readable() bool
	TryRead(b []byte) (n int, wouldBlock bool, err error)
}

// relayBoth copies both ways between client and upstream, passing
// half-closes on, and returns once both directions have finished. The
// calling goroutine, which must hold a count of wg, copies client to
// upstream. The other direction runs on a goroutine counted in wg, or,
// when upstream is a readNotifier, on goroutines (counted too) started
// only while upstream has bytes for the client.
func relayBoth(client, upstream net.Conn, wg *sync.WaitGroup) {
	var finished chan struct{}
	if nr, ok := upstream.(readNotifier); ok {
		finished = relayFromNotifier(client, nr, wg)
	} else {
		finished = make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(finished)
			relayTunnel(client, upstream)
		}()
	}
	relayTunnel(upstream, client)
	<-finished
}

// notifiedCopy copies src to dst in goroutines started when src has
// something to read; each drains src, then leaves. armed is true while
// no goroutine is copying and a notification may start one, so exactly
// one goroutine at a time copies.
type notifiedCopy struct {
	dst      net.Conn
	src      readNotifier
	wg       *sync.WaitGroup
	armed    atomic.Bool
	stop     func()
	finished chan struct{}
}

// relayFromNotifier starts copying src to dst as relayTunnel does; the
// channel it returns is closed when the copy is over.
func relayFromNotifier(dst net.Conn, src readNotifier, wg *sync.WaitGroup) chan struct{} {
	c := &notifiedCopy{dst: dst, src: src, wg: wg, finished: make(chan struct{})}
	c.armed.Store(true)
	c.stop = src.NotifyReadable(c.wake)
	// Bytes that arrived before the notification was set up.
	if src.Readable() {
		c.wake()
	}
	return c.finished
}

// wake runs on the tunnel stack's goroutine: it must not block. It can
// count a goroutine in wg safely: armed is never set again once the
// copy has finished, so relayBoth's caller still holds its count.
func (c *notifiedCopy) wake() {
	if c.armed.CompareAndSwap(true, false) {
		c.wg.Add(1)
		go c.drain()
	}
}

// drain copies what src has, with a pooled buffer it holds only while
// copying, then arms the notification again and returns, or finishes
// the copy at the end of src's stream or on an error.
func (c *notifiedCopy) drain() {
	defer c.wg.Done()
	buf := relayBuffers.Get().(*[relayLargeBuffer]byte)
	defer relayBuffers.Put(buf)
	for {
		n, wouldBlock, err := c.src.TryRead(buf[:])
		if n > 0 {
			m, werr := c.dst.Write(buf[:n])
			if werr == nil && m != n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				c.finish(werr)
				return
			}
		}
		if err != nil {
			c.finish(err)
			return
		}
		if wouldBlock {
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

// finish ends the copy as relayTunnel does: the end of src's stream is
// passed on as a half-close, a failure closes both ends.
func (c *notifiedCopy) finish(err error) {
	c.stop()
	if err == io.EOF {
		if cw, ok := c.dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
			close(c.finished)
			return
		}
	}
	c.dst.Close()
	c.src.Close()
	close(c.finished)
}
