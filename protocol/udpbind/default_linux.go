//go:build linux && !portableudp

package udpbind

import (
	"net"
	"net/netip"
)

// defaultListen opens Listen's sockets: through the net package.
func defaultListen(network string, laddr *net.UDPAddr) (hostConn, error) {
	return listenNet(network, laddr)
}

// defaultDatagrams is the path Listen opens: the batched one.
func defaultDatagrams(conn hostConn, local netip.AddrPort, batchSize int) (datagrams, error) {
	return newMmsg(conn, local, batchSize)
}
