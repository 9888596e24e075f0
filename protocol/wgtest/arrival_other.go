//go:build !linux

package wgtest

import "net"

// arrivalOOBSize is 0 where the kernel's arrival stamps are not read.
const arrivalOOBSize = 0

// enableArrivalStamps does nothing here: arrivals are stamped when read.
func enableArrivalStamps(*net.UDPConn) {}

func arrivalStamp([]byte) (int64, bool) { return 0, false }
