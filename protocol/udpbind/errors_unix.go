//go:build unix

package udpbind

import (
	"errors"
	"syscall"
)

// msgTrunc is the flag recvmsg sets on a datagram that did not fit. Its
// value differs between systems (0x10 on the BSDs and macOS, where 0x20 is
// MSG_CTRUNC), so it comes from the system's own constants.
const msgTrunc = syscall.MSG_TRUNC

// truncatedError is false: Unix says so with msgTrunc, not an error.
func truncatedError(error) bool { return false }

// noFamily reports a socket family the host does not have.
func noFamily(err error) bool { return errors.Is(err, syscall.EAFNOSUPPORT) }

// addrInUse reports a port another socket has.
func addrInUse(err error) bool { return errors.Is(err, syscall.EADDRINUSE) }
