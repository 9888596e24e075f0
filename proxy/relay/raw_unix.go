//go:build unix

package relay

import (
	"io"
	"net"
	"os"
	"syscall"
)

// copyRaw is Copy from a host TCP socket: it waits for the socket to be
// readable through the runtime's poller, as Read does, but takes a
// pooled buffer only once a read can return at once, and gives it back
// whenever the socket runs dry. It reports false, having done nothing,
// when the socket has no file descriptor to read.
func copyRaw(dst io.Writer, src *net.TCPConn) (handled bool, written int64, err error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return false, 0, nil
	}
	r := rawReader{rc: rc, pool: largeBuffers}
	defer r.release()
	for {
		n, rerr, cerr := r.read()
		switch {
		case cerr != nil:
			return true, written, cerr
		case rerr != nil:
			return true, written, &net.OpError{Op: "read", Net: "tcp", Source: src.LocalAddr(), Addr: src.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
		case n == 0:
			return true, written, nil // the end of the stream
		}
		if werr := writeAll(dst, (*r.buf)[:n], &written); werr != nil {
			return true, written, werr
		}
	}
}

// datagramsRaw is copyDatagrams from a host UDP socket, waiting as
// copyRaw does: one datagram per read. It reports false, having done
// nothing, when the socket has no file descriptor to read.
func datagramsRaw(dst net.Conn, src *net.UDPConn, moved func()) bool {
	rc, err := src.SyscallConn()
	if err != nil {
		return false
	}
	r := rawReader{rc: rc, pool: datagramBuffers}
	defer r.release()
	for {
		n, rerr, cerr := r.read()
		switch {
		case cerr != nil:
			return true
		case rerr != nil && TransientUDPError(rerr):
			continue
		case rerr != nil:
			return true
		}
		if !sendDatagram(dst, (*r.buf)[:n], moved) {
			return true
		}
	}
}

// rawReader reads a socket through its RawConn into a pooled buffer that
// it holds only while reads return: see copyRaw.
type rawReader struct {
	rc   syscall.RawConn
	pool *bufferPool
	buf  *[]byte
}

// read waits until a read returns something other than EAGAIN and
// returns its count and error, or cerr when the socket is closed or its
// deadline passed.
func (r *rawReader) read() (n int, rerr, cerr error) {
	cerr = r.rc.Read(func(fd uintptr) bool {
		if r.buf == nil {
			r.buf = r.pool.get()
		}
		n, rerr = readFD(fd, *r.buf)
		if rerr == syscall.EAGAIN {
			r.release()
			return false
		}
		return true
	})
	return n, rerr, cerr
}

func (r *rawReader) release() {
	if r.buf != nil {
		r.pool.put(r.buf)
		r.buf = nil
	}
}

// readFD reads from a non-blocking socket, retrying an interrupted read.
func readFD(fd uintptr, b []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), b)
		if err != syscall.EINTR {
			if n < 0 {
				n = 0
			}
			return n, err
		}
	}
}
