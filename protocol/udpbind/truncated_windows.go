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
