package netstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/wgbore/wgbore/netstack/happyeyeballs"
	"github.com/wgbore/wgbore/protocol"
)

func fullAddress(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	a := ap.Addr().Unmap()
	proto := ipv4.ProtocolNumber
	if a.Is6() {
		proto = ipv6.ProtocolNumber
	}
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(a.AsSlice()), Port: ap.Port()}, proto
}

func parsePort(port string) (uint16, error) {
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("invalid port %q", port)
	}
	return uint16(p), nil
}

func parseAddrPort(network, address string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := parsePort(port)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if host == "" {
		if network == "tcp6" || network == "udp6" {
			return netip.AddrPortFrom(netip.IPv6Unspecified(), p), nil
		}
		return netip.AddrPortFrom(netip.IPv4Unspecified(), p), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address: listening needs one", host)
	}
	return netip.AddrPortFrom(a, p), nil
}

// lookupFamily is the resolver network ("ip", "ip4", "ip6") that a dial
// network restricts names to.
func lookupFamily(network string) (string, bool) {
	switch network {
	case "tcp", "udp":
		return "ip", true
	case "tcp4", "udp4":
		return "ip4", true
	case "tcp6", "udp6":
		return "ip6", true
	}
	return "", false
}

func inFamily(family string, a netip.Addr) bool {
	switch family {
	case "ip4":
		return a.Is4()
	case "ip6":
		return a.Is6()
	}
	return true
}

// DialContext connects inside the tunnel. network is tcp, tcp4, tcp6,
// udp, udp4 or udp6; address is "host:port", where host is an IP literal
// or a name resolved by LookupNetIP through the tunnel's DNS servers.
//
// With several addresses it races the IP versions, Happy Eyeballs style
// (package happyeyeballs): the version Config.Prefer names first (by
// default IPv6 when we have an IPv6 address), the other once the first
// has had happyeyeballs.FallbackDelay or has failed; the first
// connection wins and the other attempt is cancelled.
//
// Errors are *net.OpError. Their cause tells connection refused
// (syscall.ECONNREFUSED), no route (syscall.EHOSTUNREACH, also before any
// packet is sent when no peer's AllowedIPs hold the address), a timeout,
// and a timeout towards a peer we never completed a handshake with.
func (n *Net) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	family, ok := lookupFamily(network)
	if !ok {
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	port, err := parsePort(portStr)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	addrs, err := n.dialTargets(ctx, family, host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	// The preferred version leads (or the other, when the name has no
	// address of the preferred one).
	v6First := n.preferIPv6()
	aps := make([]netip.AddrPort, 0, len(addrs))
	for _, lead := range []bool{true, false} {
		for _, a := range addrs {
			if a.Unmap().Is6() == (v6First == lead) {
				aps = append(aps, netip.AddrPortFrom(a, port))
			}
		}
	}
	c, err := happyeyeballs.Dial(ctx, aps, func(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
		if ctx.Err() != nil {
			return nil, &net.OpError{Op: "dial", Net: network, Addr: netAddr(network, ap), Err: n.contextError(ctx, ap.Addr())}
		}
		return n.dialAddr(ctx, network, ap)
	})
	if errors.Is(err, happyeyeballs.ErrNoAddresses) {
		err = &net.OpError{Op: "dial", Net: network, Err: err}
	}
	return c, err
}

// dialTargets turns a dial's host into the addresses to try: an IP
// literal as is, an empty or unspecified host as our own address (as
// package net dials the local system), and a name through the tunnel's
// resolver.
func (n *Net) dialTargets(ctx context.Context, family, host string) ([]netip.Addr, error) {
	if host == "" {
		host = "0.0.0.0"
		if family == "ip6" {
			host = "::"
		}
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return n.LookupNetIP(ctx, family, host)
	}
	a = a.Unmap()
	if a.IsUnspecified() {
		proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
		if a.Is6() {
			proto = ipv6.ProtocolNumber
		}
		own, terr := n.stack.GetMainNICAddress(nicID, proto)
		if terr == nil && own.Address.Len() > 0 {
			a, _ = netip.AddrFromSlice(own.Address.AsSlice())
		}
	}
	if !inFamily(family, a) {
		return nil, &net.AddrError{Err: "no suitable address found", Addr: host}
	}
	return []netip.Addr{a}, nil
}

// preferIPv6 reports whether IPv6 goes first when a name has addresses
// of both versions: see Config.Prefer.
func (n *Net) preferIPv6() bool {
	switch n.prefer {
	case PreferIPv4:
		return false
	case PreferIPv6:
		return true
	}
	return n.hasAddress(ipv6.ProtocolNumber)
}

func (n *Net) hasAddress(proto tcpip.NetworkProtocolNumber) bool {
	own, err := n.stack.GetMainNICAddress(nicID, proto)
	return err == nil && own.Address.Len() > 0
}

// dialAddr connects to one address. It does what gonet's dial helpers do,
// but keeps gVisor's tcpip.Error until goError converts it, so the cause
// survives instead of becoming a string.
func (n *Net) dialAddr(ctx context.Context, network string, ap netip.AddrPort) (net.Conn, error) {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	fail := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: netAddr(network, ap), Err: err}
	}
	if err := ctx.Err(); err != nil {
		return nil, fail(n.contextError(ctx, ap.Addr()))
	}
	fa, proto := fullAddress(ap)
	// Without a peer to carry it, a packet is dropped by the engine and
	// a TCP dial would wait out its whole timeout to say so.
	if !n.isOwnAddress(fa.Addr) {
		if _, ok := n.PeerFor(ap.Addr()); !ok {
			return nil, fail(&noRouteError{addr: ap.Addr()})
		}
	}
	var transport tcpip.TransportProtocolNumber
	switch network {
	case "tcp", "tcp4", "tcp6":
		transport = tcp.ProtocolNumber
	case "udp", "udp4", "udp6":
		transport = udp.ProtocolNumber
	default:
		return nil, fail(net.UnknownNetworkError(network))
	}
	var wq waiter.Queue
	ep, terr := n.stack.NewEndpoint(transport, proto, &wq)
	if terr != nil {
		return nil, fail(goError("socket", terr))
	}
	if transport == udp.ProtocolNumber {
		if terr := ep.Connect(fa); terr != nil {
			ep.Close()
			return nil, fail(goError("connect", terr))
		}
		return gonet.NewUDPConn(&wq, ep), nil
	}
	// Connection refused and reset raise EventErr/EventHUp, not
	// necessarily EventOut; listen for all of them.
	entry, ready := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventErr | waiter.EventHUp)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	terr = ep.Connect(fa)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, fail(n.contextError(ctx, ap.Addr()))
		case <-ready:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, fail(goError("connect", terr))
	}
	return newTCPConn(&wq, ep, n), nil
}

// isOwnAddress reports whether a is one of our tunnel addresses, which
// the stack answers itself. It reads the address list rather than asking
// gVisor's CheckLocalAddress, which for IPv4 (and on a spoofing NIC) says
// yes to any address.
func (n *Net) isOwnAddress(a tcpip.Address) bool {
	for _, pa := range n.stack.AllAddresses()[nicID] {
		if pa.AddressWithPrefix.Address == a {
			return true
		}
	}
	return false
}

func netAddr(network string, ap netip.AddrPort) net.Addr {
	switch network {
	case "udp", "udp4", "udp6":
		return net.UDPAddrFromAddrPort(ap)
	}
	return net.TCPAddrFromAddrPort(ap)
}

// PeerFor is the peer whose AllowedIPs route a to it: the engine's own
// cryptokey-routing lookup, cheap enough to make per packet. A packet that
// arrived through the tunnel came from the peer that routes its source
// address, so a server on the Net's sockets learns from it who asked.
func (n *Net) PeerFor(a netip.Addr) (protocol.PublicKey, bool) {
	return n.engine.PeerFor(a.Unmap())
}

// contextError explains why a dial's context ended. A deadline towards a
// peer we never completed a handshake with is almost never the far host's
// fault: the peer is unreachable or one side has the wrong key, and
// saying so saves a user from debugging the application.
func (n *Net) contextError(ctx context.Context, dst netip.Addr) error {
	err := ctx.Err()
	if !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if k, ok := n.PeerFor(dst); ok {
		if p, ok := n.engine.Peer(k); ok && p.LastHandshake.IsZero() {
			return &timeoutError{msg: fmt.Sprintf("no WireGuard handshake with peer %s (unreachable or wrong key)", p.PublicKey), cause: err}
		}
	}
	return &timeoutError{msg: "i/o timeout", cause: err}
}

// timeoutError satisfies net.Error with Timeout true, so net.OpError's
// Timeout reports it, and still matches context.DeadlineExceeded.
type timeoutError struct {
	msg   string
	cause error
}

func (e *timeoutError) Error() string   { return e.msg }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }
func (e *timeoutError) Unwrap() error   { return e.cause }

// noRouteError is a destination outside every peer's AllowedIPs. It
// matches syscall.EHOSTUNREACH, what a kernel says for the same.
type noRouteError struct{ addr netip.Addr }

func (e *noRouteError) Error() string {
	return fmt.Sprintf("no route to %s: not in any peer's AllowedIPs", e.addr)
}
func (e *noRouteError) Unwrap() error { return syscall.EHOSTUNREACH }

// goError converts a gVisor tcpip.Error, which is not a Go error, into
// the *os.SyscallError package net would give for the same failure, so
// callers can test it with errors.Is(err, syscall.ECONNREFUSED) and
// friends. It is the one place tcpip.Error crosses into Go errors.
func goError(op string, e tcpip.Error) error {
	var errno syscall.Errno
	switch e.(type) {
	case *tcpip.ErrConnectionRefused:
		errno = syscall.ECONNREFUSED
	case *tcpip.ErrHostUnreachable, *tcpip.ErrHostDown:
		errno = syscall.EHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable, *tcpip.ErrNoNet:
		errno = syscall.ENETUNREACH
	case *tcpip.ErrConnectionReset:
		errno = syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		errno = syscall.ECONNABORTED
	case *tcpip.ErrTimeout:
		errno = syscall.ETIMEDOUT
	case *tcpip.ErrPortInUse, *tcpip.ErrAlreadyBound:
		errno = syscall.EADDRINUSE
	case *tcpip.ErrBadLocalAddress, *tcpip.ErrNoPortAvailable:
		errno = syscall.EADDRNOTAVAIL
	case *tcpip.ErrAddressFamilyNotSupported:
		errno = syscall.EAFNOSUPPORT
	case *tcpip.ErrAlreadyConnecting:
		errno = syscall.EALREADY
	case *tcpip.ErrAlreadyConnected:
		errno = syscall.EISCONN
	case *tcpip.ErrNotConnected:
		errno = syscall.ENOTCONN
	case *tcpip.ErrNoBufferSpace:
		errno = syscall.ENOBUFS
	case *tcpip.ErrMessageTooLong:
		errno = syscall.EMSGSIZE
	case *tcpip.ErrNotPermitted:
		errno = syscall.EPERM
	case *tcpip.ErrInvalidEndpointState, *tcpip.ErrInvalidOptionValue:
		errno = syscall.EINVAL
	case *tcpip.ErrWouldBlock:
		errno = syscall.EWOULDBLOCK
	default:
		return &stackError{op: op, err: e}
	}
	return os.NewSyscallError(op, errno)
}

// stackError is a tcpip.Error with no errno counterpart; it keeps the
// gVisor error rather than flattening it to a string.
type stackError struct {
	op  string
	err tcpip.Error
}

func (e *stackError) Error() string { return e.op + ": " + e.err.String() }

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

// TCPConn is a TCP connection inside the tunnel, as DialContext returns
// it: gonet's, plus a way to wait for data without a goroutine.
//
// A proxy relaying thousands of idle connections otherwise parks one
// goroutine per connection in Read, with its stack (grown by the read
// path) and its buffer. With NotifyReadable and TryRead a relay starts a
// goroutine only when there is something to move.
type TCPConn struct {
	conn *gonet.TCPConn
	notifier
	fins *finPacer
	// share counts this connection's writes in, when the Net shares its
	// send buffer; nil otherwise.
	share *sendShare
	// writeClosed is set by CloseWrite, whose FIN may wait for the
	// pacer: no write may go after it meanwhile.
	writeClosed atomic.Bool
}

func newTCPConn(wq *waiter.Queue, ep tcpip.Endpoint, n *Net) *TCPConn {
	return &TCPConn{conn: gonet.NewTCPConn(wq, ep), notifier: notifier{wq: wq, ep: ep}, fins: n.fins, share: n.share}
}

// errClosedForSend is gonet's error for a write after CloseWrite.
var errClosedForSend = errors.New((&tcpip.ErrClosedForSend{}).String())

// The methods of net.Conn and *net.TCPConn's half-closes are gonet's
// (CloseWrite paced, below), named here rather than promoted, so that no
// gVisor type shows through the connection's API.

// Read reads data from the connection.
func (c *TCPConn) Read(b []byte) (int, error) { return c.conn.Read(b) }

// Write writes data to the connection.
func (c *TCPConn) Write(b []byte) (int, error) {
	if c.writeClosed.Load() {
		return 0, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errClosedForSend}
	}
	if c.share != nil {
		c.share.enter(c.ep)
		defer c.share.leave()
	}
	return c.conn.Write(b)
}

// Close closes the connection. It also wakes NotifyReadable's callback:
// gVisor notifies only once the connection has fully closed, and a relay
// waiting for bytes from it must learn at once that none will come.
func (c *TCPConn) Close() error {
	err := c.conn.Close()
	c.wq.Notify(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	return err
}

// CloseRead shuts down the reading side of the connection.
func (c *TCPConn) CloseRead() error { return c.conn.CloseRead() }

// CloseWrite shuts down the writing side of the connection: the peer
// reads the end of the stream. When thousands of connections half-close
// at once, the FIN may wait until some of those before it are
// acknowledged; later writes fail at once all the same (a write already
// blocked may still complete first), and a half-close that waits
// reports no error of its own.
func (c *TCPConn) CloseWrite() error {
	if c.fins == nil || !paceable(c.ep) {
		return c.conn.CloseWrite()
	}
	if c.writeClosed.Swap(true) {
		return nil
	}
	var to netip.Addr
	if remote, err := c.ep.GetRemoteAddress(); err == nil {
		to = addrFrom(remote.Addr).Unmap()
	}
	if c.fins.admit(c.ep, to, func() { c.conn.CloseWrite() }) {
		return c.conn.CloseWrite()
	}
	return nil
}

// LocalAddr is our end's address inside the tunnel.
func (c *TCPConn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// RemoteAddr is the peer's address inside the tunnel.
func (c *TCPConn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// SetDeadline sets the read and write deadlines, as net.Conn's does.
func (c *TCPConn) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// SetReadDeadline sets the read deadline, as net.Conn's does.
func (c *TCPConn) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline, as net.Conn's does.
func (c *TCPConn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

// notifier is what TCPConn adds to gonet's connection: a way to wait
// for data without a goroutine parked in Read.
type notifier struct {
	wq *waiter.Queue
	ep tcpip.Endpoint
}

// NotifyReadable calls f whenever data, the end of the stream or an
// error may have become ready to read, until stop is called. f runs on
// the stack's own goroutine, with the connection's wait queue locked: it
// must return at once, and not call NotifyReadable's stop.
func (c notifier) NotifyReadable(f func()) (stop func()) {
	e := waiter.NewFunctionEntry(waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr, func(waiter.EventMask) { f() })
	c.wq.EventRegister(&e)
	return func() { c.wq.EventUnregister(&e) }
}

// Readable reports whether a TryRead would return something other than
// wouldBlock.
func (c notifier) Readable() bool {
	return c.ep.Readiness(waiter.ReadableEvents) != 0
}

// tryRead reads into b what has arrived, without waiting: with nothing
// to read it returns wouldBlock, at the end of the stream io.EOF, and
// any other error as an *net.OpError of network between conn's ends
// (read only then: each costs an allocation and the endpoint's lock).
func (c notifier) tryRead(b []byte, network string, conn net.Conn) (n int, wouldBlock bool, err error) {
	w := tcpip.SliceWriter(b)
	res, terr := c.ep.Read(&w, tcpip.ReadOptions{})
	switch terr.(type) {
	case nil:
		return res.Count, false, nil
	case *tcpip.ErrWouldBlock:
		return 0, true, nil
	case *tcpip.ErrClosedForReceive:
		return 0, false, io.EOF
	}
	return 0, false, &net.OpError{Op: "read", Net: network, Source: conn.LocalAddr(), Addr: conn.RemoteAddr(), Err: goError("read", terr)}
}

// TryRead reads into b what has arrived, without waiting. With nothing
// to read it returns wouldBlock; at the end of the stream, io.EOF. It
// ignores the read deadline, and must not run alongside Read.
func (c *TCPConn) TryRead(b []byte) (n int, wouldBlock bool, err error) {
	n, wouldBlock, err = c.tryRead(b, "tcp", c)
	if n > 0 {
		// As gonet's Read does: receive-buffer moderation grows the
		// window from what the application reads. Without it the
		// window stays at its default, which caps a download through
		// the proxies.
		c.ep.ModerateRecvBuf(n)
	}
	return n, wouldBlock, err
}

// TCPInfo is a TCP connection's sender state, for diagnosing a slow
// flow: what the stack estimates of the path, and how much it may send.
type TCPInfo struct {
	// State is the connection's TCP state, such as ESTABLISHED.
	State string
	// RTT is the smoothed round-trip time and RTTVar its variation.
	RTT, RTTVar time.Duration
	// RTO is the retransmission timeout.
	RTO time.Duration
	// CongestionWindow is the congestion window and SlowStartThreshold
	// the threshold between slow start and congestion avoidance, both in
	// segments.
	CongestionWindow, SlowStartThreshold uint32
	// Recovery is what the sender is recovering from: "" when nothing
	// was lost, "timeout" after a retransmission timeout, "sack" or
	// "fast" while it retransmits what acknowledgements showed missing,
	// "disorder" when they showed reordering or loss not yet judged.
	Recovery string
	// ReorderSeen reports whether the connection has seen segments
	// arrive out of order.
	ReorderSeen bool
}

// TCPInfo reports the connection's sender state as it is now.
func (c *TCPConn) TCPInfo() TCPInfo {
	var info tcpip.TCPInfoOption
	c.ep.GetSockOpt(&info)
	return TCPInfo{
		State:              tcp.EndpointState(info.State).String(),
		RTT:                info.RTT,
		RTTVar:             info.RTTVar,
		RTO:                info.RTO,
		CongestionWindow:   info.SndCwnd,
		SlowStartThreshold: info.SndSsthresh,
		Recovery:           recoveryName(info.CcState),
		ReorderSeen:        info.ReorderSeen,
	}
}

func recoveryName(s tcpip.CongestionControlState) string {
	switch s {
	case tcpip.Open:
		return ""
	case tcpip.RTORecovery:
		return "timeout"
	case tcpip.FastRecovery:
		return "fast"
	case tcpip.SACKRecovery:
		return "sack"
	case tcpip.Disorder:
		return "disorder"
	}
	return fmt.Sprintf("state %d", s)
}
