// Package proxy holds wgbore's front ends: a SOCKS5 and an HTTP proxy
// that reach the tunnel's network. They know nothing of WireGuard or
// gVisor: they see only Network, which netstack.Net satisfies and which
// tests satisfy with plain loopback sockets.
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
