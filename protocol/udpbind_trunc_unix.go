//go:build unix && !linux

package protocol

import "syscall"

// udpMsgTrunc is the flag recvmsg sets on a datagram that did not fit. Its
// value differs between systems (0x10 on the BSDs and macOS, where 0x20 is
// MSG_CTRUNC), so it must come from the system's own constants.
const udpMsgTrunc = syscall.MSG_TRUNC
