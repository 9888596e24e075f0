//go:build !unix

package protocol

// udpMsgTrunc is zero where there is no recvmsg flag to check: golang.org/x/net
// cannot receive on these systems (Windows, js, wasip1) at all.
const udpMsgTrunc = 0
