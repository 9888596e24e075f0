// Package proxy holds wgbore's front ends: a SOCKS5 and an HTTP proxy
// and the port forwarders, all of which reach the tunnel's network. They
// know nothing of WireGuard or gVisor: they see only Network and Tunnel,
// which netstack.Net satisfies and which tests satisfy with plain loopback
// sockets.
package proxy

import (
	"context"
	"net"
	"net/netip"
)

// Network is what a proxy needs from the network it serves: dialing, and
// name resolution done on that network's side (for the tunnel, by its
// DNS servers, never by the host).
type Network interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Tunnel is a Network that can also be listened on and that carries
// unconnected datagrams: what the forwarders serving the tunnel's side
// (TCPServerTunnel, UDPServerTunnel) and SOCKS5 UDP ASSOCIATE need. The
// address forms are those of net.Listen and net.ListenPacket.
type Tunnel interface {
	Network
	Listen(network, address string) (net.Listener, error)
	ListenPacket(network, address string) (net.PacketConn, error)
}
