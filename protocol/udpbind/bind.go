// Package udpbind is the host side of a WireGuard engine: the UDP sockets
// its encrypted datagrams travel on, behind the engine's Bind interface.
//
// Each address family gets a socket of its own, on one port. Three paths
// move the datagrams, none allocating per datagram:
//
//   - On Linux, recvmmsg and sendmmsg move a batch per system call, with
//     UDP GSO and GRO where the kernel has them, into memory allocated
//     once per socket.
//   - On Windows, Winsock calls of the package's own move one datagram
//     per call. net.ListenUDP would do, but it treats an ioctl that Wine
//     lacks as fatal, and CI runs the Windows build under Wine.
//   - Everywhere else (macOS, the BSDs), the net package moves one
//     datagram per call, which it can do on every system Go runs on.
//     [ListenPortable] opens this path on Linux too, so that it is tested
//     and measured where CI runs; a binary built with the portableudp tag
//     uses it for [Listen] as well.
//
// All drop a datagram that did not fit its buffer where the system says
// so (a flag on Unix, an error on Windows): cut short, it would look like
// a malformed message from a peer.
package udpbind

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

const (
	// defaultUDPBatchSize matches wireguard-go: large enough that a busy
	// tunnel spends few system calls per packet, small enough that the
	// per-socket buffers stay cheap.
	defaultUDPBatchSize = 64

	// udpSocketBuffer is asked for on both directions because the kernel
	// default (around 200 KiB) overflows during bursts at multi-gigabit
	// rates, and an overflowing UDP queue drops silently. The kernel caps
	// it at net.core.{r,w}mem_max, which is why errors are ignored.
	udpSocketBuffer = 7 << 20

	// udpPortAttempts bounds the retries when the port the IPv4 socket
	// picked turns out to be taken for IPv6; another program winning that
	// race several times in a row means something is wrong.
	udpPortAttempts = 10
)

// Config says where the host sockets listen.
type Config struct {
	// Port is the UDP port for both families; 0 picks a free port (the
	// IPv6 socket then reuses the port the IPv4 one got, retrying a few
	// times if it is taken).
	Port uint16
	// Addrs, when non-empty, restricts listening to these local addresses
	// (e.g. 127.0.0.1 and ::1 in tests); empty means the wildcard address
	// of each family.
	Addrs []netip.Addr
	// BatchSize is how many datagrams one receive or send call moves at
	// most (recvmmsg and sendmmsg on Linux; the portable path moves one
	// per system call whatever it is); 0 means 64.
	BatchSize int
}

// Bind is the protocol.Bind the engine uses on a real host. It keeps one
// socket per address family, rather than a single dual-stack socket, so
// that an IPv4 peer's address never arrives as ::ffff:a.b.c.d and a host
// without IPv6 still works.
//
// Send may be called from any number of goroutines. Each receive function
// is meant for one goroutine; concurrent calls to the same one take turns.
type Bind struct {
	socks     []*socket
	port      uint16
	batchSize int

	closeOnce sync.Once
	closeErr  error
}

// socket is one host socket and the path its datagrams take.
type socket struct {
	conn  hostConn
	local netip.AddrPort
	datagrams
}

// hostConn is a host socket as the Bind holds it: a *net.UDPConn, or on
// Windows a Winsock socket of the Bind's own.
type hostConn interface {
	Close() error
	LocalAddr() net.Addr
	SetReadBuffer(bytes int) error
	SetWriteBuffer(bytes int) error
	SetReadDeadline(t time.Time) error
}

// datagrams moves a socket's datagrams. Its hot paths hand the system
// memory that was allocated once, when the socket was opened.
type datagrams interface {
	// receive fills bufs as a protocol.ReceiveFunc does.
	receive(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error)
	// send writes each of bufs as one datagram to ep.
	send(bufs [][]byte, ep netip.AddrPort) error
	// release frees what the path holds outside the socket, once the
	// socket is closed.
	release()
	// path is the path's name, as Bind.Path reports it.
	path() string
}

// newDatagrams sets up a path on a freshly opened socket.
type newDatagrams func(conn hostConn, local netip.AddrPort, batchSize int) (datagrams, error)

// listenFunc opens one host socket, as net.ListenUDP does; tests replace
// it to make a family disappear or a port collide on demand.
type listenFunc func(network string, laddr *net.UDPAddr) (hostConn, error)

// listenNet opens a socket through the net package.
func listenNet(network string, laddr *net.UDPAddr) (hostConn, error) {
	c, err := net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return c, nil
}

// udpConn is the *net.UDPConn the paths other than Winsock's need.
func udpConn(c hostConn) (*net.UDPConn, error) {
	uc, ok := c.(*net.UDPConn)
	if !ok {
		return nil, fmt.Errorf("udp bind: a %T is not a net.UDPConn", c)
	}
	return uc, nil
}

// Listen opens the host sockets described by cfg, with the fastest path
// the system has.
//
// Without cfg.Addrs it opens an IPv4 and an IPv6 wildcard socket and
// tolerates one family being absent from the host. Explicit addresses are
// taken as a requirement: if any of them cannot be bound, Listen fails.
func Listen(cfg Config) (*Bind, error) {
	return listen(cfg, defaultListen, defaultDatagrams)
}

// ListenPortable is Listen with the path that works on every system: one
// datagram per call through the net package. On macOS and the BSDs it is
// what Listen opens anyway.
func ListenPortable(cfg Config) (*Bind, error) {
	return listen(cfg, listenNet, newPortable)
}

func listen(cfg Config, open listenFunc, path newDatagrams) (*Bind, error) {
	batchSize := cfg.BatchSize
	if batchSize < 0 {
		return nil, fmt.Errorf("udp bind: batch size %d is negative", batchSize)
	}
	if batchSize == 0 {
		batchSize = defaultUDPBatchSize
	}

	wildcard := len(cfg.Addrs) == 0
	addrs := []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}
	if !wildcard {
		addrs = make([]netip.Addr, len(cfg.Addrs))
		for i, a := range cfg.Addrs {
			if !a.IsValid() {
				return nil, fmt.Errorf("udp bind: address %d of %d is the zero netip.Addr", i+1, len(cfg.Addrs))
			}
			// A 4in6 address is an IPv4 address; binding it on the v6-only
			// socket would never see a packet.
			addrs[i] = a.Unmap()
		}
	}

	for attempt := 1; ; attempt++ {
		conns, retry, err := listenAll(addrs, cfg.Port, wildcard, open)
		if err == nil {
			b, err := newBind(conns, batchSize, path)
			if err != nil {
				closeUDPConns(conns)
				return nil, fmt.Errorf("udp bind: %w", err)
			}
			return b, nil
		}
		if !retry || attempt == udpPortAttempts {
			return nil, err
		}
	}
}

// listenAll binds every address on one port. retry reports that the failure
// came from a port this call picked itself, so a fresh attempt may succeed.
func listenAll(addrs []netip.Addr, port uint16, wildcard bool, listen listenFunc) (conns []hostConn, retry bool, err error) {
	picked := port == 0
	var missing []error
	for _, a := range addrs {
		network := "udp6"
		if a.Is4() {
			network = "udp4"
		}
		c, err := listen(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, port)))
		if err != nil {
			if wildcard && noFamily(err) {
				missing = append(missing, err)
				continue
			}
			closeUDPConns(conns)
			retry := picked && len(conns) > 0 && addrInUse(err)
			return nil, retry, fmt.Errorf("udp bind: %w", err)
		}
		if port == 0 {
			port = c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
		}
		conns = append(conns, c)
	}
	if len(conns) == 0 {
		// Only the wildcard pair gets here, each address having failed with
		// EAFNOSUPPORT. The errors are spelled out by hand because
		// errors.Join would put a newline between them.
		return nil, false, fmt.Errorf("udp bind: neither IPv4 nor IPv6 is available: %w; %w", missing[0], missing[1])
	}
	return conns, false, nil
}

func closeUDPConns(conns []hostConn) {
	for _, c := range conns {
		c.Close()
	}
}

func newBind(conns []hostConn, batchSize int, path newDatagrams) (*Bind, error) {
	b := &Bind{batchSize: batchSize}
	for _, c := range conns {
		_ = c.SetReadBuffer(udpSocketBuffer)
		_ = c.SetWriteBuffer(udpSocketBuffer)

		ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
		s := &socket{
			conn:  c,
			local: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()),
		}
		d, err := path(c, s.local, batchSize)
		if err != nil {
			for _, s := range b.socks {
				s.release()
			}
			return nil, err
		}
		s.datagrams = d
		b.port = s.local.Port()
		b.socks = append(b.socks, s)
	}
	return b, nil
}

// Port is the one port all sockets share; with UDPConfig.Port 0 it is the
// only way to learn which port peers must be told.
func (b *Bind) Port() uint16 { return b.port }

// LocalAddrs reports what each socket is bound to, in the order of
// Receivers, so that logs and tests can tell the sockets apart.
func (b *Bind) LocalAddrs() []netip.AddrPort {
	aps := make([]netip.AddrPort, len(b.socks))
	for i, s := range b.socks {
		aps[i] = s.local
	}
	return aps
}

// Path names how the sockets move datagrams, for logs: "batched"
// (recvmmsg and sendmmsg, Linux), "winsock" (Windows) or "portable" (the
// net package, one datagram per call).
func (b *Bind) Path() string {
	if len(b.socks) == 0 {
		return ""
	}
	return b.socks[0].datagrams.path()
}

// BatchSize implements protocol.Bind.
func (b *Bind) BatchSize() int { return b.batchSize }

// Receivers implements protocol.Bind: one function per socket, because a
// blocking receive can only wait on one of them.
func (b *Bind) Receivers() []func(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error) {
	fns := make([]func(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error), len(b.socks))
	for i, s := range b.socks {
		fns[i] = s.receive
	}
	return fns
}

// Close implements protocol.Bind. Only the first call closes the sockets; later
// calls return nil so that shutdown paths may call it freely.
func (b *Bind) Close() error {
	b.closeOnce.Do(func() {
		var errs []error
		for _, s := range b.socks {
			if err := s.conn.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		// After the close, which ends any receive blocked on a socket.
		for _, s := range b.socks {
			s.release()
		}
		if len(errs) > 0 {
			b.closeErr = fmt.Errorf("udp close: %w", errors.Join(errs...))
		}
	})
	return b.closeErr
}

// Send implements protocol.Bind. The socket is chosen by ep's family because a v6-only
// socket cannot reach an IPv4 peer and the other way round.
func (b *Bind) Send(bufs [][]byte, ep netip.AddrPort) error {
	if len(bufs) == 0 {
		return nil
	}
	addr := ep.Addr().Unmap()
	if !addr.IsValid() {
		return errors.New("udp send: endpoint has no address")
	}
	ep = netip.AddrPortFrom(addr, ep.Port())
	s := b.socketFor(addr)
	if s == nil {
		family := "IPv6"
		if addr.Is4() {
			family = "IPv4"
		}
		return fmt.Errorf("udp send to %v: no %s socket", ep, family)
	}
	if err := s.send(bufs, ep); err != nil {
		return fmt.Errorf("udp send to %v: %w", ep, err)
	}
	return nil
}

// socketFor picks among several sockets of one family (explicit Addrs) by
// whether they are loopback, since a socket bound to 127.0.0.1 cannot send
// off the host and one bound to a public address cannot reach 127.0.0.1.
func (b *Bind) socketFor(addr netip.Addr) *socket {
	var first *socket
	for _, s := range b.socks {
		local := s.local.Addr()
		if local.Is4() != addr.Is4() {
			continue
		}
		if first == nil {
			first = s
		}
		if local.IsLoopback() == addr.IsLoopback() {
			return s
		}
	}
	return first
}

// compact moves datagram i, n bytes long, down to slot kept once earlier
// datagrams of the batch were dropped, because the slots a receive returns
// must be contiguous. Buffers of unequal length could leave it without room
// in the lower slot; it is then dropped as if it had been truncated, which
// the false result says.
func compact(bufs [][]byte, kept, i, n int) bool {
	if kept == i {
		return true
	}
	if len(bufs[kept]) < n {
		return false
	}
	copy(bufs[kept], bufs[i][:n])
	return true
}
