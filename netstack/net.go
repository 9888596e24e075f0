// Package netstack puts a gVisor TCP/IP stack on top of the WireGuard
// engine, so a Go program can dial and listen inside the tunnel with no
// TUN device and no privileges: Open returns a *Net whose DialContext,
// Listen and ListenPacket feel like package net's.
package netstack

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/clock"
)

// Config is what Open needs: our identity and tunnel addresses, the peers,
// and where the UDP socket listens.
type Config struct {
	PrivateKey protocol.PrivateKey
	// Addresses are our addresses inside the tunnel.
	Addresses []netip.Prefix
	// MTU of the tunnel; 0 means protocol.DefaultMTU.
	MTU int
	// ListenPort is the host UDP port; 0 picks one.
	ListenPort uint16
	// ListenAddrs restricts the host UDP socket to these addresses (tests
	// use loopback); empty means every address.
	ListenAddrs []netip.Addr
	Peers       []protocol.PeerConfig
	Logger      *slog.Logger
	Clock       clock.Clock
}

const nicID = 1

// Net is a network inside the WireGuard tunnel.
type Net struct {
	stack  *stack.Stack
	engine *protocol.Engine
	link   *linkEndpoint
	bind   *protocol.UDPBind

	closeOnce sync.Once
}

// Open brings up the engine on a host UDP socket and a gVisor stack on top
// of it.
func Open(ctx context.Context, cfg Config) (*Net, error) {
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = protocol.DefaultMTU
	}
	bind, err := protocol.ListenUDP(protocol.UDPConfig{Port: cfg.ListenPort, Addrs: cfg.ListenAddrs})
	if err != nil {
		return nil, fmt.Errorf("netstack: %w", err)
	}
	n := &Net{bind: bind}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        true,
	})
	n.stack = s
	// SACK is off by default in gVisor; without it one lost segment in a
	// window costs a full round of retransmission.
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		s.Close()
		bind.Close()
		return nil, fmt.Errorf("netstack: enable SACK: %s", err)
	}

	n.link = newLinkEndpoint(mtu, nil)
	eng, err := protocol.New(protocol.Config{
		PrivateKey: cfg.PrivateKey, Bind: bind, Packets: n.link, MTU: mtu,
		Logger: cfg.Logger, Clock: cfg.Clock,
	})
	if err != nil {
		s.Close()
		bind.Close()
		return nil, fmt.Errorf("netstack: %w", err)
	}
	n.engine = eng
	n.link.engine = eng
	if err := s.CreateNIC(nicID, n.link); err != nil {
		n.Close()
		return nil, fmt.Errorf("netstack: create NIC: %s", err)
	}
	var has4, has6 bool
	for _, p := range cfg.Addresses {
		a := p.Addr().Unmap()
		proto := ipv4.ProtocolNumber
		if a.Is6() {
			proto = ipv6.ProtocolNumber
			has6 = true
		} else {
			has4 = true
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddressWithPrefix{
			Address: tcpip.AddrFromSlice(a.AsSlice()), PrefixLen: p.Bits()}}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			n.Close()
			return nil, fmt.Errorf("netstack: address %v: %s", p, err)
		}
	}
	// Every destination goes to the engine; its AllowedIPs decide which
	// peer, if any, carries it.
	if has4 {
		s.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	}
	if has6 {
		s.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	for _, pc := range cfg.Peers {
		if err := eng.SetPeer(pc); err != nil {
			n.Close()
			return nil, fmt.Errorf("netstack: %w", err)
		}
	}
	return n, nil
}

// Engine exposes the WireGuard engine, for peer changes and statistics.
func (n *Net) Engine() *protocol.Engine { return n.engine }

// LocalPort is the host UDP port the engine listens on.
func (n *Net) LocalPort() uint16 { return n.bind.Port() }

// Close stops the stack and the engine.
func (n *Net) Close() error {
	var err error
	n.closeOnce.Do(func() {
		n.stack.Close()
		n.stack.Wait()
		if n.engine != nil {
			err = n.engine.Close()
		} else {
			err = n.bind.Close()
		}
	})
	return err
}
