//go:build linux && !portableudp

package udpbind

import (
	"net"
	"net/netip"
)

// defaultDatagrams is the path Listen opens: the batched one.
func defaultDatagrams(conn *net.UDPConn, local netip.AddrPort, batchSize int) (datagrams, error) {
	return newMmsg(conn, local, batchSize)
}
