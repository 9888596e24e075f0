package netstack

import (
	"net"
	"net/netip"
	"strconv"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// ListenPacket listens for UDP datagrams inside the tunnel, like
// net.ListenPacket. network is udp, udp4 or udp6; address is an IP literal
// of ours (or empty, for every address of the family) and a port, 0 for
// any free one.
func (n *Net) ListenPacket(network, address string) (net.PacketConn, error) {
	ap, err := parseAddrPort(network, address)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	c, err := n.listenUDP(network, ap)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ListenUDP is ListenPacket with the local address already parsed, like
// net.ListenUDP; a nil laddr means any address and port of the family.
func (n *Net) ListenUDP(network string, laddr *net.UDPAddr) (net.PacketConn, error) {
	var ap netip.AddrPort
	if laddr != nil {
		ap = laddr.AddrPort()
	}
	if !ap.Addr().IsValid() {
		if network == "udp6" {
			ap = netip.AddrPortFrom(netip.IPv6Unspecified(), ap.Port())
		} else {
			ap = netip.AddrPortFrom(netip.IPv4Unspecified(), ap.Port())
		}
	}
	c, err := n.listenUDP(network, ap)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (n *Net) listenUDP(network string, ap netip.AddrPort) (*gonet.UDPConn, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "listen", Net: network, Addr: net.UDPAddrFromAddrPort(ap), Err: err}
	}
	if err := checkFamily(network, "udp", ap.Addr()); err != nil {
		return nil, opErr(err)
	}
	fa, proto := fullAddress(ap)
	// An unspecified address binds to the port on every address of ours,
	// as it does for a kernel socket.
	if ap.Addr().IsUnspecified() {
		fa.Addr = tcpip.Address{}
	}
	c, err := gonet.DialUDP(n.stack, &fa, nil, proto)
	if err != nil {
		return nil, opErr(err)
	}
	return c, nil
}

// ListenTCP is Listen with the local address already parsed, like
// net.ListenTCP; a nil laddr means any address and port of the family.
func (n *Net) ListenTCP(network string, laddr *net.TCPAddr) (net.Listener, error) {
	var ap netip.AddrPort
	if laddr != nil {
		ap = laddr.AddrPort()
	}
	if err := checkFamily(network, "tcp", ap.Addr()); err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: err}
	}
	host := ""
	if ap.Addr().IsValid() {
		host = ap.Addr().String()
	} else if network == "tcp6" {
		host = "::"
	}
	return n.Listen(network, net.JoinHostPort(host, strconv.Itoa(int(ap.Port()))))
}

// checkFamily rejects a network that is not base, base4 or base6, and an
// address whose family the network excludes: a udp4 socket on an IPv6
// address is a caller's mistake, not something to guess around.
func checkFamily(network, base string, a netip.Addr) error {
	a = a.Unmap()
	switch network {
	case base:
		return nil
	case base + "4":
		if a.IsValid() && !a.Is4() {
			return &net.AddrError{Err: "not an IPv4 address", Addr: a.String()}
		}
		return nil
	case base + "6":
		if a.IsValid() && !a.Is6() {
			return &net.AddrError{Err: "not an IPv6 address", Addr: a.String()}
		}
		return nil
	}
	return net.UnknownNetworkError(network)
}
