package udpbind

import (
	"errors"
	"syscall"
)

// msgTrunc is zero: Windows reports a datagram that did not fit as an
// error, not a flag.
const msgTrunc = 0

// wsaEMSGSIZE is WSAEMSGSIZE, what WSARecvMsg fails with when a datagram
// was longer than the buffer; the part that fit was still copied.
const wsaEMSGSIZE = syscall.Errno(10040)

// truncatedError reports a receive that failed only because the datagram
// did not fit.
func truncatedError(err error) bool { return errors.Is(err, wsaEMSGSIZE) }

// Winsock's own numbers, which the syscall package's EAFNOSUPPORT and
// EADDRINUSE (values Go invented for Windows) do not match.
const (
	wsaEAFNOSUPPORT = syscall.Errno(10047)
	wsaEADDRINUSE   = syscall.Errno(10048)
)

// noFamily reports a socket family the host does not have.
func noFamily(err error) bool {
	return errors.Is(err, wsaEAFNOSUPPORT) || errors.Is(err, syscall.EAFNOSUPPORT)
}

// addrInUse reports a port another socket has.
func addrInUse(err error) bool {
	return errors.Is(err, wsaEADDRINUSE) || errors.Is(err, syscall.EADDRINUSE)
}
