package wgtest

import (
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// arrivalOOBSize holds one SCM_TIMESTAMPNS control message.
var arrivalOOBSize = unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{})))

// enableArrivalStamps asks the kernel to stamp each datagram c receives
// with the time it arrived (SO_TIMESTAMPNS), best effort.
func enableArrivalStamps(c *net.UDPConn) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	})
}

// arrivalStamp reads the kernel's arrival time, in nanoseconds of the
// wall clock, from a datagram's control messages.
func arrivalStamp(oob []byte) (int64, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
			// The kernel writes a struct timespec in the machine's
			// own layout, which unix.Timespec is.
			ts := *(*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
			return ts.Nano(), true
		}
	}
	return 0, false
}
