package main

import "golang.org/x/sys/unix"

// setSocketBuffers asks for socketBuffer in both directions as
// wireguard-go does on Linux: up to rmem_max and wmem_max, then beyond
// them where the process may (the FORCE options need CAP_NET_ADMIN).
// Errors are ignored, as there: a smaller buffer only slows the bench.
func setSocketBuffers(fd uintptr) {
	unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
	unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuffer)
	unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer)
	unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer)
}
