package peersite

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// Client is a wireguard-go peer in the client role, for testing our
// server mode: it sends what it dials in its AllowedIPs (by default
// everything) to us, so a test can reach the host's loopback services
// through our server.
//
// It is wireguard-go's device on a gVisor stack set up as wireguard-go's
// tun/netstack sets up its own, with one difference that tun/netstack
// offers no way to make: the stack accepts packets with a loopback source
// address. A server relaying to the host's 127.0.0.1 answers from
// 127.0.0.1, and tun/netstack, like any gVisor stack by default, drops
// that as a martian packet. A Site with AllowedIPs can still dial
// non-loopback destinations through us.
type Client struct {
	Device     *device.Device
	PrivateKey protocol.PrivateKey
	PublicKey  protocol.PublicKey
	// Port is the client's WireGuard UDP port on 127.0.0.1.
	Port uint16

	stack *stack.Stack
}

// StartClient runs a client at TheirV4 and TheirV6 whose one peer is ours,
// at opts.Endpoint (required: a client sends first), routing
// opts.AllowedIPs to us (0.0.0.0/0 and ::/0 when empty). It closes when
// t's cleanups run.
func StartClient(t testing.TB, ours protocol.PublicKey, opts Options) *Client {
	t.Helper()
	if opts.Endpoint == "" {
		t.Fatal("peersite: a client needs Options.Endpoint")
	}
	mtu := opts.MTU
	if mtu == 0 {
		mtu = protocol.DefaultMTU
	}
	allowed := opts.AllowedIPs
	if len(allowed) == 0 {
		allowed = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	}
	c := &Client{PrivateKey: opts.PrivateKey}
	var err error
	if c.PrivateKey.IsZero() {
		if c.PrivateKey, err = protocol.GeneratePrivateKey(); err != nil {
			t.Fatal(err)
		}
	}
	c.PublicKey = c.PrivateKey.PublicKey()
	dev, err := newClientTUN([]netip.Addr{TheirV4, TheirV6}, mtu)
	if err != nil {
		t.Fatal(err)
	}
	c.stack = dev.stack
	var bind *wgtest.LoopbackBind
	c.Device, bind = upDevice(t, dev, c.PrivateKey, ours, opts.Endpoint, allowed, opts.Port, nil)
	c.Port = bind.Port()
	t.Cleanup(c.Device.Close)
	return c
}

// Endpoint is the client's WireGuard UDP address, "127.0.0.1:port".
func (c *Client) Endpoint() string {
	return netip.AddrPortFrom(loopback, c.Port).String()
}

// DialContext connects through the tunnel. network is tcp or udp (with an
// optional 4 or 6), address an IP literal and port. A TCP connection the
// far end refuses fails with an error that matches syscall.ECONNREFUSED.
// A UDP connection's reads report an ICMP port unreachable as an error
// whose text says "connection was refused" (gonet flattens it to a
// string), but only on a Read that starts after the ICMP arrived: gonet's
// Read sleeps until the socket is readable, which an error does not make
// it, so poll with short read deadlines.
func (c *Client) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	a := ap.Addr().Unmap()
	fa := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(a.AsSlice()), Port: ap.Port()}
	proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
	if a.Is6() {
		proto = ipv6.ProtocolNumber
	}
	switch network {
	case "udp", "udp4", "udp6":
		return gonet.DialUDP(c.stack, nil, &fa, proto)
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	// As gonet.DialContextTCP, but keeping the refusal's cause.
	var wq waiter.Queue
	ep, terr := c.stack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New(terr.String())}
	}
	entry, ready := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventErr | waiter.EventHUp)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	terr = ep.Connect(fa)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(ap), Err: ctx.Err()}
		case <-ready:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		var cause error = errors.New(terr.String())
		switch terr.(type) {
		case *tcpip.ErrConnectionRefused:
			cause = os.NewSyscallError("connect", syscall.ECONNREFUSED)
		case *tcpip.ErrConnectionReset:
			cause = os.NewSyscallError("connect", syscall.ECONNRESET)
		}
		return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(ap), Err: cause}
	}
	return gonet.NewTCPConn(&wq, ep), nil
}

// upDevice brings up a wireguard-go device on tdev and a loopback socket,
// with one peer allowed to send from allowed.
func upDevice(t testing.TB, tdev tun.Device, key protocol.PrivateKey, peer protocol.PublicKey, endpoint string, allowed []netip.Prefix, port uint16, listen func(netip.AddrPort) (*net.UDPConn, error)) (*device.Device, *wgtest.LoopbackBind) {
	t.Helper()
	bind := &wgtest.LoopbackBind{Addr: loopback, Listen: listen}
	dev := device.NewDevice(tdev, bind, device.NewLogger(device.LogLevelSilent, ""))
	uapi := fmt.Sprintf("private_key=%x\nlisten_port=%d\npublic_key=%x\n", key[:], port, peer[:])
	if endpoint != "" {
		uapi += "endpoint=" + endpoint + "\n"
	}
	for _, p := range allowed {
		uapi += "allowed_ip=" + p.String() + "\n"
	}
	if err := dev.IpcSet(uapi); err != nil {
		dev.Close()
		t.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		t.Fatal(err)
	}
	return dev, bind
}

// clientTUN is a tun.Device backed by a gVisor stack, as in wireguard-go's
// tun/netstack, but reading outbound packets with ReadContext: Close
// cancels the read instead of racing a send on a closed channel.
type clientTUN struct {
	ep     *channel.Endpoint
	stack  *stack.Stack
	mtu    int
	events chan tun.Event
	ctx    context.Context
	cancel context.CancelFunc
}

func newClientTUN(addrs []netip.Addr, mtu int) (*clientTUN, error) {
	s := stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{
			ipv4.NewProtocolWithOptions(ipv4.Options{AllowExternalLoopbackTraffic: true}),
			ipv6.NewProtocolWithOptions(ipv6.Options{AllowExternalLoopbackTraffic: true}),
		},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        true,
	})
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return nil, fmt.Errorf("TCP SACK: %s", err)
	}
	d := &clientTUN{ep: channel.New(1024, uint32(mtu), ""), stack: s, mtu: mtu, events: make(chan tun.Event, 1)}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if err := s.CreateNIC(1, d.ep); err != nil {
		return nil, fmt.Errorf("CreateNIC: %s", err)
	}
	for _, a := range addrs {
		proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
		route := header.IPv4EmptySubnet
		if a.Is6() {
			proto, route = ipv6.ProtocolNumber, header.IPv6EmptySubnet
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
			return nil, fmt.Errorf("address %v: %s", a, err)
		}
		s.AddRoute(tcpip.Route{Destination: route, NIC: 1})
	}
	d.events <- tun.EventUp
	return d, nil
}

func (d *clientTUN) File() *os.File           { return nil }
func (d *clientTUN) MTU() (int, error)        { return d.mtu, nil }
func (d *clientTUN) Name() (string, error)    { return "peersite-client", nil }
func (d *clientTUN) Events() <-chan tun.Event { return d.events }
func (d *clientTUN) BatchSize() int           { return 1 }

// Read hands wireguard-go the stack's next outbound packet.
func (d *clientTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	pkt := d.ep.ReadContext(d.ctx)
	if pkt == nil {
		return 0, os.ErrClosed
	}
	defer pkt.DecRef()
	view := pkt.ToView()
	defer view.Release()
	n, err := view.Read(bufs[0][offset:])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	return 1, nil
}

// Write gives the stack the packets wireguard-go decrypted.
func (d *clientTUN) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		p := b[offset:]
		if len(p) == 0 {
			continue
		}
		pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		switch p[0] >> 4 {
		case 4:
			d.ep.InjectInbound(header.IPv4ProtocolNumber, pkb)
		case 6:
			d.ep.InjectInbound(header.IPv6ProtocolNumber, pkb)
		default:
			pkb.DecRef()
			return 0, syscall.EAFNOSUPPORT
		}
		pkb.DecRef()
	}
	return len(bufs), nil
}

func (d *clientTUN) Close() error {
	d.cancel()
	d.stack.Close()
	d.ep.Close()
	d.stack.Wait()
	close(d.events)
	return nil
}

// Ping sends one ICMP echo request (ICMPv6 for an IPv6 dst) with payload
// to dst through the tunnel and returns the payload of the echo reply, or ctx's error if
// none comes. The request's identifier is the ICMP endpoint's (gVisor
// writes it), its sequence number seq; a reply with another sequence
// number is skipped.
func (c *Client) Ping(ctx context.Context, dst netip.Addr, seq uint16, payload []byte) ([]byte, error) {
	dst = dst.Unmap()
	transport, network := icmp.ProtocolNumber4, tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
	echo, echoReply := byte(header.ICMPv4Echo), byte(header.ICMPv4EchoReply)
	if dst.Is6() {
		transport, network = icmp.ProtocolNumber6, ipv6.ProtocolNumber
		echo, echoReply = byte(header.ICMPv6EchoRequest), byte(header.ICMPv6EchoReply)
	}
	var wq waiter.Queue
	ep, terr := c.stack.NewEndpoint(transport, network, &wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	defer ep.Close()
	if terr := ep.Connect(tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(dst.AsSlice())}); terr != nil {
		return nil, errors.New(terr.String())
	}
	entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	// The echo header is laid out alike in ICMPv4 and ICMPv6; gVisor
	// fills in the identifier and checksum.
	req := make([]byte, header.ICMPv4MinimumSize+len(payload))
	req[0] = echo
	binary.BigEndian.PutUint16(req[6:8], seq)
	copy(req[header.ICMPv4MinimumSize:], payload)
	if _, terr := ep.Write(bytes.NewReader(req), tcpip.WriteOptions{}); terr != nil {
		return nil, errors.New(terr.String())
	}
	buf := make([]byte, 1<<16)
	for {
		w := tcpip.SliceWriter(buf)
		res, terr := ep.Read(&w, tcpip.ReadOptions{})
		if _, wouldBlock := terr.(*tcpip.ErrWouldBlock); wouldBlock {
			select {
			case <-readable:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if terr != nil {
			return nil, errors.New(terr.String())
		}
		r := buf[:res.Count]
		if len(r) >= header.ICMPv4MinimumSize && r[0] == echoReply && binary.BigEndian.Uint16(r[6:8]) == seq {
			return append([]byte(nil), r[header.ICMPv4MinimumSize:]...), nil
		}
	}
}
