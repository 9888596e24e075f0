//go:build !linux

package protocol

import (
	"io"
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Outside Linux the bind goes through golang.org/x/net, which moves one
// datagram per system call there (it batches only on Linux) and allocates the
// source address of every datagram it receives. Windows, where x/net
// implements neither recvmsg nor sendmsg, gets errors from both directions.

// udpBatchConn is what ipv4.PacketConn and ipv6.PacketConn have in common:
// their Message types are aliases of one type, so one code path serves both
// families.
type udpBatchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

type udpReceiver struct {
	pc   udpBatchConn
	msgs []ipv4.Message
}

type udpSender struct {
	pc   udpBatchConn
	msgs []ipv4.Message
	// addr is the one destination every message of a Send shares; ip backs
	// its IP so that filling it in does not allocate.
	addr net.UDPAddr
	ip   [16]byte
}

func (s *udpSocket) init(batchSize int) error {
	var pc udpBatchConn
	if s.local.Addr().Is4() {
		pc = ipv4.NewPacketConn(s.conn)
	} else {
		pc = ipv6.NewPacketConn(s.conn)
	}
	s.rx = udpReceiver{pc: pc, msgs: newUDPMessages(batchSize)}
	s.tx = udpSender{pc: pc, msgs: newUDPMessages(batchSize)}
	return nil
}

// newUDPMessages carves every message's one-element Buffers out of a single
// backing slice, so a batch costs two allocations at listen time and none
// afterwards.
func newUDPMessages(n int) []ipv4.Message {
	msgs := make([]ipv4.Message, n)
	bufs := make([][]byte, n)
	for i := range msgs {
		msgs[i].Buffers = bufs[i : i+1 : i+1]
	}
	return msgs
}

// release has nothing to return: only Linux has spill buffers.
func (s *udpSocket) release() {}

func (s *udpSocket) send(bufs [][]byte, ep netip.AddrPort) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	t := &s.tx

	dst := &t.addr
	if a := ep.Addr(); a.Is4() {
		ip := a.As4()
		dst.IP = t.ip[:4]
		copy(dst.IP, ip[:])
		dst.Zone = ""
	} else {
		ip := a.As16()
		dst.IP = t.ip[:16]
		copy(dst.IP, ip[:])
		dst.Zone = a.Zone()
	}
	dst.Port = int(ep.Port())

	// Send must not keep bufs, and the messages outlive this call.
	defer clearUDPMessages(t.msgs[:min(len(bufs), len(t.msgs))])

	for len(bufs) > 0 {
		msgs := t.msgs[:min(len(bufs), len(t.msgs))]
		for i := range msgs {
			msgs[i].Buffers[0] = bufs[i]
			msgs[i].Addr = dst
		}
		bufs = bufs[len(msgs):]
		// sendmmsg stops early when the socket buffer fills or when one
		// datagram fails; the rest are sent (or the error surfaces) on the
		// next call.
		for len(msgs) > 0 {
			n, err := t.pc.WriteBatch(msgs, 0)
			if err != nil {
				return err
			}
			if n == 0 {
				return io.ErrShortWrite
			}
			msgs = msgs[n:]
		}
	}
	return nil
}

func (s *udpSocket) receive(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error) {
	n := min(len(bufs), len(sizes), len(eps), len(s.rx.msgs))
	if n == 0 {
		return 0, nil
	}

	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	r := &s.rx

	msgs := r.msgs[:n]
	// The messages would otherwise pin the caller's buffers and the last
	// batch's source addresses until the next call.
	defer clearUDPMessages(msgs)
	for i := range msgs {
		msgs[i].Buffers[0] = bufs[i]
	}

	for {
		got, err := r.pc.ReadBatch(msgs, 0)
		if err != nil {
			return 0, err
		}
		kept := 0
		for i := range msgs[:got] {
			m := &msgs[i]
			ua, ok := m.Addr.(*net.UDPAddr)
			// A truncated datagram is useless to WireGuard, and passing it
			// on would make it look like a malformed packet from a peer.
			if m.Flags&udpMsgTrunc != 0 || !ok || !udpCompact(bufs, kept, i, m.N) {
				continue
			}
			ap := ua.AddrPort()
			sizes[kept] = m.N
			eps[kept] = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			kept++
		}
		if kept > 0 {
			return kept, nil
		}
		// Every datagram was dropped; the contract is to block until there
		// is one to return.
	}
}

func clearUDPMessages(msgs []ipv4.Message) {
	for i := range msgs {
		msgs[i].Buffers[0] = nil
		msgs[i].Addr = nil
		msgs[i].N = 0
		msgs[i].Flags = 0
	}
}
