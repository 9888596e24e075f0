package protocol

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
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

// UDPConfig says where the host sockets listen.
type UDPConfig struct {
	// Port is the UDP port for both families; 0 picks a free port (the
	// IPv6 socket then reuses the port the IPv4 one got, retrying a few
	// times if it is taken).
	Port uint16
	// Addrs, when non-empty, restricts listening to these local addresses
	// (e.g. 127.0.0.1 and ::1 in tests); empty means the wildcard address
	// of each family.
	Addrs []netip.Addr
	// BatchSize is how many datagrams one recvmmsg/sendmmsg moves; 0
	// means 64.
	BatchSize int
}

// UDPBind is the Bind the engine uses on a real host. It keeps one socket
// per address family, rather than a single dual-stack socket, so that an
// IPv4 peer's address never arrives as ::ffff:a.b.c.d and a host without
// IPv6 still works.
//
// Send may be called from any number of goroutines. Each ReceiveFunc is
// meant for one goroutine; concurrent calls to the same one take turns.
type UDPBind struct {
	socks     []*udpSocket
	port      uint16
	batchSize int

	closeOnce sync.Once
	closeErr  error
}

// udpSocket owns the per-direction state for one socket, so that the hot
// paths hand the kernel memory that was allocated once, at listen time. What
// that state is depends on the system: udpbind_linux.go calls recvmmsg and
// sendmmsg itself, udpbind_other.go goes through golang.org/x/net. Each
// defines udpReceiver, udpSender and the init, receive and send methods.
type udpSocket struct {
	conn  *net.UDPConn
	local netip.AddrPort

	recvMu sync.Mutex
	rx     udpReceiver // guarded by recvMu

	sendMu sync.Mutex
	tx     udpSender // guarded by sendMu
}

// udpListenFunc is net.ListenUDP; tests replace it to make a family disappear
// or a port collide on demand.
type udpListenFunc func(network string, laddr *net.UDPAddr) (*net.UDPConn, error)

// ListenUDP opens the host sockets described by cfg.
//
// Without cfg.Addrs it opens an IPv4 and an IPv6 wildcard socket and
// tolerates one family being absent from the host. Explicit addresses are
// taken as a requirement: if any of them cannot be bound, ListenUDP fails.
func ListenUDP(cfg UDPConfig) (*UDPBind, error) {
	return listenUDP(cfg, net.ListenUDP)
}

func listenUDP(cfg UDPConfig, listen udpListenFunc) (*UDPBind, error) {
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
		conns, retry, err := listenUDPAll(addrs, cfg.Port, wildcard, listen)
		if err == nil {
			b, err := newUDPBind(conns, batchSize)
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

// listenUDPAll binds every address on one port. retry reports that the failure
// came from a port this call picked itself, so a fresh attempt may succeed.
func listenUDPAll(addrs []netip.Addr, port uint16, wildcard bool, listen udpListenFunc) (conns []*net.UDPConn, retry bool, err error) {
	picked := port == 0
	var missing []error
	for _, a := range addrs {
		network := "udp6"
		if a.Is4() {
			network = "udp4"
		}
		c, err := listen(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, port)))
		if err != nil {
			if wildcard && errors.Is(err, syscall.EAFNOSUPPORT) {
				missing = append(missing, err)
				continue
			}
			closeUDPConns(conns)
			retry := picked && len(conns) > 0 && errors.Is(err, syscall.EADDRINUSE)
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

func closeUDPConns(conns []*net.UDPConn) {
	for _, c := range conns {
		c.Close()
	}
}

func newUDPBind(conns []*net.UDPConn, batchSize int) (*UDPBind, error) {
	b := &UDPBind{batchSize: batchSize}
	for _, c := range conns {
		_ = c.SetReadBuffer(udpSocketBuffer)
		_ = c.SetWriteBuffer(udpSocketBuffer)

		ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
		s := &udpSocket{
			conn:  c,
			local: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()),
		}
		if err := s.init(batchSize); err != nil {
			for _, s := range b.socks {
				s.release()
			}
			return nil, err
		}
		b.port = s.local.Port()
		b.socks = append(b.socks, s)
	}
	return b, nil
}

// Port is the one port all sockets share; with UDPConfig.Port 0 it is the
// only way to learn which port peers must be told.
func (b *UDPBind) Port() uint16 { return b.port }

// LocalAddrs reports what each socket is bound to, in the order of
// Receivers, so that logs and tests can tell the sockets apart.
func (b *UDPBind) LocalAddrs() []netip.AddrPort {
	aps := make([]netip.AddrPort, len(b.socks))
	for i, s := range b.socks {
		aps[i] = s.local
	}
	return aps
}

// BatchSize implements Bind.
func (b *UDPBind) BatchSize() int { return b.batchSize }

// Receivers implements Bind: one function per socket, because a blocking
// recvmmsg can only wait on one of them.
func (b *UDPBind) Receivers() []ReceiveFunc {
	fns := make([]ReceiveFunc, len(b.socks))
	for i, s := range b.socks {
		fns[i] = s.receive
	}
	return fns
}

// Close implements Bind. Only the first call closes the sockets; later
// calls return nil so that shutdown paths may call it freely.
func (b *UDPBind) Close() error {
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

// Send implements Bind. The socket is chosen by ep's family because a v6-only
// socket cannot reach an IPv4 peer and the other way round.
func (b *UDPBind) Send(bufs [][]byte, ep netip.AddrPort) error {
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
func (b *UDPBind) socketFor(addr netip.Addr) *udpSocket {
	var first *udpSocket
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

// udpCompact moves datagram i, n bytes long, down to slot kept once earlier
// datagrams of the batch were dropped, because the slots a receive returns
// must be contiguous. Buffers of unequal length could leave it without room
// in the lower slot; it is then dropped as if it had been truncated, which
// the false result says.
func udpCompact(bufs [][]byte, kept, i, n int) bool {
	if kept == i {
		return true
	}
	if len(bufs[kept]) < n {
		return false
	}
	copy(bufs[kept], bufs[i][:n])
	return true
}
