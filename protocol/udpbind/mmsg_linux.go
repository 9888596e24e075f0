//go:build linux

package udpbind

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// On Linux the bind calls recvmmsg and sendmmsg itself, through the socket's
// syscall.RawConn so that waiting for the socket stays with Go's netpoller
// (and with it deadlines and Close). golang.org/x/net would do the batching
// too, but it hands every received datagram's source back as a fresh
// *net.UDPAddr, two allocations per packet; here the kernel writes each
// source into a sockaddr preallocated per slot, which becomes a
// netip.AddrPort without allocating.
//
// Memory safety: the mmsghdrs, iovecs and sockaddrs live in Go memory owned
// by the socket, and the iovecs point into the caller's buffers, all of it
// ordinary Go pointers the garbage collector sees (and heap memory never
// moves). The kernel reads and writes that memory only during the system
// call and keeps no reference once it returns. The iovecs are cleared
// afterwards so that the socket does not pin the caller's buffers.

// udpZoneTTL is how long an interface index↔name mapping is trusted before it
// is looked up again, as in golang.org/x/net's zone cache: interfaces can be
// renamed, and a stale entry must not last forever.
const udpZoneTTL = time.Minute

// udpZoneCacheMax bounds the zone caches; a socket sees a handful of
// interfaces at most, so overflowing means churn and the cache just restarts.
const udpZoneCacheMax = 64

type udpReceiver struct {
	raw syscall.RawConn
	// recvmmsg is s.recvmmsg bound once, at init: a method value or closure
	// made per call would escape into RawConn.Read and allocate.
	recvmmsg func(fd uintptr) bool

	msgs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for sockaddr_in too

	// Arguments and results of one recvmmsg call.
	n     int
	got   int
	errno syscall.Errno

	// zones maps the scope IDs of link-local sources to zone names.
	zones map[uint32]udpZone

	// gro is whether the socket has UDP_GRO on: the kernel may then hand
	// over a run of one sender's datagrams as one message, with their
	// segment size in a control message, the receive-side twin of
	// UDP_SEGMENT. Each slot then reads into two iovecs: the caller's
	// buffer (up to udpGROHead bytes), where a lone datagram lands with
	// no copy, and spill[i] past its udpGROHead bytes of headroom, where
	// the rest of a coalesced message goes.
	gro    bool
	mapped []byte // the spill buffers' memory, unmapped by release
	spill  [][]byte
	ctrl   []byte
	// A coalesced message, and every message after it in the same
	// recvmmsg, is moved whole into its spill buffer and cut into the
	// caller's buffers by this and later receives: parked[next:end].
	parked    []udpParked
	next, end int
	coalesced int // messages cut up, for tests
}

// udpParked is one received message waiting in spill[slot][start:stop]
// to be cut into datagrams of seg bytes (0: one datagram).
type udpParked struct {
	slot, start, stop, seg int
	from                   netip.AddrPort
}

type udpSender struct {
	raw      syscall.RawConn
	sendmmsg func(fd uintptr) bool // s.sendmmsg, bound once as recvmmsg is

	msgs []unix.Mmsghdr
	iovs []unix.Iovec
	// ctrl holds one UDP_SEGMENT control message per msgs slot.
	ctrl []byte
	// gso is whether the kernel takes UDP_SEGMENT on this socket: a run
	// of equal-sized datagrams (the last may be shorter) then goes down
	// the stack as one message, which the kernel, or the NIC, cuts into
	// datagrams only at the bottom. Cleared for good if the kernel
	// refuses a GSO send. sendmmsg had been most of our side's CPU in
	// an upload, and GSO cuts the per-datagram work it does.
	gso bool
	// name is the one destination every message of a Send shares.
	name unix.RawSockaddrInet6

	// Arguments and results of one sendmmsg call: msgs[off:n].
	off, n int
	sent   int
	errno  syscall.Errno

	// zones maps the zone names of link-local destinations to scope IDs.
	zones map[string]udpZone
}

type udpZone struct {
	name  string
	index uint32
	at    time.Time
}

// mmsgSocket is the Linux path: it calls recvmmsg and sendmmsg itself.
type mmsgSocket struct {
	local netip.AddrPort // for errors

	recvMu sync.Mutex
	rx     udpReceiver // guarded by recvMu

	sendMu sync.Mutex
	tx     udpSender // guarded by sendMu
}

// newMmsg sets up the batched path on conn, with UDP GSO and GRO where
// the kernel has them.
func newMmsg(conn hostConn, local netip.AddrPort, batchSize int) (datagrams, error) {
	return mmsgWith(true, true)(conn, local, batchSize)
}

// mmsgWith is newMmsg with UDP GSO (sending) and GRO (receiving) each
// allowed or not, which tests use to cover every pairing.
func mmsgWith(gso, gro bool) newDatagrams {
	return func(conn hostConn, local netip.AddrPort, batchSize int) (datagrams, error) {
		uc, err := udpConn(conn)
		if err != nil {
			return nil, err
		}
		s := &mmsgSocket{local: local}
		if err := s.init(uc, batchSize, gso, gro); err != nil {
			return nil, err
		}
		return s, nil
	}
}

func (s *mmsgSocket) init(conn *net.UDPConn, batchSize int, gso, gro bool) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}

	r := &s.rx
	r.raw = raw
	r.recvmmsg = s.recvmmsg
	r.msgs = make([]unix.Mmsghdr, batchSize)
	r.iovs = make([]unix.Iovec, batchSize)
	r.names = make([]unix.RawSockaddrInet6, batchSize)
	for i := range r.msgs {
		h := &r.msgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
	}

	if gro {
		// The spill buffers are mapped outside the Go heap: fresh
		// pages, which cost address space and no memory until the
		// kernel writes a coalesced message into them. On the heap,
		// the garbage collector would touch them, and every socket's
		// spill would count in the idle process's resident memory.
		all, err := unix.Mmap(-1, 0, batchSize*udpGROSlot, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err == nil {
			raw.Control(func(fd uintptr) {
				r.gro = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
			})
			if r.gro {
				r.mapped = all
			} else {
				unix.Munmap(all)
			}
		}
	}
	if r.gro {
		all := r.mapped
		r.iovs = make([]unix.Iovec, 2*batchSize)
		r.ctrl = make([]byte, batchSize*udpGROCmsgSpace)
		r.spill = make([][]byte, batchSize)
		r.parked = make([]udpParked, batchSize)
		for i := range r.msgs {
			r.spill[i] = all[i*udpGROSlot : (i+1)*udpGROSlot : (i+1)*udpGROSlot]
			h := &r.msgs[i].Hdr
			h.Iov = &r.iovs[2*i]
			h.SetIovlen(2)
			setUDPIovec(&r.iovs[2*i+1], r.spill[i][udpGROHead:])
		}
	}

	t := &s.tx
	t.raw = raw
	t.sendmmsg = s.sendmmsg
	t.msgs = make([]unix.Mmsghdr, batchSize)
	t.iovs = make([]unix.Iovec, batchSize)
	t.ctrl = make([]byte, batchSize*udpSegmentCmsgSpace)
	for i := range t.msgs {
		h := &t.msgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&t.name))
		h.Iov = &t.iovs[i]
		h.SetIovlen(1)
	}
	if gso {
		// The option is readable exactly where the kernel knows it
		// (Linux 4.18 and later).
		raw.Control(func(fd uintptr) {
			_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
			t.gso = err == nil
		})
	}
	return nil
}

// release returns the spill buffers' memory once the socket is closed.
// recvMu keeps it from happening under a recvmmsg still writing there; a
// receive after it finds no spill room, and the kernel truncates any
// coalesced message, which is then dropped.
func (s *mmsgSocket) release() {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	r := &s.rx
	if r.mapped == nil {
		return
	}
	for i := range r.spill {
		r.iovs[2*i+1] = unix.Iovec{}
		r.spill[i] = nil
	}
	r.next, r.end = 0, 0
	unix.Munmap(r.mapped)
	r.mapped = nil
}

const (
	// udpSegmentCmsgSpace is the room for one UDP_SEGMENT control
	// message, whose payload is the segment size as a uint16.
	udpSegmentCmsgSpace = 24 // unix.CmsgSpace(2) on every 64-bit Linux
	// udpMaxSegments is the kernel's UDP_MAX_SEGMENTS before Linux 6.9
	// (128 since).
	udpMaxSegments = 64
	// udpMaxGSOBytes bounds one message's payload: an IPv6 payload
	// length (or IPv4 total length) must hold it with the headers.
	udpMaxGSOBytes = 65535 - header6Size - 8
	header6Size    = 40

	// udpGROHead is the most of a message that goes to the caller's
	// buffer, and the headroom in front of each spill buffer, into which
	// that part is copied back when the message is parked. A WireGuard
	// message at the default MTU fits; a lone datagram longer than this
	// (a jumbo MTU) is copied back from the spill buffer.
	udpGROHead = 4096
	// udpGROSlot is a spill buffer: headroom, then the most a coalesced
	// message can hold.
	udpGROSlot = udpGROHead + 1<<16
	// udpGROCmsgSpace is the room for the UDP_GRO control message, an
	// int, with space to spare for one the kernel might add.
	udpGROCmsgSpace = 64
)

func (s *mmsgSocket) receive(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error) {
	n := min(len(bufs), len(sizes), len(eps), len(s.rx.msgs))
	if n == 0 {
		return 0, nil
	}

	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	r := &s.rx
	if r.gro {
		return s.receiveGRO(bufs[:n], sizes, eps)
	}

	for i := range n {
		setUDPIovec(&r.iovs[i], bufs[i])
	}
	// The iovecs would otherwise pin the caller's buffers until the next
	// call.
	defer clearUDPIovecs(r.iovs[:n])

	for {
		for i := range n {
			// The kernel overwrites these with the source's length and
			// the datagram's flags.
			r.msgs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
			r.msgs[i].Hdr.Flags = 0
			r.msgs[i].Len = 0
		}
		err := s.recv(n)
		// The buffers were reachable through the iovecs all along; this
		// says so to the reader as much as to the compiler.
		runtime.KeepAlive(bufs)
		if err != nil {
			return 0, err
		}

		kept := 0
		for i := range r.got {
			size, from, ok := r.received(i)
			if ok {
				kept = keep(bufs, sizes, eps, kept, i, size, from)
			}
		}
		if kept > 0 {
			return kept, nil
		}
		// Every datagram was dropped; the contract is to block until there
		// is one to return.
	}
}

// receiveGRO is receive on a socket with UDP_GRO. Lone datagrams arrive
// in the caller's buffers as without it; a coalesced message is cut into
// one datagram per buffer, which takes a copy, and what does not fit in
// this call's buffers waits for the next call, before any new recvmmsg.
func (s *mmsgSocket) receiveGRO(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error) {
	r := &s.rx
	n := len(bufs)
	for {
		if r.mapped == nil {
			return 0, net.ErrClosed // released, so closed
		}
		if r.next < r.end {
			if kept := r.cutParked(bufs, sizes, eps); kept > 0 {
				return kept, nil
			}
			continue
		}
		for i := range n {
			setUDPIovec(&r.iovs[2*i], bufs[i][:min(len(bufs[i]), udpGROHead)])
			h := &r.msgs[i].Hdr
			h.Namelen = unix.SizeofSockaddrInet6
			h.Flags = 0
			h.Control = &r.ctrl[i*udpGROCmsgSpace]
			h.SetControllen(udpGROCmsgSpace)
			r.msgs[i].Len = 0
		}
		err := s.recv(n)
		runtime.KeepAlive(bufs)
		if err != nil {
			clearGROIovecs(r.iovs[:2*n])
			return 0, err
		}
		kept := 0
		for i := range r.got {
			size, from, ok := r.received(i)
			if !ok {
				continue
			}
			head := int(r.iovs[2*i].Len)
			if seg := r.segmentSize(i); seg > 0 && seg < size {
				// A coalesced message: it and the rest of this
				// receive go to the spill buffers, so that cutting it
				// overwrites none of the caller's buffers still to
				// be read.
				r.park(bufs, i)
				break
			}
			if size > len(bufs[i]) {
				continue // longer than any message we take
			}
			if size > head {
				copy(bufs[i][head:size], r.spill[i][udpGROHead:])
			}
			kept = keep(bufs, sizes, eps, kept, i, size, from)
		}
		clearGROIovecs(r.iovs[:2*n])
		if kept > 0 {
			return kept, nil
		}
	}
}

// received is message i of the last recvmmsg: its size and source. It
// reports false for a truncated datagram, which is useless to WireGuard
// and would look like a malformed packet from a peer, and for a source
// that is not a whole IPv4 or IPv6 address.
func (r *udpReceiver) received(i int) (size int, from netip.AddrPort, ok bool) {
	m := &r.msgs[i]
	if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
		return 0, netip.AddrPort{}, false
	}
	from, ok = r.source(i)
	return int(m.Len), from, ok
}

// keep hands datagram i, of size bytes from from, to the caller as its
// kept-th, moving it down into buffer kept if earlier ones were dropped,
// and returns the new count of datagrams kept.
func keep(bufs [][]byte, sizes []int, eps []netip.AddrPort, kept, i, size int, from netip.AddrPort) int {
	if !compact(bufs, kept, i, size) {
		return kept
	}
	sizes[kept] = size
	eps[kept] = from
	return kept + 1
}

// park moves messages first..got-1 of the last recvmmsg whole into their
// spill buffers, the part in the caller's buffer copied into the
// headroom in front of the rest.
func (r *udpReceiver) park(bufs [][]byte, first int) {
	r.next, r.end = first, first
	for i := first; i < r.got; i++ {
		size, from, ok := r.received(i)
		if !ok {
			continue
		}
		head := min(size, int(r.iovs[2*i].Len))
		start := udpGROHead - head
		copy(r.spill[i][start:udpGROHead], bufs[i][:head])
		seg := r.segmentSize(i)
		if seg > 0 && seg < size {
			r.coalesced++
		}
		r.parked[r.end] = udpParked{slot: i, start: start, stop: start + size, seg: seg, from: from}
		r.end++
	}
}

// cutParked hands out parked datagrams, one per buffer, in order. A
// datagram longer than its buffer is dropped, as a truncated one is.
func (r *udpReceiver) cutParked(bufs [][]byte, sizes []int, eps []netip.AddrPort) int {
	kept := 0
	for r.next < r.end && kept < len(bufs) {
		p := &r.parked[r.next]
		if p.start >= p.stop {
			r.next++
			continue
		}
		size := p.stop - p.start
		if p.seg > 0 && p.seg < size {
			size = p.seg
		}
		if size <= len(bufs[kept]) {
			copy(bufs[kept], r.spill[p.slot][p.start:p.start+size])
			sizes[kept] = size
			eps[kept] = p.from
			kept++
		}
		p.start += size
	}
	return kept
}

// segmentSize reads message i's UDP_GRO control message: the size of the
// datagrams coalesced into it, or 0 if it is a lone datagram.
func (r *udpReceiver) segmentSize(i int) int {
	h := &r.msgs[i].Hdr
	c := r.ctrl[i*udpGROCmsgSpace:][:min(int(h.Controllen), udpGROCmsgSpace)]
	for len(c) >= unix.SizeofCmsghdr {
		cm := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
		l := int(cm.Len)
		if l < unix.SizeofCmsghdr || l > len(c) {
			return 0
		}
		if cm.Level == unix.IPPROTO_UDP && cm.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(int32(binary.NativeEndian.Uint32(c[unix.CmsgLen(0):])))
		}
		c = c[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(c)):]
	}
	return 0
}

// clearGROIovecs drops the references to the caller's buffers; the spill
// iovecs stay, pointing into the socket's own memory.
func clearGROIovecs(iovs []unix.Iovec) {
	for i := 0; i < len(iovs); i += 2 {
		iovs[i] = unix.Iovec{}
	}
}

// recv runs one recvmmsg over the first n slots, which the caller has
// set up, waiting for the socket to become readable.
func (s *mmsgSocket) recv(n int) error {
	r := &s.rx
	r.n, r.got, r.errno = n, 0, 0
	if err := r.raw.Read(r.recvmmsg); err != nil {
		return err
	}
	if r.errno != 0 {
		return &net.OpError{Op: "read", Net: "udp", Source: net.UDPAddrFromAddrPort(s.local), Err: os.NewSyscallError("recvmmsg", r.errno)}
	}
	return nil
}

// recvmmsg is the RawConn.Read callback; returning false waits for the
// socket to become readable and calls it again.
func (s *mmsgSocket) recvmmsg(fd uintptr) bool {
	r := &s.rx
	for {
		got, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd,
			uintptr(unsafe.Pointer(&r.msgs[0])), uintptr(r.n), 0, 0, 0)
		switch errno {
		case 0:
			r.got = int(got)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			r.errno = errno
			return true
		}
	}
}

// source converts slot i's sockaddr to the address the datagram came from.
// It reports false for anything but a complete IPv4 or IPv6 address, which a
// UDP socket should never produce.
func (r *udpReceiver) source(i int) (netip.AddrPort, bool) {
	sa := &r.names[i]
	namelen := r.msgs[i].Hdr.Namelen
	switch sa.Family {
	case unix.AF_INET:
		if namelen < unix.SizeofSockaddrInet4 {
			return netip.AddrPort{}, false
		}
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), udpNtohs(sa4.Port)), true
	case unix.AF_INET6:
		if namelen < unix.SizeofSockaddrInet6 {
			return netip.AddrPort{}, false
		}
		// The IPv6 socket is v6-only, but an IPv4 peer must never show up
		// as ::ffff:a.b.c.d should that change.
		a := netip.AddrFrom16(sa.Addr).Unmap()
		if a.Is6() && sa.Scope_id != 0 {
			a = a.WithZone(r.zoneName(sa.Scope_id))
		}
		return netip.AddrPortFrom(a, udpNtohs(sa.Port)), true
	}
	return netip.AddrPort{}, false
}

// zoneName names the interface with index id as the zone of a link-local
// source, falling back to the number as net does. It allocates only when an
// interface is first seen or its entry has expired.
func (r *udpReceiver) zoneName(id uint32) string {
	now := time.Now()
	if z, ok := r.zones[id]; ok && now.Sub(z.at) < udpZoneTTL {
		return z.name
	}
	name := strconv.FormatUint(uint64(id), 10)
	if ifi, err := net.InterfaceByIndex(int(id)); err == nil {
		name = ifi.Name
	}
	if r.zones == nil || len(r.zones) >= udpZoneCacheMax {
		r.zones = make(map[uint32]udpZone)
	}
	r.zones[id] = udpZone{name: name, index: id, at: now}
	return name
}

func (s *mmsgSocket) send(bufs [][]byte, ep netip.AddrPort) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	t := &s.tx

	namelen := t.setName(ep)
	defer clearUDPIovecs(t.iovs[:min(len(bufs), len(t.iovs))])

	for len(bufs) > 0 {
		n, used := t.plan(bufs, namelen)
		// sendmmsg stops early when the socket buffer fills or when one
		// message fails; the rest are sent (or the error surfaces) on the
		// next call.
		for off := 0; off < n; {
			t.off, t.n, t.sent, t.errno = off, n, 0, 0
			err := t.raw.Write(t.sendmmsg)
			runtime.KeepAlive(bufs)
			if err != nil {
				return err
			}
			if t.errno != 0 && t.gso && t.segmented(off) && (t.errno == unix.EIO || t.errno == unix.EINVAL) {
				// EIO: the device cannot checksum for GSO; EINVAL:
				// an older kernel, or a path whose MTU is below the
				// datagrams. Send the rest one datagram per message
				// from now on, as wireguard-go does.
				t.gso = false
				bufs = bufs[t.datagrams(off):]
				n, used = t.plan(bufs, namelen)
				off = 0
				continue
			}
			if t.errno != 0 {
				return &net.OpError{Op: "write", Net: "udp", Source: net.UDPAddrFromAddrPort(s.local), Addr: net.UDPAddrFromAddrPort(ep), Err: os.NewSyscallError("sendmmsg", t.errno)}
			}
			if t.sent == 0 {
				return io.ErrShortWrite
			}
			off += t.sent
		}
		bufs = bufs[used:]
	}
	return nil
}

// plan lays out as many of bufs as the slots hold as messages, and
// returns how many messages and datagrams that is. With GSO, each run of
// equal-sized datagrams (ended by a shorter one, the segment limit or the
// size limit) is one message with a UDP_SEGMENT control message: a
// WireGuard batch of full-sized packets is mostly such runs.
func (t *udpSender) plan(bufs [][]byte, namelen uint32) (msgs, used int) {
	i := 0
	for i < len(bufs) && i < len(t.iovs) && msgs < len(t.msgs) {
		size := len(bufs[i])
		j := i + 1
		if t.gso && size > 0 {
			total := size
			for j < len(bufs) && j < len(t.iovs) && j-i < udpMaxSegments {
				n := len(bufs[j])
				if n == 0 || n > size || total+n > udpMaxGSOBytes {
					break
				}
				total += n
				j++
				if n < size {
					break
				}
			}
		}
		for k := i; k < j; k++ {
			setUDPIovec(&t.iovs[k], bufs[k])
		}
		m := &t.msgs[msgs]
		m.Hdr.Iov = &t.iovs[i]
		m.Hdr.SetIovlen(j - i)
		m.Hdr.Namelen = namelen
		m.Len = 0
		if j-i > 1 {
			c := t.ctrl[msgs*udpSegmentCmsgSpace:][:udpSegmentCmsgSpace]
			h := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
			h.Level = unix.IPPROTO_UDP
			h.Type = unix.UDP_SEGMENT
			h.SetLen(unix.CmsgLen(2))
			binary.NativeEndian.PutUint16(c[unix.CmsgLen(0):], uint16(size))
			m.Hdr.Control = &c[0]
			m.Hdr.SetControllen(unix.CmsgSpace(2))
		} else {
			m.Hdr.Control = nil
			m.Hdr.SetControllen(0)
		}
		msgs++
		i = j
	}
	return msgs, i
}

// segmented reports whether message m carries more than one datagram.
func (t *udpSender) segmented(m int) bool { return t.msgs[m].Hdr.Iovlen > 1 }

// datagrams counts the datagrams in the first m messages.
func (t *udpSender) datagrams(m int) int {
	n := 0
	for i := range m {
		n += int(t.msgs[i].Hdr.Iovlen)
	}
	return n
}

// sendmmsg is the RawConn.Write callback; returning false waits for the
// socket to become writable and calls it again.
func (s *mmsgSocket) sendmmsg(fd uintptr) bool {
	t := &s.tx
	for {
		sent, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd,
			uintptr(unsafe.Pointer(&t.msgs[t.off])), uintptr(t.n-t.off), 0, 0, 0)
		switch errno {
		case 0:
			t.sent = int(sent)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			t.errno = errno
			return true
		}
	}
}

// setName writes ep, whose family is the socket's, into the shared
// destination sockaddr and returns its length.
func (t *udpSender) setName(ep netip.AddrPort) uint32 {
	t.name = unix.RawSockaddrInet6{}
	a := ep.Addr()
	if a.Is4() {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&t.name))
		sa4.Family = unix.AF_INET
		sa4.Port = udpHtons(ep.Port())
		sa4.Addr = a.As4()
		return unix.SizeofSockaddrInet4
	}
	t.name.Family = unix.AF_INET6
	t.name.Port = udpHtons(ep.Port())
	t.name.Addr = a.As16()
	if zone := a.Zone(); zone != "" {
		t.name.Scope_id = t.zoneIndex(zone)
	}
	return unix.SizeofSockaddrInet6
}

// zoneIndex is the scope ID for a link-local destination's zone: the index of
// the interface of that name or, failing that, the zone read as a number, as
// net does. Zero leaves the choice to the kernel, which refuses a link-local
// destination without one.
func (t *udpSender) zoneIndex(zone string) uint32 {
	now := time.Now()
	if z, ok := t.zones[zone]; ok && now.Sub(z.at) < udpZoneTTL {
		return z.index
	}
	var index uint32
	if ifi, err := net.InterfaceByName(zone); err == nil {
		index = uint32(ifi.Index)
	} else if n, err := strconv.ParseUint(zone, 10, 32); err == nil {
		index = uint32(n)
	}
	if t.zones == nil || len(t.zones) >= udpZoneCacheMax {
		t.zones = make(map[string]udpZone)
	}
	t.zones[zone] = udpZone{name: zone, index: index, at: now}
	return index
}

func setUDPIovec(iov *unix.Iovec, b []byte) {
	iov.Base = unsafe.SliceData(b)
	iov.SetLen(len(b))
}

func clearUDPIovecs(iovs []unix.Iovec) {
	for i := range iovs {
		iovs[i] = unix.Iovec{}
	}
}

// udpNtohs and udpHtons convert a port between host order and the network
// order of a sockaddr field, which the kernel stores byte by byte.
func udpNtohs(port uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], port)
	return binary.BigEndian.Uint16(b[:])
}

func udpHtons(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

func (s *mmsgSocket) path() string { return "batched" }
