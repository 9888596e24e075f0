package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

func fullAddress(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	a := ap.Addr().Unmap()
	proto := ipv4.ProtocolNumber
	if a.Is6() {
		proto = ipv6.ProtocolNumber
	}
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(a.AsSlice()), Port: ap.Port()}, proto
}

func parseAddrPort(network, address string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("invalid port %q", port)
	}
	if host == "" {
		if network == "tcp6" || network == "udp6" {
			return netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(p)), nil
		}
		return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p)), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, errors.New("host names are not resolved yet: give an IP address")
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}

// DialContext connects inside the tunnel. network is tcp, tcp4, tcp6,
// udp, udp4 or udp6; address is an IP literal and port.
func (n *Net) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := parseAddrPort(network, address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	fa, proto := fullAddress(ap)
	switch network {
	case "tcp", "tcp4", "tcp6":
		c, err := gonet.DialContextTCP(ctx, n.stack, fa, proto)
		if err != nil {
			return nil, err
		}
		return c, nil
	case "udp", "udp4", "udp6":
		c, err := gonet.DialUDP(n.stack, nil, &fa, proto)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
}

// Listen accepts TCP connections inside the tunnel.
func (n *Net) Listen(network, address string) (net.Listener, error) {
	ap, err := parseAddrPort(network, address)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	fa, proto := fullAddress(ap)
	if ap.Addr().IsUnspecified() {
		fa.Addr = tcpip.Address{}
	}
	return gonet.ListenTCP(n.stack, fa, proto)
}
