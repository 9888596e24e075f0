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
	var buf *[largeBuffer]byte
	defer func() {
		if buf != nil {
			largeBuffers.put(buf)
		}
	}()
	for {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			if buf == nil {
				buf = largeBuffers.get()
			}
			n, rerr = readFD(fd, buf[:])
			if rerr == syscall.EAGAIN {
				largeBuffers.put(buf)
				buf = nil
				return false
			}
			return true
		}); err != nil {
			return true, written, err
		}
		switch {
		case rerr != nil:
			return true, written, &net.OpError{Op: "read", Net: "tcp", Source: src.LocalAddr(), Addr: src.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
		case n == 0:
			return true, written, nil // the end of the stream
		}
		if werr := writeAll(dst, buf[:n], &written); werr != nil {
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
	var buf *[datagramBuffer]byte
	defer func() {
		if buf != nil {
			datagramBuffers.put(buf)
		}
	}()
	for {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			if buf == nil {
				buf = datagramBuffers.get()
			}
			n, rerr = readFD(fd, buf[:])
			if rerr == syscall.EAGAIN {
				datagramBuffers.put(buf)
				buf = nil
				return false
			}
			return true
		}); err != nil {
			return true
		}
		if rerr != nil {
			if TransientUDPError(rerr) {
				continue
			}
			return true
		}
		if !sendDatagram(dst, buf[:n], moved) {
			return true
		}
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
