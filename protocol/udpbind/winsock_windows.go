package udpbind

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/windows"
)

// On Windows the sockets are opened and driven with Winsock calls of our
// own rather than through the net package. net.ListenUDP turns off
// ICMP-caused connection resets with an ioctl it treats as fatal, and
// Wine, where CI runs the Windows binary, does not know that ioctl; here
// its failure is ignored, and the resets are skipped where they arrive.
// The calls block in their own thread (the Go runtime hands a blocked
// thread's work to another), one datagram each, into memory the socket
// allocated once.

// winsockConn is a UDP socket handle. A closed handle's number can be
// given to the next socket the process opens, so no call may be on its
// way to the system with it when it is closed: sends hold io for
// reading, and Close waits for the receive (recvMu) after waking it.
type winsockConn struct {
	h      windows.Handle
	local  *net.UDPAddr
	closed atomic.Bool

	io     sync.RWMutex
	recvMu sync.Mutex
}

// listenWinsock opens and binds a socket as net.ListenUDP would.
func listenWinsock(network string, laddr *net.UDPAddr) (hostConn, error) {
	ap := laddr.AddrPort()
	family := int32(windows.AF_INET)
	if network == "udp6" {
		family = windows.AF_INET6
	}
	h, err := windows.WSASocket(family, windows.SOCK_DGRAM, windows.IPPROTO_UDP, nil, 0, windows.WSA_FLAG_NO_HANDLE_INHERIT)
	if err != nil {
		return nil, opError("socket", network, laddr, err)
	}
	c := &winsockConn{h: h}
	if family == windows.AF_INET6 {
		// One socket per family, as on every other system.
		if err := windows.SetsockoptInt(h, windows.IPPROTO_IPV6, windows.IPV6_V6ONLY, 1); err != nil {
			c.Close()
			return nil, opError("setsockopt", network, laddr, err)
		}
	}
	// Without these, an ICMP port unreachable (or TTL expired) for one
	// datagram sent makes a later receive fail with WSAECONNRESET (or
	// WSAENETRESET). Wine lacks the ioctls; receive skips those errors.
	var off, ret uint32
	_ = windows.WSAIoctl(h, windows.SIO_UDP_CONNRESET, (*byte)(unsafe.Pointer(&off)), 4, nil, 0, &ret, nil, 0)
	_ = windows.WSAIoctl(h, windows.SIO_UDP_NETRESET, (*byte)(unsafe.Pointer(&off)), 4, nil, 0, &ret, nil, 0)
	var sa windows.Sockaddr
	if ap.Addr().Is4() {
		sa = &windows.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		sa = &windows.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	if err := windows.Bind(h, sa); err != nil {
		c.Close()
		return nil, opError("listen", network, laddr, err)
	}
	bound, err := windows.Getsockname(h)
	if err != nil {
		c.Close()
		return nil, opError("getsockname", network, laddr, err)
	}
	switch a := bound.(type) {
	case *windows.SockaddrInet4:
		c.local = net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)))
	case *windows.SockaddrInet6:
		c.local = net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)))
	}
	return c, nil
}

func opError(op, network string, laddr *net.UDPAddr, err error) error {
	return &net.OpError{Op: op, Net: network, Addr: laddr, Err: os.NewSyscallError(op, err)}
}

func (c *winsockConn) LocalAddr() net.Addr { return c.local }

// Close closes the handle once, after the calls on it: sends finish
// first, and a receive blocked on it is woken by an empty datagram to
// the socket itself and returns. Should the wake not arrive, the handle
// is closed after a second all the same, which ends the receive too.
func (c *winsockConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.io.Lock()
	defer c.io.Unlock()
	c.wake()
	for deadline := time.Now().Add(time.Second); !c.recvMu.TryLock(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return windows.Closesocket(c.h)
		}
	}
	defer c.recvMu.Unlock()
	return windows.Closesocket(c.h)
}

// wake sends an empty datagram to the socket's own address (loopback for
// a wildcard one), which ends a receive waiting on it.
func (c *winsockConn) wake() {
	if c.local == nil {
		return
	}
	to := c.local.AddrPort()
	a := to.Addr()
	switch {
	case a.IsUnspecified() && a.Is4():
		a = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case a.IsUnspecified():
		a = netip.IPv6Loopback()
	}
	var sa rawAddr
	n := sa.set(netip.AddrPortFrom(a, to.Port()))
	var empty [1]byte
	buf := windows.WSABuf{Len: 0, Buf: &empty[0]}
	var sent uint32
	_ = windows.WSASendTo(c.h, &buf, 1, &sent, 0, sa.any(), n, nil, nil)
}

func (c *winsockConn) SetReadBuffer(bytes int) error {
	return windows.SetsockoptInt(c.h, windows.SOL_SOCKET, windows.SO_RCVBUF, bytes)
}

func (c *winsockConn) SetWriteBuffer(bytes int) error {
	return windows.SetsockoptInt(c.h, windows.SOL_SOCKET, windows.SO_SNDBUF, bytes)
}

// SetReadDeadline sets a receive timeout of the time left until t, which
// is what a blocking socket can do; a zero t waits forever. Only tests
// use it: the timeout restarts with every receive, and it ends one with
// WSAETIMEDOUT rather than os.ErrDeadlineExceeded.
func (c *winsockConn) SetReadDeadline(t time.Time) error {
	ms := 0
	if !t.IsZero() {
		ms = max(int(time.Until(t).Milliseconds()), 1)
	}
	return windows.SetsockoptInt(c.h, windows.SOL_SOCKET, windows.SO_RCVTIMEO, ms)
}

// winsockSocket is the Winsock path of one socket. The receive side's
// buffer descriptor and address room are allocated once, with the socket,
// and used by one receive at a time; each send keeps its own on its
// stack.
type winsockSocket struct {
	conn *winsockConn

	recvBuf  windows.WSABuf
	from     windows.RawSockaddrAny
	fromLen  int32
	recvd    uint32
	recvFlag uint32
}

func newWinsock(conn hostConn, _ netip.AddrPort, _ int) (datagrams, error) {
	c, ok := conn.(*winsockConn)
	if !ok {
		return nil, fmt.Errorf("udp bind: a %T is not a Winsock socket", conn)
	}
	return &winsockSocket{conn: c}, nil
}

// receive returns one datagram per call, the first that fits its buffer.
func (s *winsockSocket) receive(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error) {
	if len(bufs) == 0 || len(sizes) == 0 || len(eps) == 0 || len(bufs[0]) == 0 {
		return 0, nil
	}
	s.conn.recvMu.Lock()
	defer s.conn.recvMu.Unlock()
	for {
		if s.conn.closed.Load() {
			return 0, net.ErrClosed
		}
		s.recvBuf = windows.WSABuf{Len: uint32(len(bufs[0])), Buf: &bufs[0][0]}
		s.fromLen = int32(unsafe.Sizeof(s.from))
		s.recvFlag = 0
		err := windows.WSARecvFrom(s.conn.h, &s.recvBuf, 1, &s.recvd, &s.recvFlag, &s.from, &s.fromLen, nil, nil)
		s.recvBuf.Buf = nil // pin nothing of the caller's between calls
		if err != nil {
			switch {
			case s.conn.closed.Load():
				return 0, net.ErrClosed
			case errors.Is(err, windows.WSAEMSGSIZE):
				continue // cut short: useless to WireGuard
			case errors.Is(err, windows.WSAECONNRESET), errors.Is(err, windows.WSAENETRESET):
				continue // an ICMP error for an earlier send, where it could not be turned off
			}
			return 0, &net.OpError{Op: "read", Net: "udp", Source: s.conn.local, Err: os.NewSyscallError("wsarecvfrom", err)}
		}
		if s.conn.closed.Load() {
			return 0, net.ErrClosed // woken by Close
		}
		from, ok := rawSource(&s.from)
		if !ok {
			continue
		}
		sizes[0] = int(s.recvd)
		eps[0] = from
		return 1, nil
	}
}

// rawSource decodes a received source address without allocating.
func rawSource(sa *windows.RawSockaddrAny) (netip.AddrPort, bool) {
	switch sa.Addr.Family {
	case windows.AF_INET:
		a := (*windows.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), portFromNetwork(a.Port)), true
	case windows.AF_INET6:
		a := (*windows.RawSockaddrInet6)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), portFromNetwork(a.Port)), true
	}
	return netip.AddrPort{}, false
}

// portFromNetwork reads a port stored in network byte order.
func portFromNetwork(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}

// send writes each buffer as one datagram. Sends may run from many
// goroutines at once, so the destination and buffer descriptor live on
// the stack of each call.
func (s *winsockSocket) send(bufs [][]byte, ep netip.AddrPort) error {
	var to rawAddr
	toLen := to.set(ep)
	s.conn.io.RLock()
	defer s.conn.io.RUnlock()
	if s.conn.closed.Load() {
		return net.ErrClosed
	}
	for _, b := range bufs {
		if len(b) == 0 {
			continue // WireGuard never sends an empty datagram
		}
		buf := windows.WSABuf{Len: uint32(len(b)), Buf: &b[0]}
		var sent uint32
		if err := windows.WSASendTo(s.conn.h, &buf, 1, &sent, 0, to.any(), toLen, nil, nil); err != nil {
			return os.NewSyscallError("wsasendto", err)
		}
	}
	return nil
}

// rawAddr is a destination as Winsock takes it.
type rawAddr windows.RawSockaddrAny

func (a *rawAddr) any() *windows.RawSockaddrAny { return (*windows.RawSockaddrAny)(a) }

// set fills a with ep and returns its length. The port goes in network
// byte order; a link-local address's zone, which Winsock would take as
// a scope ID, is not kept: WireGuard peers are not reached by zone here.
func (a *rawAddr) set(ep netip.AddrPort) int32 {
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], ep.Port())
	if addr := ep.Addr(); addr.Is4() {
		sa := (*windows.RawSockaddrInet4)(unsafe.Pointer(a))
		sa.Family = windows.AF_INET
		sa.Port = binary.NativeEndian.Uint16(port[:])
		sa.Addr = addr.As4()
		return int32(unsafe.Sizeof(*sa))
	}
	sa := (*windows.RawSockaddrInet6)(unsafe.Pointer(a))
	sa.Family = windows.AF_INET6
	sa.Port = binary.NativeEndian.Uint16(port[:])
	sa.Addr = ep.Addr().As16()
	return int32(unsafe.Sizeof(*sa))
}

// release has nothing to free: the path holds nothing outside the socket.
func (s *winsockSocket) release() {}

func (s *winsockSocket) path() string { return "winsock" }
