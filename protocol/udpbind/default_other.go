//go:build !linux || portableudp

package udpbind

import (
	"net"
	"net/netip"
)

// defaultDatagrams is the path Listen opens: the portable one, the only
// one outside Linux, and on Linux in a binary built with the portableudp
// tag, which runs a whole program on the path other systems take.
func defaultDatagrams(conn *net.UDPConn, local netip.AddrPort, batchSize int) (datagrams, error) {
	return newPortable(conn, local, batchSize)
}
