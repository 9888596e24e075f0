package netstack

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// pingPayloadLen is the echo data after the 8-byte ICMP header. It carries
// a random cookie, so a late reply to an earlier Ping that reused the same
// identifier and sequence number is not mistaken for this one's.
const pingPayloadLen = 16

// Ping sends one ICMP echo request to addr through the tunnel and returns
// the round-trip time of its reply.
//
// It uses gVisor's unprivileged "ping socket" (an ICMP endpoint that owns
// one echo identifier), so any number of Pings may run at once. Like a
// net.Dialer with no timeout, Ping waits as long as ctx allows: give ctx a
// deadline. An address that is neither ours nor in any peer's AllowedIPs
// fails at once with EHOSTUNREACH, as the kernel WireGuard device answers
// a packet with no peer to carry it, instead of waiting out the deadline.
func (n *Net) Ping(ctx context.Context, addr netip.Addr) (time.Duration, error) {
	addr = addr.Unmap()
	opErr := func(err error) error {
		network := "ip4:icmp"
		if addr.Is6() {
			network = "ip6:ipv6-icmp"
		}
		var dst net.Addr
		if addr.IsValid() {
			dst = &net.IPAddr{IP: addr.AsSlice(), Zone: addr.Zone()}
		}
		return &net.OpError{Op: "ping", Net: network, Addr: dst, Err: err}
	}
	if !addr.IsValid() {
		return 0, opErr(errors.New("invalid address"))
	}
	if ctx.Err() != nil {
		return 0, opErr(n.contextError(ctx, addr))
	}

	transport, network := icmp.ProtocolNumber4, ipv4.ProtocolNumber
	echoRequest, echoReply := byte(header.ICMPv4Echo), byte(header.ICMPv4EchoReply)
	if addr.Is6() {
		transport, network = icmp.ProtocolNumber6, ipv6.ProtocolNumber
		echoRequest, echoReply = byte(header.ICMPv6EchoRequest), byte(header.ICMPv6EchoReply)
	}
	remote := tcpip.AddrFromSlice(addr.AsSlice())
	if _, ok := n.PeerFor(addr); !ok && !n.isOwnAddress(remote) {
		return 0, opErr(&noRouteError{addr: addr})
	}

	var wq waiter.Queue
	ep, terr := n.stack.NewEndpoint(transport, network, &wq)
	if terr != nil {
		return 0, opErr(goError("ping", terr))
	}
	defer ep.Close()
	if terr := ep.Connect(tcpip.FullAddress{NIC: nicID, Addr: remote}); terr != nil {
		return 0, opErr(goError("ping", terr))
	}
	// Register before sending: a reply from a local address can arrive
	// before Write returns, and its notification would be lost.
	entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)

	// The echo header is 8 bytes in both ICMPv4 and ICMPv6. Its identifier
	// is the endpoint's own (gVisor writes it and routes replies by it);
	// the sequence number and payload are ours to match.
	req := make([]byte, header.ICMPv4MinimumSize+pingPayloadLen)
	req[0] = echoRequest
	rand.Read(req[header.ICMPv4MinimumSize:])
	seq := binary.BigEndian.Uint16(req[header.ICMPv4MinimumSize:])
	binary.BigEndian.PutUint16(req[6:8], seq)
	cookie := req[header.ICMPv4MinimumSize:]

	start := time.Now()
	if _, terr := ep.Write(bytes.NewReader(req), tcpip.WriteOptions{}); terr != nil {
		return 0, opErr(goError("ping", terr))
	}
	buf := make([]byte, 1500)
	for {
		w := tcpip.SliceWriter(buf)
		res, terr := ep.Read(&w, tcpip.ReadOptions{})
		if _, wouldBlock := terr.(*tcpip.ErrWouldBlock); wouldBlock {
			select {
			case <-readable:
				continue
			case <-ctx.Done():
				return 0, opErr(n.contextError(ctx, addr))
			}
		}
		if terr != nil {
			return 0, opErr(goError("ping", terr))
		}
		rtt := time.Since(start)
		reply := buf[:res.Count]
		if len(reply) == len(req) && reply[0] == echoReply &&
			binary.BigEndian.Uint16(reply[6:8]) == seq &&
			bytes.Equal(reply[header.ICMPv4MinimumSize:], cookie) {
			return rtt, nil
		}
	}
}
