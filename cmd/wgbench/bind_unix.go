//go:build unix && !linux

package main

import "golang.org/x/sys/unix"

// setSocketBuffers asks for socketBuffer in both directions. Only Linux
// has options that go past the system's cap, so the kernel may grant
// less; errors are ignored, as a smaller buffer only slows the bench.
func setSocketBuffers(fd uintptr) {
	unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
	unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuffer)
}
