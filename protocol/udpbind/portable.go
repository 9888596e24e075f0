package udpbind

import (
	"net"
	"net/netip"
)

// portableSocket is the path for every system: one datagram per call
// through the net package. Its calls take and return netip.AddrPort and
// fill the caller's buffer, so a datagram costs no allocation. The net
// package lets several goroutines read and write a socket at once, so it
// needs no lock of its own.
type portableSocket struct {
	conn *net.UDPConn
}

// newPortable sets up the portable path on conn.
func newPortable(conn hostConn, _ netip.AddrPort, _ int) (datagrams, error) {
	uc, err := udpConn(conn)
	if err != nil {
		return nil, err
	}
	return &portableSocket{conn: uc}, nil
}

// receive returns one datagram per call, the first that fits its buffer.
func (s *portableSocket) receive(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error) {
	if len(bufs) == 0 || len(sizes) == 0 || len(eps) == 0 {
		return 0, nil
	}
	for {
		n, _, flags, from, err := s.conn.ReadMsgUDPAddrPort(bufs[0], nil)
		if err != nil {
			if truncatedError(err) {
				continue
			}
			return 0, err
		}
		// A truncated datagram is useless to WireGuard, and passing it
		// on would make it look like a malformed packet from a peer.
		if flags&msgTrunc != 0 {
			continue
		}
		sizes[0] = n
		eps[0] = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		return 1, nil
	}
}

func (s *portableSocket) send(bufs [][]byte, ep netip.AddrPort) error {
	for _, b := range bufs {
		if _, err := s.conn.WriteToUDPAddrPort(b, ep); err != nil {
			return err
		}
	}
	return nil
}

// release has nothing to free: the portable path holds nothing outside
// the socket.
func (s *portableSocket) release() {}

func (s *portableSocket) path() string { return "portable" }
