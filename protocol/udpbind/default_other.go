//go:build (!linux && !windows) || portableudp

package udpbind

import (
	"net"
	"net/netip"
)

// defaultListen opens Listen's sockets: through the net package.
func defaultListen(network string, laddr *net.UDPAddr) (hostConn, error) {
	return listenNet(network, laddr)
}

// defaultDatagrams is the path Listen opens: the portable one, on macOS
// and the BSDs, and on Linux and Windows in a binary built with the
// portableudp tag, which runs a whole program on the path other systems
// take.
func defaultDatagrams(conn hostConn, local netip.AddrPort, batchSize int) (datagrams, error) {
	return newPortable(conn, local, batchSize)
}
