//go:build windows && !portableudp

package udpbind

import (
	"net"
	"net/netip"
)

// defaultListen opens Listen's sockets: with Winsock directly.
func defaultListen(network string, laddr *net.UDPAddr) (hostConn, error) {
	return listenWinsock(network, laddr)
}

// defaultDatagrams is the path Listen opens: Winsock's.
func defaultDatagrams(conn hostConn, local netip.AddrPort, batchSize int) (datagrams, error) {
	return newWinsock(conn, local, batchSize)
}
