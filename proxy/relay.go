package proxy

import (
	"io"
	"net"
	"sync"
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
