//go:build !unix

package relay

import (
	"io"
	"net"
)

// copyRaw has no way here to wait for a socket without reading it, so
// Copy falls back to its small buffer.
func copyRaw(io.Writer, *net.TCPConn) (bool, int64, error) { return false, 0, nil }

// datagramsRaw likewise leaves the socket to copyDatagrams' own loop,
// which holds its buffer while it waits.
func datagramsRaw(net.Conn, *net.UDPConn, func()) bool { return false }
