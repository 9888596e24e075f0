package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// wireCapture records the UDP datagrams to and from one port on the
// loopback interface through a packet socket, with the kernel's receive
// timestamps. It needs CAP_NET_RAW.
type wireCapture struct {
	port     uint16
	fd       int
	start    time.Time
	stopping atomic.Bool
	done     chan struct{}

	mu   sync.Mutex
	pkts []wirePacket
	err  error
}

// networkOrder is v as the kernel wants a protocol number in a
// sockaddr: in network byte order, whatever the machine's.
func networkOrder(v uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, v))
}

// wireFilter keeps the first 64 bytes of unfragmented IPv4 UDP datagrams
// from or to port and drops the rest in the kernel, so the capture costs
// other traffic on the interface (a proxy pair's TCP hop) nothing. A
// packet socket of type SOCK_DGRAM hands the filter the IP header first.
func wireFilter(port uint16) ([]bpf.RawInstruction, error) {
	const snap, drop, keep = 64, 10, 9 // keep and drop: the indexes of the two returns
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 9, Size: 1}, // 0: the IP protocol
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.IPPROTO_UDP, SkipFalse: drop - 2},
		bpf.LoadAbsolute{Off: 6, Size: 2}, // 2: flags and fragment offset
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: drop - 4},
		bpf.LoadMemShift{Off: 0},          // 4: X = the IP header's length
		bpf.LoadIndirect{Off: 0, Size: 2}, // 5: the source port
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(port), SkipTrue: keep - 7},
		bpf.LoadIndirect{Off: 2, Size: 2}, // 7: the destination port
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(port), SkipFalse: drop - 9},
		bpf.RetConstant{Val: snap}, // 9
		bpf.RetConstant{Val: 0},    // 10
	})
}

// startWire begins a capture of port's datagrams on the interface named lo.
func startWire(port uint16) (*wireCapture, error) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return nil, err
	}
	raw, err := wireFilter(port)
	if err != nil {
		return nil, err
	}
	// Protocol 0: the socket receives nothing until the bind names one,
	// after the filter is in place. Opened with ETH_P_IP, it would queue
	// every interface's packets, unfiltered, from the start.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		filter[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	setup := []error{
		unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}),
		unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: networkOrder(unix.ETH_P_IP), Ifindex: lo.Index}),
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1),
		// Reads wake at least this often to see that the capture is over.
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50_000}),
	}
	for i, err := range setup {
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("packet socket, step %d: %w", i+1, err)
		}
	}
	// A larger queue where allowed; the default holds an echo's worth.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	c := &wireCapture{port: port, fd: fd, start: time.Now(), done: make(chan struct{})}
	go c.read()
	return c, nil
}

func (c *wireCapture) read() {
	defer close(c.done)
	buf := make([]byte, 64) // the filter keeps no more
	oob := make([]byte, 64)
	for {
		n, oobn, _, from, err := unix.Recvmsg(c.fd, buf, oob, unix.MSG_TRUNC)
		if c.stopping.Load() {
			return
		}
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		// A socket bound to one protocol sees arriving packets only;
		// this is in case a kernel shows the leaving copy too.
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		m := min(n, len(buf))
		if m < 20 || buf[0]>>4 != 4 || buf[9] != unix.IPPROTO_UDP {
			continue
		}
		ihl := int(buf[0]&0xf) * 4
		if ihl < 20 || m < ihl+4 || binary.BigEndian.Uint16(buf[6:])&0x1fff != 0 {
			continue
		}
		at := time.Since(c.start)
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, msg := range msgs {
				if msg.Header.Level == unix.SOL_SOCKET && msg.Header.Type == unix.SO_TIMESTAMPNS && len(msg.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
					ts := (*unix.Timespec)(unsafe.Pointer(&msg.Data[0]))
					at = time.Unix(ts.Unix()).Sub(c.start)
				}
			}
		}
		p := wirePacket{at: at, src: binary.BigEndian.Uint16(buf[ihl:]), dst: binary.BigEndian.Uint16(buf[ihl+2:])}
		if p.src != c.port && p.dst != c.port {
			continue // the filter's work, again
		}
		c.mu.Lock()
		c.pkts = append(c.pkts, p)
		c.mu.Unlock()
	}
}

// stop ends the capture and returns what it saw. It may be called more
// than once; later calls return what the first did.
func (c *wireCapture) stop() ([]wirePacket, error) {
	if c.stopping.CompareAndSwap(false, true) {
		<-c.done
		unix.Close(c.fd)
	}
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pkts, c.err
}
