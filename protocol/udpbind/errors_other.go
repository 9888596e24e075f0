//go:build !unix && !windows

package udpbind

import (
	"errors"
	"syscall"
)

// msgTrunc is zero where the system reports no truncation at all
// (js, wasip1, plan9): a cut datagram then fails authentication in the
// engine and is counted as such.
const msgTrunc = 0

func truncatedError(error) bool { return false }

func noFamily(err error) bool { return errors.Is(err, syscall.EAFNOSUPPORT) }

func addrInUse(err error) bool { return errors.Is(err, syscall.EADDRINUSE) }
