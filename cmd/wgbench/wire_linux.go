package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// wireCapture records the UDP datagrams on the loopback interface through
// a packet socket, with the kernel's receive timestamps. It needs
// CAP_NET_RAW.
type wireCapture struct {
	fd       int
	start    time.Time
	stopping atomic.Bool
	done     chan struct{}

	mu   sync.Mutex
	pkts []wirePacket
	err  error
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// startWire begins a capture on the interface named lo.
func startWire() (*wireCapture, error) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: lo.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding to lo: %w", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	// Reads wake at least this often to see that the capture is over.
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50_000})
	c := &wireCapture{fd: fd, start: time.Now(), done: make(chan struct{})}
	go c.read()
	return c, nil
}

func (c *wireCapture) read() {
	defer close(c.done)
	buf := make([]byte, 64) // the IP and UDP headers are all it needs
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
		// Loopback shows each datagram twice, leaving and arriving.
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		m := min(n, len(buf))
		if m < 20 || buf[0]>>4 != 4 || buf[9] != unix.IPPROTO_UDP {
			continue
		}
		ihl := int(buf[0]&0xf) * 4
		if m < ihl+4 {
			continue
		}
		at := time.Since(c.start)
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
					ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
					at = time.Unix(ts.Unix()).Sub(c.start)
				}
			}
		}
		c.mu.Lock()
		c.pkts = append(c.pkts, wirePacket{at: at, src: binary.BigEndian.Uint16(buf[ihl:]), dst: binary.BigEndian.Uint16(buf[ihl+2:])})
		c.mu.Unlock()
	}
}

// stop ends the capture and returns what it saw.
func (c *wireCapture) stop() ([]wirePacket, error) {
	c.stopping.Store(true)
	<-c.done
	unix.Close(c.fd)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pkts, c.err
}
