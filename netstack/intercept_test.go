package netstack

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/wgbore/wgbore/netstack/inbound"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// TestFlowOfMappedTunnelDestinations: an address inside some peer's
// AllowedIPs, or one of our own, spelled as IPv4-mapped IPv6 in an IPv6
// packet, is described as the IPv4 address it carries would be: inside
// the tunnel, though not one of our addresses as addressed.
func TestFlowOfMappedTunnelDestinations(t *testing.T) {
	ours, _ := protocol.GeneratePrivateKey()
	client, _ := protocol.GeneratePrivateKey()
	other, _ := protocol.GeneratePrivateKey()
	n, err := Open(context.Background(), Config{
		PrivateKey:  ours,
		Addresses:   []netip.Prefix{netip.PrefixFrom(peersite.OurV4, 32), netip.PrefixFrom(peersite.OurV6, 128)},
		ListenAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Peers: []protocol.PeerConfig{
			{PublicKey: client.PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(peersite.TheirV6, 128)}},
			{PublicKey: other.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.7.0.0/16")}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for _, dst := range []netip.Addr{netip.MustParseAddr("::ffff:10.7.0.1"), netip.AddrFrom16(peersite.OurV4.As16())} {
		id := stack.TransportEndpointID{
			LocalAddress: tcpip.AddrFrom16(dst.As16()), LocalPort: 53,
			RemoteAddress: tcpip.AddrFrom16(peersite.TheirV6.As16()), RemotePort: 1000,
		}
		f, ok := n.flowOf("udp", id)
		if !ok || f.Peer != client.PublicKey() || f.ToUs || !f.InTunnel || f.Destination != netip.AddrPortFrom(dst, 53) {
			t.Errorf("a flow to %v: %+v, %v; want the client's, inside the tunnel, not to us", dst, f, ok)
		}
	}
	if f, ok := n.flowOf("tcp", stack.TransportEndpointID{LocalAddress: tcpip.AddrFrom4(peersite.OurV4.As4()), LocalPort: 80,
		RemoteAddress: tcpip.AddrFrom16(peersite.TheirV6.As16()), RemotePort: 1000}); !ok || !f.ToUs {
		t.Errorf("a flow to our own address: %+v, %v; want it to us", f, ok)
	}
}

// orderInterceptor records what the Net asks of it, and whether the
// stack still ran each time, for the order of Close.
type orderInterceptor struct {
	n     *Net
	calls []string
}

func (o *orderInterceptor) AdmitFlow(inbound.Flow) bool                      { return false }
func (o *orderInterceptor) HandleTCP(inbound.Flow, func() (net.Conn, error)) {}
func (o *orderInterceptor) HandleUDP(inbound.Flow, func() (net.Conn, error)) {}
func (o *orderInterceptor) HandleEcho(inbound.EchoRequest) bool              { return false }
func (o *orderInterceptor) Stop()                                            { o.calls = append(o.calls, "stop:"+o.state()) }
func (o *orderInterceptor) Close() error                                     { o.calls = append(o.calls, "close:"+o.state()); return nil }
func (o *orderInterceptor) state() string {
	// A closed stack has removed its NIC: it can no longer say whether
	// the NIC is enabled.
	if o.n.stack.CheckNIC(nicID) {
		return "up"
	}
	return "down"
}

// TestCloseStopsInterceptorFirst: the Net's Close stops the interceptor
// while the stack still runs, so that no flow is admitted, and no host
// dial goes on, while it shuts down; and closes it, which waits, only
// once the stack is gone.
func TestCloseStopsInterceptorFirst(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	n, err := Open(context.Background(), Config{
		PrivateKey:  key,
		Addresses:   []netip.Prefix{netip.PrefixFrom(peersite.OurV4, 32)},
		ListenAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
	})
	if err != nil {
		t.Fatal(err)
	}
	o := &orderInterceptor{n: n}
	if err := n.Intercept(o); err != nil {
		t.Fatal(err)
	}
	n.Close()
	if got := strings.Join(o.calls, " "); got != "stop:up close:down" {
		t.Fatalf("Close called the interceptor as %q, want stop while the stack runs, then close once it has gone", got)
	}
}
